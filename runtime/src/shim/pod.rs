//! The shim's VM: one sandbox, booted for the first container (a task of its own, or a
//! pod's sandbox container), joined by the pod's later containers, and destroyed when
//! the last container is deleted.
//!
//! [`Pod::boot`] is the whole of a pod's start, as a list of steps; what a failed step
//! leaves is undone in one place ([`BootParts::undo`]). Once booted, the pod watches
//! the VM process: if it dies (killed, crashed, guest panic), `dead` flips and every
//! waiter reports its process as exited instead of hanging on a vsock that will never
//! answer. It watches the VM's helpers too (virtiofsd, the vsock backend): a VM that
//! lost one cannot serve its rootfs or reach its agent any more, so it is killed and
//! the pod dies as a whole rather than hanging.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use containerd_shim_protos::api::Mount;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::Instrument;

use super::container_files::{self, WritesTo};
use super::io::StdioPaths;
use super::options::RuntimeOptions;
use super::port_forward::PortForwarder;
use super::record;
use super::spec::ContainerSpec;
use super::warm::{WarmSandbox, WarmSlot};
use super::{host_cgroup, pod_network, vm_size, ShimError};
use crate::agent_client::AgentClient;
use crate::cgroup::HostCgroup;
use crate::config::Config;
use crate::hypervisor;
use crate::network::PodNetwork;
use crate::sandbox::leftovers::Leftovers;
use crate::sandbox::Sandbox;

/// What containerd's Create carries.
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<Mount>,
    pub stdio: StdioPaths,
    pub options: RuntimeOptions,
}

pub struct Pod {
    sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    agent: AgentClient,
    vm_pid: u32,
    dead: watch::Receiver<bool>,
    stopping: Arc<AtomicBool>,
    record: Leftovers,
    bundle: PathBuf,
    sandbox_container: String,
    cgroup: std::sync::Mutex<Option<HostCgroup>>,
    network: std::sync::Mutex<Option<PodNetwork>>,
    forwarder: std::sync::Mutex<Option<PortForwarder>>,
    /// A pool VM's NIC the pod has no veth for: its tap stays while the VM runs.
    _pool_nic: Option<crate::network::PoolNic>,
}

/// The shim's one pod: empty until its first container boots the VM (or takes the
/// pool VM the shim was given), emptied when the last container is removed.
#[derive(Default)]
pub struct PodSlot {
    pod: tokio::sync::Mutex<Option<Arc<Pod>>>,
    warm: WarmSlot,
}

/// A container added to the pod, and whether adding it booted the pod's VM.
pub struct Added {
    pub pod: Arc<Pod>,
    pub booted: bool,
}

impl PodSlot {
    pub fn new(warm: WarmSlot) -> PodSlot {
        PodSlot {
            pod: tokio::sync::Mutex::default(),
            warm,
        }
    }

    /// Adds container `req` to the pod, booting the VM first when it is the pod's
    /// first container. On error the container is gone again, and so is a VM booted
    /// for it.
    pub async fn add_container(
        &self,
        req: &CreateRequest,
        spec: &ContainerSpec,
    ) -> Result<Added, ShimError> {
        let (pod, booted) = {
            let mut slot = self.pod.lock().await;
            match slot.as_ref() {
                Some(pod) => (pod.clone(), false),
                None => {
                    let warm = self.warm.lock().await.take();
                    let pod = Pod::boot(req, spec, warm).await?;
                    *slot = Some(pod.clone());
                    (pod, true)
                }
            }
        };
        if let Err(e) = pod.add_container(req, spec).await {
            self.remove_container(&req.id, booted).await;
            return Err(e);
        }
        Ok(Added { pod, booted })
    }

    /// Removes container `id` from the pod; the `last` one takes the VM with it.
    pub async fn remove_container(&self, id: &str, last: bool) {
        if last {
            self.destroy().await;
        } else if let Some(pod) = self.pod.lock().await.clone() {
            pod.remove_container(id).await;
        }
    }

    /// The running pod, for a verb on one of its containers.
    pub async fn running(&self) -> Result<Arc<Pod>, ShimError> {
        self.pod
            .lock()
            .await
            .clone()
            .ok_or_else(|| ShimError::FailedPrecondition("the sandbox VM is not running".into()))
    }

