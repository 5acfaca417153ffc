//! The guest's serial console, as the host sees it.
//!
//! A backend hands the console byte stream to [`Console::spawn`], which copies it to the
//! per-VM `console.log`, keeps the recent lines for error messages, and notes when the
//! boot-stage markers first appear (the kernel banner, the agent's first line). Reading
//! the stream as it comes, rather than polling a file, gives exact stage times and never
//! lets the guest block on a full pipe.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Printed by the kernel first thing (`Linux version 6.1...`).
pub const KERNEL_MARKER: &str = "Linux version ";
/// Printed by hull-agent as soon as it runs as /init.
pub const AGENT_MARKER: &str = "hull-agent: started";
/// Printed by the benchmark's trivial /init (the floor image).
pub const FLOOR_MARKER: &str = "hull-floor: init reached";

const TAIL_LINES: usize = 40;

/// When each marker was first seen on the console.
#[derive(Debug, Clone, Default)]
pub struct ConsoleProgress {
    pub first_output: Option<Instant>,
    pub kernel: Option<Instant>,
    pub agent: Option<Instant>,
    pub floor: Option<Instant>,
    /// The console stream ended (the hypervisor closed it, normally by exiting).
    pub closed: bool,
}

#[derive(Debug)]
struct Shared {
    tail: Vec<String>,
    partial: String,
}

/// Handle on a VM's console.
#[derive(Debug, Clone)]
pub struct Console {
    log_path: PathBuf,
    shared: Arc<Mutex<Shared>>,
    progress: watch::Receiver<ConsoleProgress>,
}

impl Console {
    /// Starts copying `stream` into `log_path` in a background task.
    pub async fn spawn<R>(stream: R, log_path: &Path) -> std::io::Result<Console>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .await?;
        let shared = Arc::new(Mutex::new(Shared {
            tail: Vec::new(),
            partial: String::new(),
        }));
        let (tx, rx) = watch::channel(ConsoleProgress::default());
        tokio::spawn(pump(stream, file, Arc::clone(&shared), tx));
        Ok(Console {
            log_path: log_path.to_path_buf(),
            shared,
            progress: rx,
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// A receiver that changes whenever a marker appears or the stream closes.
    pub fn progress(&self) -> watch::Receiver<ConsoleProgress> {
        self.progress.clone()
    }

    /// The last lines the guest printed (including an unfinished last line).
    pub fn tail(&self) -> String {
        let Ok(s) = self.shared.lock() else {
            return String::new();
        };
        let mut lines = s.tail.clone();
        if !s.partial.is_empty() {
            lines.push(s.partial.clone());
        }
        lines.join("\n")
    }
}

async fn pump<R>(
    mut stream: R,
    mut file: tokio::fs::File,
    shared: Arc<Mutex<Shared>>,
    tx: watch::Sender<ConsoleProgress>,
) where
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = Instant::now();
        let chunk = &buf[..n];
        if let Err(e) = file.write_all(chunk).await {
            tracing::warn!(error = %e, "cannot write the console log");
        }
        let text = String::from_utf8_lossy(chunk);
        let mut found = Vec::new();
        if let Ok(mut s) = shared.lock() {
            for ch in text.chars() {
                if ch == '\n' {
                    let line = std::mem::take(&mut s.partial);
                    let line = line.trim_end_matches('\r').to_string();
                    found.push(line.clone());
                    s.tail.push(line);
                    if s.tail.len() > TAIL_LINES {
                        s.tail.remove(0);
                    }
                } else if s.partial.len() < 4096 {
                    s.partial.push(ch);
                }
            }
            // A marker may sit on a line that is not finished yet.
            found.push(s.partial.clone());
        }
        tx.send_modify(|p| {
            p.first_output.get_or_insert(now);
            for line in &found {
                if p.kernel.is_none() && line.contains(KERNEL_MARKER) {
                    p.kernel = Some(now);
                }
                if p.agent.is_none() && line.contains(AGENT_MARKER) {
                    p.agent = Some(now);
                }
                if p.floor.is_none() && line.contains(FLOOR_MARKER) {
                    p.floor = Some(now);
                }
            }
        });
    }
    let _ = file.flush().await;
    tx.send_modify(|p| p.closed = true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn markers_tail_and_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        let (mut w, r) = tokio::io::duplex(64);
        let console = Console::spawn(r, &log).await.expect("spawn");
        let mut progress = console.progress();
        w.write_all(b"[    0.000000] Linux version 6.1.0 (x)\r\nboot...\nhull-agent: sta")
            .await
            .expect("write");
        w.write_all(b"rted 0.1.0\nlast words").await.expect("write");
        drop(w);
        let p = progress
            .wait_for(|p| p.closed)
            .await
            .expect("progress")
            .clone();
        assert!(p.kernel.is_some() && p.agent.is_some() && p.floor.is_none());
        assert!(p.kernel <= p.agent);
        let tail = console.tail();
        assert!(
            tail.ends_with("hull-agent: started 0.1.0\nlast words"),
            "{tail}"
        );
        let logged = std::fs::read_to_string(&log).expect("log");
        assert!(logged.starts_with("[    0.000000] Linux version"));
        assert!(logged.ends_with("last words"));
    }
}
