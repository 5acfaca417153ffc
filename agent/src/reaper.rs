//! The only place that calls `waitpid`: reaps every child (as PID 1, every orphan of the
//! guest) on SIGCHLD and hands exit statuses to whoever asked for them.
//!
//! - [`Reaper::watch`] gives a oneshot for a pid's exit status. A child that exits before
//!   anyone watches it is kept as "unclaimed" for [`UNCLAIMED_TTL`], so `spawn` then
//!   `watch` does not lose the status.
//! - [`Reaper::spawn_watched`] holds the registry while the caller spawns, so the status
//!   cannot be reaped before the watch is registered (no stale-status window at all).
//!   Prefer it for processes the agent starts.
//! - Orphans nobody watches are reaped and dropped after the TTL.
//!
//! Nothing else in the agent may wait for children: no `tokio::process` (it reaps its own
//! children by pid and would race this loop) and no `std::process::Child::wait`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tracing::{debug, info_span, trace, warn};

/// How long the status of a child nobody watched is kept.
pub const UNCLAIMED_TTL: Duration = Duration::from_secs(60);
/// At most this many unclaimed statuses are kept (oldest dropped first).
pub const UNCLAIMED_MAX: usize = 4096;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// A reaped child's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub pid: i32,
    pub kind: ExitKind,
    pub exited_at: SystemTime,
}

impl ExitStatus {
    /// The shell convention the API uses: the exit code, or 128 + signal.
    pub fn code(&self) -> i32 {
        match self.kind {
            ExitKind::Code(c) => c,
            ExitKind::Signal(s) => 128 + s,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("install the SIGCHLD handler: {0}")]
    Signal(std::io::Error),
}

/// Bookkeeping without system calls: who waits for which pid, and statuses nobody
/// claimed yet. Pure, so it is unit tested directly.
#[derive(Debug, Default)]
pub struct Registry {
    watchers: HashMap<i32, Vec<oneshot::Sender<ExitStatus>>>,
    unclaimed: HashMap<i32, (ExitStatus, Instant)>,
    /// Unclaimed pids in arrival order, for eviction.
    order: VecDeque<(i32, Instant)>,
}

impl Registry {
    /// Records a child's exit: delivered to its watchers, else kept as unclaimed.
    pub fn exited(&mut self, status: ExitStatus, now: Instant) {
        if let Some(watchers) = self.watchers.remove(&status.pid) {
            trace!(pid = status.pid, "delivering exit status");
            for tx in watchers {
                // The watcher may have given up (dropped its receiver): nothing to do.
                let _ = tx.send(status);
            }
            return;
        }
        debug!(
            pid = status.pid,
            code = status.code(),
            "reaped an unwatched process"
        );
        self.prune(now);
        if self.unclaimed.len() >= UNCLAIMED_MAX {
            self.evict_oldest();
        }
        self.unclaimed.insert(status.pid, (status, now));
        self.order.push_back((status.pid, now));
    }

    /// A receiver for `pid`'s exit status; immediately ready if it already exited (and
    /// was not claimed by another watcher since).
    pub fn watch(&mut self, pid: i32, now: Instant) -> oneshot::Receiver<ExitStatus> {
        self.prune(now);
        let (tx, rx) = oneshot::channel();
        match self.unclaimed.remove(&pid) {
            Some((status, _)) => {
                let _ = tx.send(status);
            }
            None => self.watchers.entry(pid).or_default().push(tx),
        }
        rx
    }

    /// Forgets an unclaimed status for `pid` (the pid now belongs to a new process).
    pub fn forget(&mut self, pid: i32) {
        self.unclaimed.remove(&pid);
    }

    /// Number of unclaimed statuses kept.
    pub fn unclaimed_len(&self) -> usize {
        self.unclaimed.len()
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&(pid, at)) = self.order.front() {
            if now.saturating_duration_since(at) < UNCLAIMED_TTL {
                break;
            }
            self.order.pop_front();
            self.remove_if_recorded_at(pid, at);
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((pid, at)) = self.order.pop_front() {
            self.remove_if_recorded_at(pid, at);
        }
    }

    /// Removes `pid`'s unclaimed entry only if it is the one queued at `at` (a pid can be
    /// reused; a newer entry for it stays).
    fn remove_if_recorded_at(&mut self, pid: i32, at: Instant) {
        if self.unclaimed.get(&pid).is_some_and(|(_, t)| *t == at) {
            self.unclaimed.remove(&pid);
        }
    }
}

/// Handle to the reaper; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Reaper {
    registry: Arc<Mutex<Registry>>,
}

impl Reaper {
    /// Installs the SIGCHLD stream and spawns the reaping task on the current tokio
    /// runtime. Call once, before the agent starts any process.
    pub fn start() -> Result<Reaper, ReaperError> {
        let mut sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
        let reaper = Reaper::default();
        let task = reaper.clone();
        tokio::spawn(async move {
            // Children may have exited before the handler was installed.
            task.reap_all();
            while sigchld.recv().await.is_some() {
                task.reap_all();
            }
            warn!("SIGCHLD stream ended; no more reaping");
        });
        Ok(reaper)
    }

    /// A receiver for the exit status of child `pid`. It never completes for a pid that
    /// is not a child of this process (or, as PID 1 or subreaper, an orphan of it).
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        self.lock().watch(pid, Instant::now())
    }

    /// Runs `spawn` (which starts a process and returns its pid along with anything
    /// else) with the registry held, then watches that pid: the exit cannot be reaped in
    /// between. `spawn` must not call into the reaper, and must be quick.
    pub fn spawn_watched<T, E>(
        &self,
        spawn: impl FnOnce() -> Result<(T, i32), E>,
    ) -> Result<(T, oneshot::Receiver<ExitStatus>), E> {
        let mut registry = self.lock();
        let (value, pid) = spawn()?;
        registry.forget(pid);
        let rx = registry.watch(pid, Instant::now());
        Ok((value, rx))
    }

    /// Reaps every child that has exited; returns how many.
    pub fn reap_all(&self) -> usize {
        let _span = info_span!("reap").entered();
        let mut registry = self.lock();
        let mut reaped = 0;
        loop {
            let kind = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitKind::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _core)) => (pid, ExitKind::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Err(Errno::EINTR) => continue,
                // Stopped/continued are not asked for (no WUNTRACED/WCONTINUED).
                Ok(other) => {
                    trace!(?other, "ignoring wait status");
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "waitpid failed");
                    break;
                }
            };
            let (pid, kind) = kind;
            let status = ExitStatus {
                pid: pid.as_raw(),
                kind,
                exited_at: SystemTime::now(),
            };
            registry.exited(status, Instant::now());
            reaped += 1;
        }
        reaped
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock reboots the guest (panic hook); in a test it
        // leaves consistent data (every method completes its updates before returning),
        // so a poisoned lock is still usable.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests;