    /// The VM's pid, 0 when no VM runs.
    pub async fn vm_pid(&self) -> u32 {
        self.pod.lock().await.as_ref().map(|p| p.pid()).unwrap_or(0)
    }

    /// Stops the VM and removes all the pod made (see [`Pod::destroy`]).
    pub async fn destroy(&self) {
        let pod = self.pod.lock().await.take();
        if let Some(pod) = pod {
            pod.destroy().await;
        }
    }
}

/// What a pod's boot has made so far; [`BootParts::undo`] removes it.
#[derive(Default)]
struct BootParts {
    forwarder: Option<PortForwarder>,
    network: Option<PodNetwork>,
    /// A pool VM's NIC the pod has no veth for (kept while the VM runs).
    pool_nic: Option<crate::network::PoolNic>,
    cgroup: Option<HostCgroup>,
    sandbox: Option<Sandbox>,
}

impl BootParts {
    /// Removes what a failed boot made: the VM and its state (processes first), the
    /// pod's taps, the cgroup the shim made and joined, the record in the bundle.
    async fn undo(mut self, bundle: &Path) {
        drop(self.forwarder.take());
        if let Some(mut sandbox) = self.sandbox.take() {
            sandbox.teardown().await;
        }
        if let Some(mut network) = self.network.take() {
            if let Err(e) = network.teardown() {
                tracing::warn!(error = %e, "removing the pod's taps and tc filters");
            }
        }
        if let Some(mut cgroup) = self.cgroup.take() {
            cgroup.remove();
        }
        record::remove(bundle);
    }
}

impl Pod {
    /// Boots the VM for the pod whose first container is `req` (sized, networked and
    /// charged as its spec says), ready for containers. On error nothing is left.
    async fn boot(
        req: &CreateRequest,
        spec: &ContainerSpec,
        warm: Option<WarmSandbox>,
    ) -> Result<Arc<Pod>, ShimError> {
        let mut parts = BootParts::default();
        match boot_steps(&mut parts, req, spec, warm).await {
            Ok(()) => Pod::running(parts, req),
            Err(e) => {
                parts.undo(&req.bundle).await;
                Err(e)
            }
        }
    }

    /// The pod once booted: its record written to the bundle, its VM watched.
    fn running(parts: BootParts, req: &CreateRequest) -> Result<Arc<Pod>, ShimError> {
        let BootParts {
            forwarder,
            network,
            pool_nic,
            cgroup,
            sandbox,
        } = parts;
        let sandbox = sandbox.ok_or_else(|| ShimError::internal("the pod booted no sandbox"))?;
        let agent = sandbox
            .agent()
            .cloned()
            .ok_or_else(|| ShimError::internal("the sandbox has no agent connection"))?;
        let pids = sandbox.pids();
        let vm_pid = pids.first().copied().unwrap_or(0);
        let record = sandbox.leftovers().clone();
        record::write(&req.bundle, &record);
        let (tx, dead) = watch::channel(false);
        let stopping = Arc::new(AtomicBool::new(false));
        watch_processes(&pids, tx, stopping.clone());
        Ok(Arc::new(Pod {
            sandbox: tokio::sync::Mutex::new(Some(sandbox)),
            agent,
            vm_pid,
            dead,
            stopping,
            record,
            bundle: req.bundle.clone(),
            sandbox_container: req.id.clone(),
            cgroup: std::sync::Mutex::new(cgroup),
            network: std::sync::Mutex::new(network),
            forwarder: std::sync::Mutex::new(forwarder),
            _pool_nic: pool_nic,
        }))
    }

