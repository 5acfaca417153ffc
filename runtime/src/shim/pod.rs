//! The shim's VM: one sandbox, booted for the first container (a task of its own, or a
//! pod's sandbox container) and destroyed when the last container is deleted. Watches
//! the VM process: if it dies (killed, crashed, guest panic), `dead` flips and every
//! waiter reports its process as exited instead of hanging on a vsock that will never
//! answer. Watches the VM's helpers too (virtiofsd, the vsock backend): a VM that lost
//! one cannot serve its rootfs or reach its agent any more, so it is killed and the
//! pod dies as a whole rather than hanging.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::record::Record;
use super::ShimError;
use crate::agent_client::AgentClient;
use crate::cgroup::HostCgroup;
use crate::network::PodNetwork;
use crate::sandbox::Sandbox;

pub struct Pod {
    sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    agent: AgentClient,
    vm_pid: u32,
    dead: watch::Receiver<bool>,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    record: Record,
    bundle: PathBuf,
    sandbox_container: String,
    /// The pod's host cgroup (the shim is in it); removed after the VM.
    cgroup: std::sync::Mutex<Option<HostCgroup>>,
    /// The taps and tc filters in the pod's netns; removed after the VM.
    network: std::sync::Mutex<Option<PodNetwork>>,
}

impl Pod {
    /// Takes a booted sandbox; records it next to `bundle` for `delete` after a crash.
    /// `first` is the container that booted it: a pod's sandbox container, whose id is
    /// the `sandbox-id` annotation of the pod's other containers.
    pub fn new(
        sandbox: Sandbox,
        bundle: &Path,
        first: &str,
        cgroup: Option<HostCgroup>,
        network: Option<PodNetwork>,
    ) -> Result<Pod, ShimError> {
        let agent = sandbox
            .agent()
            .cloned()
            .ok_or_else(|| ShimError::internal("the sandbox has no agent connection"))?;
        let pids = sandbox.pids();
        let vm_pid = pids.first().copied().unwrap_or(0);
        let record = Record::new(sandbox.state_dir(), pids.clone(), cgroup.as_ref());
        if let Err(e) = record.write(bundle) {
            tracing::warn!(error = %e, "cannot write the sandbox record into the bundle");
        }
        let (tx, dead) = watch::channel(false);
        let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        watch_processes(&pids, tx, stopping.clone());
        Ok(Pod {
            sandbox: tokio::sync::Mutex::new(Some(sandbox)),
            agent,
            vm_pid,
            dead,
            stopping,
            record,
            bundle: bundle.to_path_buf(),
            sandbox_container: first.to_string(),
            cgroup: std::sync::Mutex::new(cgroup),
            network: std::sync::Mutex::new(network),
        })
    }

    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// The PID containerd sees for every process of the pod: the VM's.
    pub fn pid(&self) -> u32 {
        self.vm_pid
    }

    pub fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }

    /// Resolves once the VM process has exited.
    pub async fn died(&self) {
        let mut rx = self.dead.clone();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub fn sandbox_container(&self) -> &str {
        &self.sandbox_container
    }

    /// The sandbox (None once destroyed), locked.
    pub async fn lock_sandbox(&self) -> tokio::sync::MutexGuard<'_, Option<Sandbox>> {
        self.sandbox.lock().await
    }

    /// Runs `f` on the sandbox (its share), if it is still there.
    pub async fn with_sandbox<R>(&self, f: impl FnOnce(&mut Sandbox) -> R) -> Option<R> {
        let mut guard = self.sandbox.lock().await;
        guard.as_mut().map(f)
    }

    pub async fn state_dir(&self) -> Option<PathBuf> {
        self.with_sandbox(|s| s.state_dir().to_path_buf()).await
    }

    /// Stops the VM (orderly if it still runs) and removes everything of it.
    pub async fn destroy(&self) {
        let Some(sandbox) = self.sandbox.lock().await.take() else {
            return;
        };
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if self.is_dead() {
            let mut sandbox = sandbox;
            sandbox.teardown().await;
        } else if let Err(e) = sandbox.destroy().await {
            tracing::warn!(error = %e, "destroying the sandbox");
        }
        // The VM (which held the taps open) is gone: the taps and filters go now.
        let network = self
            .network
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut net) = network {
            let removed = tokio::task::spawn_blocking(move || net.teardown()).await;
            match removed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "removing the pod's taps and tc filters"),
                Err(e) => tracing::warn!(error = %e, "removing the pod's taps and tc filters"),
            }
        }
        let cgroup = self.cgroup.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut cg) = cgroup {
            cg.remove();
        }
        Record::remove(&self.bundle);
        // Nothing should be left; if something is, the record's cleaner gets it.
        if self.record.state_dir.exists() {
            self.record.clean();
        }
    }
}

/// Watches the sandbox's processes, `pids[0]` being the VM's: the VM's exit flips `dead`;
/// a helper's exit while the pod is not `stopping` kills the VM.
fn watch_processes(pids: &[u32], dead: watch::Sender<bool>, stopping: Arc<AtomicBool>) {
    let Some((&vm_pid, helpers)) = pids.split_first() else {
        tracing::warn!("the sandbox has no VM process to watch");
        return;
    };
    let vm = match pidfd(vm_pid) {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            tracing::warn!(pid = vm_pid, error = %e, "cannot watch the VM process");
            return;
        }
    };
    let expected = stopping.clone();
    let vm_fd = vm.clone();
    tokio::spawn(async move {
        exited(vm_fd).await;
        if expected.load(Ordering::SeqCst) {
            tracing::debug!(pid = vm_pid, "the VM process exited");
        } else {
            tracing::warn!(pid = vm_pid, "the VM process exited unexpectedly");
        }
        let _ = dead.send(true);
    });
    for &pid in helpers {
        let fd = match pidfd(pid) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot watch a VM helper process");
                continue;
            }
        };
        let (vm, stopping) = (vm.clone(), stopping.clone());
        tokio::spawn(async move {
            exited(fd).await;
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            tracing::warn!(
                pid,
                vm = vm_pid,
                "a VM helper process exited unexpectedly: killing the VM"
            );
            if let Err(e) = kill_by_pidfd(&vm) {
                // ESRCH: the VM is gone already (its death is what made the helper exit).
                if e.raw_os_error() != Some(libc::ESRCH) {
                    tracing::warn!(pid = vm_pid, error = %e, "cannot kill the VM");
                }
            }
        });
    }
}

/// Resolves when the process behind `pidfd` has exited.
async fn exited<F: AsRawFd>(pidfd: F) {
    // SAFETY: the AsyncFd takes `pidfd` (an owned fd, or an Arc of one) and holds it for
    // as long as it is registered, so the fd stays open while registered and is
    // deregistered before the AsyncFd drops (and closes) it.
    let registered =
        unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
    match registered {
        Ok(fd) => {
            let _ = fd.readable().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot poll a pidfd");
            std::future::pending::<()>().await;
        }
    }
}

/// SIGKILL through a pidfd: it names exactly the process it was opened for, even if
/// that process has exited and its pid was reused since.
fn kill_by_pidfd(pidfd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal takes an open pidfd (borrowed for the call), a signal
    // number, a null siginfo (allowed: the kernel fills in one as kill() would) and flags
    // 0; no memory is written.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A pollable handle on a process that becomes readable when it exits (without
/// reaping it: tokio still owns the wait).
fn pidfd(pid: u32) -> std::io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    if pid <= 0 {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
    // passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by pidfd_open, is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
