//! Process RPCs: exec, signal, wait, tty resize, stdin close; and the stdio set-up shared
//! with CreateContainer.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use hull_proto::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, info};

use super::container::lookup;
use super::{Service, ServiceError};
use crate::container::process::HostEnds;
use crate::container::runner::{self, ChildStdio, StdioSetup};
use crate::container::stdio::{self, Reader, Writer};
use crate::container::{cgroup, spec, Container, Process};

/// The agent's ends before the process exists (pipes); the pty comes after.
#[derive(Debug, Default)]
pub struct PendingEnds {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

/// Pipes for the stdio the host asked for (`/dev/null` for the rest), or a terminal.
pub fn prepare_stdio(cfg: &StdioConfig, terminal: bool) -> io::Result<(StdioSetup, PendingEnds)> {
    if terminal {
        return Ok((StdioSetup::Terminal, PendingEnds::default()));
    }
    let mut ends = PendingEnds::default();
    let stdin = if cfg.stdin {
        let (r, w) = stdio::pipe()?;
        ends.stdin = Some(w);
        r
    } else {
        stdio::dev_null()?
    };
    let out = |wanted: bool, keep: &mut Option<OwnedFd>| -> io::Result<OwnedFd> {
        if wanted {
            let (r, w) = stdio::pipe()?;
            *keep = Some(r);
            Ok(w)
        } else {
            stdio::dev_null()
        }
    };
    let stdout = out(cfg.stdout, &mut ends.stdout)?;
    let stderr = out(cfg.stderr, &mut ends.stderr)?;
    Ok((
        StdioSetup::Pipes(ChildStdio {
            stdin,
            stdout,
            stderr,
        }),
        ends,
    ))
}

/// The agent's ends once the process exists: the pipes, or readers/writers on the pty
/// master (stdout carries the terminal's output; there is no separate stderr). A
/// terminal gets its window size (`size`, see `stdio::initial_size`) here, before the
/// host can read or resize it.
pub fn finish_ends(
    pending: PendingEnds,
    pty: Option<OwnedFd>,
    cfg: &StdioConfig,
    size: (u16, u16),
) -> io::Result<HostEnds> {
    if let Some(master) = pty {
        stdio::resize(master.as_raw_fd(), size.0, size.1)?;
        let stdin = if cfg.stdin {
            Some(Writer::new(master.try_clone()?)?)
        } else {
            None
        };
        return Ok(HostEnds {
            stdin,
            stdout: Some(Reader::new(master.try_clone()?)?),
            stderr: None,
            pty: Some(master),
        });
    }
    Ok(HostEnds {
        stdin: pending.stdin.map(Writer::new).transpose()?,
        stdout: pending.stdout.map(Reader::new).transpose()?,
        stderr: pending.stderr.map(Reader::new).transpose()?,
        pty: None,
    })
}

/// Sends `sig` to every process in the container's cgroup. Best effort.
pub fn signal_all(c: &Container, sig: i32) {
    let Ok(sig) = Signal::try_from(sig) else {
        return;
    };
    for pid in cgroup::procs(&c.cgroup).unwrap_or_default() {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// The process of a request: a container's, or (empty container id) a debug process
/// of the guest.
pub fn lookup_any(
    svc: &Service,
    container_id: &str,
    exec_id: &str,
) -> Result<Arc<Process>, ServiceError> {
    if container_id.is_empty() {
        return super::debug::lookup(svc, exec_id);
    }
    Ok(lookup_process(svc, container_id, exec_id)?.1)
}

/// Container and process of a request.
pub fn lookup_process(
    svc: &Service,
    container_id: &str,
    exec_id: &str,
) -> Result<(Arc<Container>, Arc<Process>), ServiceError> {
    let c = lookup(svc, container_id)?;
    if !exec_id.is_empty() {
        spec::validate_id("exec id", exec_id)?;
    }
    let p = c.process(exec_id).ok_or_else(|| {
        ServiceError::NotFound(format!("process {exec_id} in container {container_id}"))
    })?;
    Ok((c, p))
}

pub fn do_exec(svc: &Service, req: &ExecProcessRequest) -> Result<Empty, ServiceError> {
    if req.container_id.is_empty() {
        return super::debug::do_debug_exec(svc, req);
    }
    let c = lookup(svc, &req.container_id)?;
    spec::validate_id("exec id", &req.exec_id)?;
    if c.has_exec(&req.exec_id) {
        return Err(ServiceError::AlreadyExists(format!(
            "exec {} in container {}",
            req.exec_id, c.id
        )));
    }
    if !c.is_started() || c.init.has_exited() {
        return Err(ServiceError::FailedPrecondition(format!(
            "container {} is not running",
            c.id
        )));
    }
    let mut process = spec::parse_process(&req.process_json)?;
    let terminal = req.stdio.terminal || process.terminal().unwrap_or(false);
    process.set_terminal(Some(terminal));
    let (setup, pending) = prepare_stdio(&req.stdio, terminal)
        .map_err(|e| ServiceError::internal("stdio pipes", e))?;
    let (launched, exited) = svc
        .reaper
        .spawn_watched(|| {
            let l = runner::exec(&c.id, &req.exec_id, &process, setup)?;
            let pid = l.pid;
            Ok::<_, runner::RunError>((l, pid))
        })
        .map_err(|e| {
            ServiceError::internal(format!("exec {} in container {}", req.exec_id, c.id), e)
        })?;
    let pid = launched.pid;
    let size = stdio::initial_size(process.console_size().as_ref());
    let ends = finish_ends(pending, launched.pty_master, &req.stdio, size)
        .map_err(|e| ServiceError::internal("process stdio", e))?;
    let p = Arc::new(Process::new(
        req.exec_id.clone(),
        pid,
        ends,
        exited,
        c.cgroup.clone(),
    ));
    c.add_exec(req.exec_id.clone(), p);
    info!(container = %c.id, exec = %req.exec_id, pid, terminal, "exec started");
    Ok(Empty::new())
}

pub fn do_signal(svc: &Service, req: &SignalProcessRequest) -> Result<Empty, ServiceError> {
    // A debug process (empty container id) has no container: `all` is the process.
    let (c, p) = if req.container_id.is_empty() {
        (None, super::debug::lookup(svc, &req.exec_id)?)
    } else {
        let (c, p) = lookup_process(svc, &req.container_id, &req.exec_id)?;
        (Some(c), p)
    };
    let sig = i32::try_from(req.signal)
        .ok()
        .and_then(|s| Signal::try_from(s).ok())
        .ok_or_else(|| {
            ServiceError::InvalidArgument(format!("signal {} is not a valid signal", req.signal))
        })?;
    if let (true, Some(c)) = (req.all, &c) {
        signal_all(c, sig as i32);
        return Ok(Empty::new());
    }
    let owner = c.as_ref().map_or_else(
        || "the guest".to_string(),
        |c| format!("container {}", c.id),
    );
    if p.has_exited() {
        return Err(ServiceError::NotFound(format!(
            "process {:?} of {owner} has exited",
            p.exec_id
        )));
    }
    debug!(pid = p.pid, ?sig, "signal");
    kill(Pid::from_raw(p.pid), sig)
        .map_err(|e| ServiceError::internal(format!("kill {}", p.pid), e))?;
    Ok(Empty::new())
}

pub async fn do_wait(
    svc: &Service,
    req: &ProcessRequest,
) -> Result<WaitProcessResponse, ServiceError> {
    let p = lookup_any(svc, &req.container_id, &req.exec_id)?;
    let exit = p
        .wait()
        .await
        .ok_or_else(|| ServiceError::internal("wait", "the exit status was lost"))?;
    // The process is gone: its stdin's write end is closed now rather than with the
    // container (a long-lived container's execs would otherwise use up the agent's fds).
    *p.stdin.lock().await = None;
    let mut resp = WaitProcessResponse::new();
    resp.status = exit.status;
    resp.exited_at_ns = exit.exited_at_ns;
    resp.oom_killed = exit.oom_killed;
    Ok(resp)
}

pub fn do_resize(svc: &Service, req: &ResizeTtyRequest) -> Result<Empty, ServiceError> {
    let p = lookup_any(svc, &req.container_id, &req.exec_id)?;
    let fd = p
        .pty_fd()
        .ok_or_else(|| ServiceError::FailedPrecondition("the process has no terminal".into()))?;
    let rows = u16::try_from(req.rows)
        .map_err(|_| ServiceError::InvalidArgument(format!("rows {}", req.rows)))?;
    let cols = u16::try_from(req.columns)
        .map_err(|_| ServiceError::InvalidArgument(format!("columns {}", req.columns)))?;
    stdio::resize(fd, rows, cols).map_err(|e| ServiceError::internal("TIOCSWINSZ", e))?;
    Ok(Empty::new())
}

/// Closes the process's stdin: the pipe's write end (the process reads EOF); on a
/// terminal, which stays open for output, an end-of-file character (^D) is sent.
pub async fn do_close_stdin(svc: &Service, req: &ProcessRequest) -> Result<Empty, ServiceError> {
    let p = lookup_any(svc, &req.container_id, &req.exec_id)?;
    let mut stdin = p.stdin.lock().await;
    if p.terminal {
        if let Some(w) = stdin.as_mut() {
            let _ = w.write_all(&[4]).await;
        }
    }
    *stdin = None;
    Ok(Empty::new())
}

pub async fn do_get_oom_event(
    svc: &Service,
    _req: &GetOomEventRequest,
) -> Result<OomEvent, ServiceError> {
    let id = svc
        .containers
        .next_oom()
        .await
        .ok_or_else(|| ServiceError::Cancelled("the sandbox is being destroyed".into()))?;
    let mut ev = OomEvent::new();
    ev.container_id = id;
    Ok(ev)
}