    /// Creates container `req` in the running VM: its files placed in the share, then
    /// the container in the guest (a later container of a pod sharing the pod's
    /// namespaces with its sandbox container). What this leaves on failure is removed
    /// by [`Pod::remove_container`].
    async fn add_container(
        &self,
        req: &CreateRequest,
        spec: &ContainerSpec,
    ) -> Result<(), ShimError> {
        let first = req.id == self.sandbox_container;
        if !first {
            self.check_member(req, spec)?;
        }
        let placed = {
            let mut sandbox = self.sandbox.lock().await;
            let sandbox = sandbox
                .as_mut()
                .ok_or_else(|| ShimError::FailedPrecondition("the pod's VM is gone".into()))?;
            let writes_to = match sandbox.has_scratch_disk() {
                true => WritesTo::ScratchDisk,
                false => WritesTo::Share,
            };
            let share = sandbox
                .share_mut()
                .ok_or_else(|| ShimError::internal("the sandbox has no share"))?;
            container_files::place(share, &req.id, &req.rootfs, &req.bundle, spec, writes_to)
                .await?
        };
        let (sandbox_container, shared) = match first {
            true => ("", Vec::new()),
            false => (self.sandbox_container.as_str(), spec.pod_namespaces()),
        };
        self.agent
            .create_pod_container(
                &req.id,
                &placed.spec,
                &placed.storages,
                &req.stdio.spec(),
                sandbox_container,
                &shared,
            )
            .instrument(tracing::info_span!("container_create", id = %req.id))
            .await?;
        Ok(())
    }

    /// A later container belongs to this pod when CRI's annotations name its sandbox.
    fn check_member(&self, req: &CreateRequest, spec: &ContainerSpec) -> Result<(), ShimError> {
        let joins = spec.annotation(super::ANNOTATION_CONTAINER_TYPE) == Some("container")
            && spec.annotation(super::ANNOTATION_SANDBOX_ID) == Some(&self.sandbox_container);
        if !joins {
            return Err(ShimError::FailedPrecondition(format!(
                "this shim runs the sandbox of {}; container {} is not part of that pod (CRI annotations {} and {})",
                self.sandbox_container,
                req.id,
                super::ANNOTATION_CONTAINER_TYPE,
                super::ANNOTATION_SANDBOX_ID
            )));
        }
        Ok(())
    }

    /// Removes container `id` from the guest (stopping it if it runs) and its files
    /// from the share. The VM stays.
    async fn remove_container(&self, id: &str) {
        if !self.is_dead() {
            if let Err(e) = self.agent.remove_container(id, 1).await {
                tracing::warn!(container = id, error = %e, "the agent could not remove the container");
            }
        }
        let mut sandbox = self.sandbox.lock().await;
        if let Some(share) = sandbox.as_mut().and_then(|s| s.share_mut()) {
            container_files::remove(share, id);
        }
    }

    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    pub fn pid(&self) -> u32 {
        self.vm_pid
    }

