//! Streams of a running container between hull's stdio and the agent (pull model):
//! stdout/stderr are read with ReadStdout/ReadStderr until EOF, stdin is written with
//! WriteStdin and closed with CloseStdin; the exit is reported only after both output
//! streams reached EOF. Also the terminal side: raw mode, window size, signals.

use std::os::fd::AsFd;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::agent_client::{AgentClient, AgentError, ProcessRef, Stream, MAX_READ};

/// Copies one output stream of the container's init process to `w` until EOF.
/// Returns the number of bytes. If `w` fails (hull's stdout closed), the stream is
/// still drained so the container never blocks on a full pipe.
pub async fn pump_output<W: AsyncWrite + Unpin>(
    agent: AgentClient,
    process: ProcessRef,
    stream: Stream,
    mut w: W,
) -> Result<u64, AgentError> {
    let mut total = 0u64;
    let mut idle = Duration::from_millis(1);
    let mut discard = false;
    loop {
        let (data, eof) = agent
            .read_stream(&process.container_id, &process.exec_id, stream, MAX_READ)
            .await?;
        if !data.is_empty() {
            total += data.len() as u64;
            idle = Duration::from_millis(1);
            if !discard {
                if let Err(e) = async {
                    w.write_all(&data).await?;
                    w.flush().await
                }
                .await
                {
                    tracing::warn!(stream = stream.name(), error = %e, "cannot write container output; discarding the rest");
                    discard = true;
                }
            }
        }
        if eof {
            return Ok(total);
        }
        if data.is_empty() {
            // An agent that answers "nothing yet" instead of waiting: back off.
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(Duration::from_millis(50));
        }
    }
}

/// Copies `r` to the container's stdin until EOF, then closes it.
pub async fn pump_stdin<R: AsyncRead + Unpin>(
    agent: AgentClient,
    process: ProcessRef,
    mut r: R,
) -> Result<u64, AgentError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading stdin failed; closing the container's stdin");
                0
            }
        };
        if n == 0 {
            agent
                .close_stdin(&process.container_id, &process.exec_id)
                .await?;
            return Ok(total);
        }
        let mut off = 0;
        while off < n {
            let took = agent
                .write_stdin(&process.container_id, &process.exec_id, &buf[off..n])
                .await?;
            if took == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            off += took;
        }
        total += n as u64;
    }
}

/// Puts a terminal into raw mode; restores it on drop.
pub struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// Raw mode on stdin if it is a terminal; None otherwise.
    pub fn enable() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let stdin = std::io::stdin();
        if let Err(e) = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &self.saved) {
            tracing::warn!(error = %e, "cannot restore the terminal");
        }
    }
}

/// The window size of hull's terminal (stdout, else stdin): `(rows, columns)`.
pub fn window_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer we pass, which points
        // to a live, properly aligned local; a bad fd only makes the call fail.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
        if rc == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// hull's window size as an OCI `consoleSize`, so the process's terminal has it
/// before the process runs (None when hull has no terminal: the agent's default).
pub fn console_size() -> Option<oci_spec::runtime::Box> {
    let (rows, cols) = window_size()?;
    oci_spec::runtime::BoxBuilder::default()
        .height(u64::from(rows))
        .width(u64::from(cols))
        .build()
        .ok()
}

/// SIGINT / SIGTERM / SIGHUP delivered to hull, to forward to the container.
pub struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// The next signal's number.
    pub async fn recv(&mut self) -> i32 {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    if s.recv().await.is_none() {
                        std::future::pending::<()>().await
                    }
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.int) => libc::SIGINT,
            _ = next(&mut self.term) => libc::SIGTERM,
            _ = next(&mut self.hup) => libc::SIGHUP,
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
