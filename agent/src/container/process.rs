//! One process the agent started (a container's init or an exec): its pid, the agent's
//! ends of its stdio, and its exit, published once the reaper reports it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::UNIX_EPOCH;

use tokio::sync::{oneshot, watch, Mutex};
use tracing::debug;

use super::cgroup;
use super::stdio::{Reader, Writer};
use crate::reaper::ExitStatus;

/// How a process ended, as WaitProcess reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub status: i32,
    pub exited_at_ns: i64,
    pub oom_killed: bool,
}

/// The agent's ends of a process's stdio.
#[derive(Debug, Default)]
pub struct HostEnds {
    pub stdin: Option<Writer>,
    pub stdout: Option<Reader>,
    pub stderr: Option<Reader>,
    /// The pty master (terminal mode), for window resizes.
    pub pty: Option<OwnedFd>,
}

#[derive(Debug)]
pub struct Process {
    pub exec_id: String,
    pub pid: i32,
    pub terminal: bool,
    pub stdin: Mutex<Option<Writer>>,
    pub stdout: Mutex<Option<Reader>>,
    pub stderr: Mutex<Option<Reader>>,
    pty: Option<OwnedFd>,
    exit: watch::Receiver<Option<Exit>>,
}

impl Process {
    /// Takes the process's stdio ends and publishes its exit when `exited` fires. The
    /// OOM verdict compares the cgroup's `oom_kill` count when the process started with
    /// the one at its exit: any OOM kill in the container during the process's life
    /// counts (as Docker's `OOMKilled` and containerd's TaskOOM do), also when the victim
    /// was a child and the process only passed its 137 on (`sh -c 'hog | tail'`).
    pub fn new(
        exec_id: String,
        pid: i32,
        ends: HostEnds,
        exited: oneshot::Receiver<ExitStatus>,
        cgroup_dir: PathBuf,
    ) -> Process {
        let (tx, rx) = watch::channel(None);
        let oom_before = cgroup::oom_kills(&cgroup_dir);
        tokio::spawn(async move {
            let Ok(status) = exited.await else {
                debug!(pid, "reaper dropped the watch");
                return;
            };
            let oom_killed = cgroup::oom_kills(&cgroup_dir) > oom_before;
            let exited_at_ns = status
                .exited_at
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            debug!(pid, code = status.code(), oom_killed, "process exited");
            let _ = tx.send(Some(Exit {
                status: status.code(),
                exited_at_ns,
                oom_killed,
            }));
        });
        Process {
            exec_id,
            pid,
            terminal: ends.pty.is_some(),
            stdin: Mutex::new(ends.stdin),
            stdout: Mutex::new(ends.stdout),
            stderr: Mutex::new(ends.stderr),
            pty: ends.pty,
            exit: rx,
        }
    }

    /// The exit, if the process has exited.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub fn has_exited(&self) -> bool {
        self.exit().is_some()
    }

    /// Waits for the exit; None if it can never be known (the reaper went away).
    pub async fn wait(&self) -> Option<Exit> {
        let mut rx = self.exit.clone();
        let result = rx.wait_for(Option::is_some).await.ok().and_then(|v| *v);
        result
    }

    /// Exited, and the host read its outputs to the end (nothing more to ask of it).
    pub fn is_finished(&self) -> bool {
        let drained = |m: &Mutex<Option<Reader>>| match m.try_lock() {
            Ok(r) => match r.as_ref() {
                Some(r) => r.is_eof(),
                None => true,
            },
            Err(_) => false,
        };
        self.has_exited() && drained(&self.stdout) && drained(&self.stderr)
    }

    pub fn pty_fd(&self) -> Option<i32> {
        self.pty.as_ref().map(AsRawFd::as_raw_fd)
    }
}
