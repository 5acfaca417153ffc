//! The guest console: the agent's stdio as PID 1, and the few fixed lines the host
//! matches on (`hull-agent: started`, `hull-agent: PANIC:`, `hull-agent: FATAL:`).
//!
//! These lines bypass `tracing` on purpose: they must get out even before logging is
//! set up and while the process is dying.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::{fcntl, FcntlArg};

/// The device the kernel routes `console=` to.
pub const CONSOLE: &str = "/dev/console";

/// Prefix of every line the agent itself prints on the console.
pub const PREFIX: &str = "hull-agent:";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("open {CONSOLE}: {0}")]
    Open(std::io::Error),
    #[error("dup {CONSOLE} onto fd {fd}: {source}")]
    Dup { fd: i32, source: nix::Error },
}

/// Makes fds 0, 1 and 2 usable: each one that is closed is pointed at /dev/console.
///
/// The kernel opens /dev/console for init only if the node exists in the initramfs; when
/// it does not, init starts with no stdio at all. Call this once /dev is mounted.
pub fn setup_stdio() -> Result<(), ConsoleError> {
    let closed: Vec<i32> = (0..=2).filter(|fd| !fd_is_open(*fd)).collect();
    if closed.is_empty() {
        return Ok(());
    }
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(CONSOLE)
        .map_err(ConsoleError::Open)?;
    for fd in closed {
        // dup2 onto a closed fd number only: nothing else in the process owns it yet.
        // SAFETY: `libc::dup2` takes two integers and has no memory effects; `console` is
        // open for the duration of the call, and `fd` (0..=2) is closed, so no Rust owner
        // of that descriptor number exists whose state we would invalidate.
        let rc = unsafe { libc::dup2(console.as_raw_fd(), fd) };
        if rc < 0 {
            return Err(ConsoleError::Dup {
                fd,
                source: nix::Error::last(),
            });
        }
    }
    Ok(())
}

fn fd_is_open(fd: i32) -> bool {
    // F_GETFD neither closes nor changes the fd; EBADF means it is closed.
    fcntl(fd, FcntlArg::F_GETFD).is_ok()
}

/// Writes `hull-agent: <msg>` to stdout (the console when PID 1) and flushes.
/// Errors are ignored: there is nowhere else to report them.
pub fn announce_line(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PREFIX} {msg}");
    let _ = out.flush();
}

/// Writes `hull-agent: <msg>` to stderr, or with `to_console` (only as the guest's init:
/// on a host it would be the host's console) straight to /dev/console, falling back to
/// stderr.
///
/// For the dying moments (panic, fatal error): it takes no lock that a panicking thread
/// might hold and opens the device afresh, so it works even if stdio is broken.
pub fn emergency_line(msg: &str, to_console: bool) {
    let line = format!("{PREFIX} {msg}\n");
    let written = to_console
        && OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(CONSOLE)
            .and_then(|mut c| c.write_all(line.as_bytes()))
            .is_ok();
    if !written {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}
