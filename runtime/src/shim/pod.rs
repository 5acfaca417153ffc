//! The shim's VM: one sandbox, booted for the first container (a task of its own, or a
//! pod's sandbox container) and destroyed when the last container is deleted. Watches
//! the VM process: if it dies (killed, crashed, guest panic), `dead` flips and every
//! waiter reports its process as exited instead of hanging on a vsock that will never
//! answer.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

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
        let record = Record::new(sandbox.state_dir(), pids, cgroup.as_ref());
        if let Err(e) = record.write(bundle) {
            tracing::warn!(error = %e, "cannot write the sandbox record into the bundle");
        }
        let (tx, dead) = watch::channel(false);
        let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let expected = stopping.clone();
        match pidfd(vm_pid) {
            Ok(fd) => {
                tokio::spawn(async move {
                    // SAFETY: the AsyncFd owns the pidfd (an OwnedFd nobody else holds),
                    // so it stays open while registered and is deregistered before the
                    // AsyncFd closes it on drop.
                    let interest = tokio::io::Interest::READABLE;
                    // SAFETY: see above; `fd` is moved into the AsyncFd here.
                    let registered = unsafe { AsyncFd::register_with_interest(fd, interest) };
                    if let Ok(fd) = registered {
                        let _ = fd.readable().await;
                    }
                    if expected.load(std::sync::atomic::Ordering::SeqCst) {
                        tracing::debug!(pid = vm_pid, "the VM process exited");
                    } else {
                        tracing::warn!(pid = vm_pid, "the VM process exited unexpectedly");
                    }
                    let _ = tx.send(true);
                });
            }
            Err(e) => tracing::warn!(pid = vm_pid, error = %e, "cannot watch the VM process"),
        }
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
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        if self.is_dead() {
            let mut sandbox = sandbox;
            sandbox.teardown().await;
        } else if let Err(e) = sandbox.destroy().await {
            tracing::warn!(error = %e, "destroying the sandbox");
        }
        // The VM (which held the taps open) is gone: the taps and filters go now.
        let network = self.network.lock().unwrap_or_else(|e| e.into_inner()).take();
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

/// A pollable handle on a process that becomes readable when it exits (without
/// reaping it: tokio still owns the wait).
fn pidfd(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
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
