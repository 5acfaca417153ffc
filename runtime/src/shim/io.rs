//! A process's stdio between containerd and the agent. containerd names FIFOs (or
//! `file://` or `binary://` URIs, the latter run by `logger`) in the request; the shim writes the process's output into them with
//! `agent_client::pump`'s pumps (pull model, backpressure to the writer in the guest) and feeds
//! stdin from them. The exit of a process is reported only after its output pumps
//! finished, so nothing written before the exit is lost.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::logger::{self, BinaryLogger};
use super::ShimError;
use crate::agent_client::pump::pump_output;
use crate::agent_client::{AgentClient, AgentError, ProcessRef, StdioSpec, Stream};

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
                "stdio URI {uri:?}: the {scheme}:// scheme is not supported by hull (FIFOs, file:// and binary:// are)"
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
            Err(e)
                if e.raw_os_error() == Some(libc::ENXIO)
                    && tokio::time::Instant::now() < deadline =>
            {
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
    stdin_closed: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// The `binary://` logging process, if the outputs go to one.
    logger: Option<BinaryLogger>,
}

/// The sinks of the outputs containerd named: FIFOs or files each, or one logging
/// binary for both (containerd names the same `binary://` URI for stdout and stderr).
async fn open_outputs(
    paths: &StdioPaths,
    cid: &str,
    namespace: &str,
) -> Result<(Vec<(Stream, Sink)>, Option<BinaryLogger>), ShimError> {
    let spec = paths.spec();
    let named: Vec<(Stream, &str)> = [
        (Stream::Stdout, spec.stdout, &paths.stdout),
        (Stream::Stderr, spec.stderr, &paths.stderr),
    ]
    .into_iter()
    .filter(|(_, wanted, _)| *wanted)
    .map(|(s, _, uri)| (s, uri.as_str()))
    .collect();
    let binary: Vec<&str> = named
        .iter()
        .map(|(_, u)| *u)
        .filter(|u| logger::is_binary(u))
        .collect();
    let Some(uri) = binary.first().copied() else {
        let mut sinks = Vec::new();
        for (stream, uri) in named {
            sinks.push((stream, open_sink(uri).await?));
        }
        return Ok((sinks, None));
    };
    if binary.len() != named.len() || binary.iter().any(|u| *u != uri) {
        return Err(ShimError::InvalidArgument(format!(
            "stdio URIs {:?} and {:?}: a binary:// logger must get both outputs",
            paths.stdout, paths.stderr
        )));
    }
    let (logger, out, err) = BinaryLogger::start(uri, cid, namespace).await?;
    // An end no stream uses is dropped here: the logger reads EOF on it at once.
    let (mut out, mut err) = (Some(out), Some(err));
    let sinks = named
        .into_iter()
        .filter_map(|(stream, _)| {
            let end = match stream {
                Stream::Stdout => out.take(),
                Stream::Stderr => err.take(),
            };
            end.map(|e| (stream, Sink::Fifo(e)))
        })
        .collect();
    Ok((sinks, Some(logger)))
}

impl ProcessIo {
    /// Opens the outputs (before the process starts, so its first byte has a reader)
    /// and starts pumping; stdin is opened in the background (its writer may come later).
    pub async fn start(
        agent: &AgentClient,
        cid: &str,
        exec_id: &str,
        paths: &StdioPaths,
        namespace: &str,
    ) -> Result<ProcessIo, ShimError> {
        let spec = paths.spec();
        let (sinks, logger) = open_outputs(paths, cid, namespace).await?;
        let outputs = sinks
            .into_iter()
            .map(|(stream, sink)| {
                tokio::spawn(pump_output(
                    agent.clone(),
                    ProcessRef::exec(cid, exec_id),
                    stream,
                    sink,
                ))
            })
            .collect();
        let (stdin, stdin_closed) = if spec.stdin {
            let path = target(&paths.stdin)?;
            // Non-blocking read-only open: it never waits for a writer, and Linux
            // reports the FIFO readable at EOF only once a writer that came after this
            // open has gone (a FIFO without a writer yet just waits). The end of input is
            // that EOF, or containerd's CloseIO, whichever comes first.
            let rx = pipe::OpenOptions::new().open_receiver(&path).map_err(|e| {
                ShimError::Internal(format!("cannot open stdin FIFO {}: {e}", path.display()))
            })?;
            let closed = std::sync::Arc::new(tokio::sync::Notify::new());
            let task = tokio::spawn(pump_stdin(
                agent.clone(),
                cid.to_string(),
                exec_id.to_string(),
                rx,
                closed.clone(),
            ));
            (Some(task), Some(closed))
        } else {
            (None, None)
        };
        Ok(ProcessIo {
            outputs,
            stdin,
            stdin_closed,
            logger,
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

    /// containerd's CloseIO: the client's input ended. The pump passes on what is
    /// still in the FIFO, then closes the process's stdin.
    pub async fn close_stdin(&mut self) {
        if let (Some(task), Some(closed)) = (self.stdin.take(), self.stdin_closed.take()) {
            closed.notify_one();
            let mut task = task;
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                tracing::warn!("stdin pump did not finish after CloseIO");
                task.abort();
            }
        }
    }

    /// The process is deleted: every pump stops, and a logging binary is ended (see
    /// `logger::BinaryLogger::stop`).
    pub async fn shutdown(&mut self) {
        self.abort();
        if let Some(mut l) = self.logger.take() {
            l.stop().await;
        }
    }

    /// Stops every pump now (the process is being deleted).
    pub fn abort(&mut self) {
        for t in self.outputs.drain(..) {
            t.abort();
        }
        if let Some(t) = self.stdin.take() {
            t.abort();
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Copies the stdin FIFO to the process until CloseIO (`closed`), then drains what is
/// left in the FIFO without waiting and closes the process's stdin.
async fn pump_stdin(
    agent: AgentClient,
    cid: String,
    exec_id: String,
    rx: pipe::Receiver,
    closed: std::sync::Arc<tokio::sync::Notify>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut closing = false;
    loop {
        let n = if closing {
            rx.try_read(&mut buf).unwrap_or_default()
        } else {
            tokio::select! {
                r = rx.readable() => {
                    if r.is_err() { 0 } else {
                        match rx.try_read(&mut buf) {
                            Ok(n) => n,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                            Err(_) => 0,
                        }
                    }
                }
                _ = closed.notified() => { closing = true; continue; }
            }
        };
        if n == 0 {
            if let Err(e) = agent.close_stdin(&cid, &exec_id).await {
                tracing::debug!(error = %e, "close stdin");
            }
            return;
        }
        let mut off = 0;
        while off < n {
            match agent.write_stdin(&cid, &exec_id, &buf[off..n]).await {
                Ok(0) => tokio::time::sleep(Duration::from_millis(5)).await,
                Ok(took) => off += took,
                Err(e) => {
                    tracing::debug!(error = %e, "stdin pump ended");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_streams() {
        assert_eq!(
            target("/run/x/stdout").expect("fifo"),
            PathBuf::from("/run/x/stdout")
        );
        assert_eq!(
            target("file:///var/log/c.log").expect("file"),
            PathBuf::from("/var/log/c.log")
        );
        let e = target("syslog://x").expect_err("unknown scheme");
        assert!(e.to_string().contains("syslog://"), "{e}");
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
