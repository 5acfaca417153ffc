//! A process's stdio between containerd and the agent. containerd names FIFOs (or
//! `file://` URIs) in the request; the shim writes the process's output into them with
//! `run::io`'s pumps (pull model, backpressure to the writer in the guest) and feeds
//! stdin from them. The exit of a process is reported only after its output pumps
//! finished, so nothing written before the exit is lost.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::ShimError;
use crate::agent_client::{AgentClient, AgentError, StdioSpec, Stream};
use crate::run::io::{pump_process_output, pump_process_stdin};

/// How long to wait for containerd (or ctr) to open the reading end of an output FIFO.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The stdio containerd asked for, as it named it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    /// Which streams the agent must give the process.
    pub fn spec(&self) -> StdioSpec {
        StdioSpec {
            terminal: self.terminal,
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            // With a terminal, stdout carries everything.
            stderr: !self.stderr.is_empty() && !self.terminal,
        }
    }
}

/// Where one output stream goes.
enum Sink {
    Fifo(pipe::Sender),
    File(tokio::fs::File),
}

fn target(uri: &str) -> Result<PathBuf, ShimError> {
    if let Some(p) = uri.strip_prefix("file://") {
        return Ok(PathBuf::from(p));
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        if scheme != "fifo" {
            return Err(ShimError::InvalidArgument(format!(
                "stdio URI {uri:?}: the {scheme}:// scheme is not supported by hull (FIFOs and file:// are)"
            )));
        }
    }
    Ok(PathBuf::from(uri.strip_prefix("fifo://").unwrap_or(uri)))
}

async fn open_sink(uri: &str) -> Result<Sink, ShimError> {
    let path = target(uri)?;
    if uri.starts_with("file://") {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| ShimError::Internal(format!("log dir {}: {e}", dir.display())))?;
        }
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| ShimError::Internal(format!("log file {}: {e}", path.display())))?;
        return Ok(Sink::File(f));
    }
    // A FIFO: opening for writing fails with ENXIO until a reader has it open.
    let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
    loop {
        match pipe::OpenOptions::new().open_sender(&path) {
            Ok(s) => return Ok(Sink::Fifo(s)),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => {
                return Err(ShimError::Internal(format!(
                    "cannot open output FIFO {}: {e}",
                    path.display()
                )))
            }
        }
    }
}

impl AsyncWrite for Sink {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Sink::Fifo(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Sink::File(f) => std::pin::Pin::new(f).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Sink::Fifo(s) => std::pin::Pin::new(s).poll_flush(cx),
            Sink::File(f) => std::pin::Pin::new(f).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Sink::Fifo(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Sink::File(f) => std::pin::Pin::new(f).poll_shutdown(cx),
        }
    }
}

/// The running pumps of one process.
pub struct ProcessIo {
    outputs: Vec<JoinHandle<Result<u64, AgentError>>>,
    stdin: Option<JoinHandle<()>>,
    stdin_path: Option<PathBuf>,
}

impl ProcessIo {
    /// Opens the outputs (before the process starts, so its first byte has a reader)
    /// and starts pumping; stdin is opened in the background (its writer may come later).
    pub async fn start(
        agent: &AgentClient,
        cid: &str,
        exec_id: &str,
        paths: &StdioPaths,
    ) -> Result<ProcessIo, ShimError> {
        let spec = paths.spec();
        let mut sinks = Vec::new();
        if spec.stdout {
            sinks.push((Stream::Stdout, open_sink(&paths.stdout).await?));
        }
        if spec.stderr {
            sinks.push((Stream::Stderr, open_sink(&paths.stderr).await?));
        }
        let outputs = sinks
            .into_iter()
            .map(|(stream, sink)| {
                tokio::spawn(pump_process_output(
                    agent.clone(),
                    cid.to_string(),
                    exec_id.to_string(),
                    stream,
                    sink,
                ))
            })
            .collect();
        let (stdin, stdin_path) = if spec.stdin {
            let path = target(&paths.stdin)?;
            let agent = agent.clone();
            let (cid, exec_id, p) = (cid.to_string(), exec_id.to_string(), path.clone());
            let task = tokio::spawn(async move {
                // Opening for reading blocks until a writer comes: off the runtime.
                let opened = tokio::task::spawn_blocking(move || {
                    std::fs::OpenOptions::new().read(true).open(&p)
                })
                .await;
                let file = match opened {
                    Ok(Ok(f)) => f,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot open the stdin FIFO");
                        return;
                    }
                    Err(_) => return,
                };
                let rx = match pipe::Receiver::from_file(file) {
                    Ok(rx) => rx,
                    Err(e) => {
                        tracing::warn!(error = %e, "stdin is not a FIFO");
                        return;
                    }
                };
                if let Err(e) = pump_process_stdin(agent, cid, exec_id, rx).await {
                    tracing::debug!(error = %e, "stdin pump ended");
                }
            });
            (Some(task), Some(path))
        } else {
            (None, None)
        };
        Ok(ProcessIo {
            outputs,
            stdin,
            stdin_path,
        })
    }

    /// Waits until every output reached EOF (or the VM went away).
    pub async fn drain(&mut self) {
        for task in self.outputs.drain(..) {
            match task.await {
                Ok(Ok(n)) => tracing::debug!(bytes = n, "output drained"),
                Ok(Err(e)) => tracing::warn!(error = %e, "output pump failed"),
                Err(e) if e.is_cancelled() => {}
                Err(e) => tracing::warn!(error = %e, "output pump panicked"),
            }
        }
    }

    /// containerd's CloseIO: the client's input ended. Give the pump a moment to pass on
    /// what is still in the FIFO (it closes the process's stdin itself at EOF), then
    /// close it from here.
    pub async fn close_stdin(&mut self, agent: &AgentClient, cid: &str, exec_id: &str) {
        if let Some(task) = self.stdin.take() {
            let mut task = task;
            if tokio::time::timeout(Duration::from_secs(2), &mut task).await.is_err() {
                task.abort();
                unblock_fifo_reader(self.stdin_path.as_deref());
                if let Err(e) = agent.close_stdin(cid, exec_id).await {
                    tracing::debug!(error = %e, "close stdin");
                }
            }
        }
    }

    /// Stops every pump now (the process is being deleted).
    pub fn abort(&mut self) {
        for t in self.outputs.drain(..) {
            t.abort();
        }
        if let Some(t) = self.stdin.take() {
            t.abort();
            unblock_fifo_reader(self.stdin_path.as_deref());
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.abort();
    }
}

/// A thread blocked opening a FIFO for reading is released by a writer showing up:
/// open and close the write end once (non-blocking, so it cannot hang here).
fn unblock_fifo_reader(path: Option<&Path>) {
    if let Some(p) = path {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_streams() {
        assert_eq!(target("/run/x/stdout").expect("fifo"), PathBuf::from("/run/x/stdout"));
        assert_eq!(target("file:///var/log/c.log").expect("file"), PathBuf::from("/var/log/c.log"));
        let e = target("binary:///usr/bin/logger?x=1").expect_err("binary");
        assert!(e.to_string().contains("binary://"), "{e}");
        let p = StdioPaths {
            stdin: String::new(),
            stdout: "/o".into(),
            stderr: "/e".into(),
            terminal: true,
        };
        let s = p.spec();
        assert!(s.terminal && s.stdout && !s.stderr && !s.stdin);
    }
}