    pub fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }

    pub async fn died(&self) {
        let mut rx = self.dead.clone();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Stops the VM and removes everything the pod made on the host: its helpers,
    /// state dir, share mounts, taps, cgroup and the record in the bundle.
    async fn destroy(&self) {
        let Some(sandbox) = self.sandbox.lock().await.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        drop(
            self.forwarder
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        if self.is_dead() {
            let mut sandbox = sandbox;
            sandbox.teardown().await;
        } else if let Err(e) = sandbox.destroy().await {
            tracing::warn!(error = %e, "destroying the sandbox");
        }
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
        record::remove(&self.bundle);
        if self.record.state_dir.exists() {
            record::clean(&self.record);
        }
    }
}

/// A pod's boot, step by step; what each step makes goes into `parts` at once. A pool
/// VM (`warm`) is the pod's VM when it is the one the pod would boot.
async fn boot_steps(
    parts: &mut BootParts,
    req: &CreateRequest,
    spec: &ContainerSpec,
    warm: Option<WarmSandbox>,
) -> Result<(), ShimError> {
    let config = Config::load(req.options.config_path.as_deref())
        .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
    let mut vm = vm_size::sandbox_spec(&config, spec)?;
    // Read first: the host network is refused, and a pool VM fits only a pod whose
    // netns has at most the one veth it has a NIC for.
    let pod_veths = pod_network::veth_count(spec)?;
    // Before any VM process starts: they inherit the pod's cgroup from the shim.
    parts.cgroup = host_cgroup::enter(&config, spec, &mut vm, &req.bundle)?;
    let warm = fitting(
        warm,
        req.options.config_path.as_deref(),
        &config,
        &vm,
        pod_veths,
    )
    .await;
    let sandbox = match warm {
        Some(mut warm) => {
            // Its processes are in the pool VM's own cgroup: they join the pod's, whose
            // limit makes room for what they hold there, and that cgroup goes. A pod
            // without a cgroup keeps it, as its own.
            match (&parts.cgroup, warm.cgroup.take()) {
                (Some(cg), Some(mut pool_cgroup)) => {
                    // Every process there: the VM's helpers' own children too.
                    let precharged = pool_cgroup.memory_usage().unwrap_or(0);
                    cg.adopt(&pool_cgroup.members(), precharged)?;
                    pool_cgroup.remove_in_place();
                }
                (Some(cg), None) => cg.adopt(&warm.sandbox.pids(), 0)?,
                (None, pool_cgroup) => parts.cgroup = pool_cgroup,
            }
            let sandbox = parts.sandbox.insert(warm.sandbox);
            // Its NIC's tap moves into the pod's netns and is wired to the veth there.
            parts.network = match (pod_veths, warm.nic.take()) {
                (1, Some(nic)) => pod_network::adopt(spec, nic)?,
                (_, nic) => {
                    parts.pool_nic = nic;
                    pod_network::open(spec)?
                }
            };
            sandbox
        }
        None => {
            // The pod's netns wired before any VM process exists: the VM boots with
            // its taps.
            parts.network = pod_network::open(spec)?;
            vm.nics = pod_network::nics(parts.network.as_ref());
            let backend = hypervisor::select(&config)
                .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
            parts
                .sandbox
                .insert(Sandbox::create(&config, &vm, backend)?)
        }
    };
    // What a shim killed from here on leaves: in the state dir for `hull gc`, and
    // until the pod is up in the bundle for `delete`.
    if let Some(cg) = &parts.cgroup {
        sandbox.note_cgroups(cg.created())?;
    }
    if let Some(net) = &parts.network {
        let (netns, links) = net.wiring();
        sandbox.note_network(netns, links)?;
    }
    record::write(&req.bundle, sandbox.leftovers());
    if sandbox.agent().is_none() {
        // A pod's containers are mounted into the share while virtiofsd runs.
        sandbox
            .share_mut()
            .ok_or_else(|| ShimError::internal("the sandbox has no share"))?
            .make_shared()
            .map_err(|e| ShimError::Internal(e.to_string()))?;
        vm.restore = crate::template::for_sandbox(&config, &vm).await;
        sandbox.start(&config, &vm).await?;
    }
    let hostname: String = spec
        .hostname()
        .unwrap_or(&req.id)
        .chars()
        .take(64)
        .collect();
    sandbox.prepare_guest(&hostname).await?;
    let agent = sandbox
        .agent()
        .ok_or_else(|| ShimError::internal("no agent connection"))?;
    pod_network::configure_guest(agent, parts.network.as_ref()).await?;
    parts.forwarder = pod_network::forward_ports(parts.network.as_mut(), sandbox.vsock_uds());
    Ok(())
}

/// The pool VM if it is the VM the pod would boot (`vm` from `config`); otherwise it is
/// destroyed here, and the log says why the pod boots cold.
async fn fitting(
    warm: Option<WarmSandbox>,
    config_path: Option<&Path>,
    config: &Config,
    vm: &crate::sandbox::SandboxSpec,
    pod_veths: usize,
) -> Option<WarmSandbox> {
    let mut warm = warm?;
    match warm.mismatch(config_path, config, vm, pod_veths) {
        None => {
            tracing::info!(sandbox = %warm.sandbox.id(), "the pod runs in the pool VM");
            Some(warm)
        }
        Some(why) => {
            tracing::info!(sandbox = %warm.sandbox.id(), why, "the pool VM does not fit the pod: destroying it, booting the pod's own");
            warm.sandbox.teardown().await;
            if let Some(mut pool_cgroup) = warm.cgroup.take() {
                pool_cgroup.remove_in_place();
            }
            None
        }
    }
}

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
    let registered =
        // SAFETY: the AsyncFd takes `pidfd` (an owned fd, or an Arc of one) and holds it
        // for as long as it is registered, so the fd stays open while registered and is
        // deregistered before the AsyncFd drops (and closes) it.
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
