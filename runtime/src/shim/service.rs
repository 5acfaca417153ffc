//! The shim's state and operations: the containers of the task or pod, their
//! processes (init and execs) and the VM they run in. `task.rs` translates containerd's
//! requests into these calls; nothing here names a ttrpc type.
//!
//! A process goes Created -> Running -> Stopped. Its waiter (spawned at start) waits
//! for the agent's WaitProcess, or for the VM to die, then drains the output, records
//! the exit and publishes TaskExit: in that order, so `ctr` never misses output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::api::Mount;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;
use tracing::Instrument;

use super::events::Events;
use super::io::{ProcessIo, StdioPaths};
use super::options::RuntimeOptions;
use super::pod::Pod;
use super::record::Record;
use super::spec::HostSpec;
use super::{rootfs, ShimError};
use crate::agent_client::ContainerStats;
use crate::config::Config;
use crate::hypervisor;
use crate::sandbox::{Sandbox, SandboxSpec};

/// Exit status reported for processes whose VM died under them.
pub const VM_DIED_STATUS: u32 = 255;

/// How long the output of an exited process may take to reach its end before the exit
/// is reported anyway (what is still buffered in the guest is small: the agent's
/// pipes are pulled, so a writer cannot run far ahead of the shim).
const OUTPUT_DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub status: u32,
    pub at: Timestamp,
}

/// One process: a container's init (`exec_id` empty) or an exec.
pub struct Proc {
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// The exec's process JSON (guest form), until it is started.
    exec_spec: Mutex<Option<Vec<u8>>>,
    started: Mutex<bool>,
    exit_tx: watch::Sender<Option<Exit>>,
    io: tokio::sync::Mutex<Option<ProcessIo>>,
}

impl Proc {
    fn new(exec_id: &str, stdio: StdioPaths, exec_spec: Option<Vec<u8>>) -> Arc<Proc> {
        Arc::new(Proc {
            exec_id: exec_id.to_string(),
            stdio,
            exec_spec: Mutex::new(exec_spec),
            started: Mutex::new(false),
            exit_tx: watch::channel(None).0,
            io: tokio::sync::Mutex::new(None),
        })
    }

    pub fn exit(&self) -> Option<Exit> {
        self.exit_tx.borrow().clone()
    }

    pub fn is_started(&self) -> bool {
        self.started.lock().map(|s| *s).unwrap_or(true)
    }

    /// Resolves with the exit once there is one.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit_tx.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                return Exit {
                    status: VM_DIED_STATUS,
                    at: now(),
                };
            }
        }
    }
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    paused: Mutex<bool>,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Result<Arc<Proc>, ShimError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            ShimError::NotFound(format!(
                "process {exec_id} of container {} not found",
                self.id
            ))
        })
    }

    pub fn status(&self, p: &Proc) -> Status {
        if p.exit().is_some() {
            Status::Stopped
        } else if !p.is_started() {
            Status::Created
        } else if p.exec_id.is_empty() && *lock(&self.paused) {
            Status::Paused
        } else {
            Status::Running
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = d.as_secs() as i64;
    t.nanos = d.subsec_nanos() as i32;
    t
}

/// What containerd's Create carries.
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<Mount>,
    pub stdio: StdioPaths,
    pub options: RuntimeOptions,
}

pub struct Service {
    pub events: Events,
    exit: Arc<ExitSignal>,
    pod: tokio::sync::Mutex<Option<Arc<Pod>>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

impl Service {
    pub fn new(events: Events, exit: Arc<ExitSignal>) -> Arc<Service> {
        Arc::new(Service {
            events,
            exit,
            pod: tokio::sync::Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
        })
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id} not found")))
    }

    async fn pod(&self) -> Result<Arc<Pod>, ShimError> {
        self.pod
            .lock()
            .await
            .clone()
            .ok_or_else(|| ShimError::FailedPrecondition("the sandbox VM is not running".into()))
    }

    pub async fn vm_pid(&self) -> u32 {
        self.pod.lock().await.as_ref().map(|p| p.pid()).unwrap_or(0)
    }

    /// Create: the first container boots the VM with its rootfs already in the share.
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<u32, ShimError> {
        if lock(&self.containers).contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!(
                "container {} already exists",
                req.id
            )));
        }
        let spec = HostSpec::load(&req.bundle)?;
        spec.check_node_namespaces()?;
        let mut pod_slot = self.pod.lock().await;
        let pod = match pod_slot.clone() {
            Some(pod) => {
                drop(pod_slot);
                let joins = spec.annotation(super::ANNOTATION_CONTAINER_TYPE) == Some("container")
                    && spec.annotation(super::ANNOTATION_SANDBOX_ID)
                        == Some(pod.sandbox_container());
                if !joins {
                    return Err(ShimError::FailedPrecondition(format!(
                        "this shim runs the sandbox of {}; container {} is not part of that pod (CRI annotations {} and {})",
                        pod.sandbox_container(),
                        req.id,
                        super::ANNOTATION_CONTAINER_TYPE,
                        super::ANNOTATION_SANDBOX_ID
                    )));
                }
                self.join(&req, &spec, &pod).await?;
                pod
            }
            None => {
                let pod = self.boot(&req, &spec).await?;
                *pod_slot = Some(pod.clone());
                drop(pod_slot);
                self.spawn_oom_watch(pod.clone());
                pod
            }
        };
        let init = Proc::new("", req.stdio.clone(), None);
        // Outputs are opened now so nothing the process writes before Start is lost.
        match ProcessIo::start(
            pod.agent(),
            &req.id,
            "",
            &req.stdio,
            self.events.namespace(),
        )
        .await
        {
            Ok(io) => *init.io.lock().await = Some(io),
            Err(e) => {
                self.forget_failed(&pod, &req.id).await;
                return Err(e);
            }
        }
        let c = Arc::new(Container {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            init,
            execs: Mutex::new(HashMap::new()),
            paused: Mutex::new(false),
        });
        lock(&self.containers).insert(req.id.clone(), c);
        let pid = pod.pid();
        self.events
            .create(&req.id, &req.bundle.to_string_lossy(), &req.stdio, pid)
            .await;
        Ok(pid)
    }

    /// Boots the VM for the first container, its rootfs and mounts already in the share.
    async fn boot(&self, req: &CreateRequest, spec: &HostSpec) -> Result<Arc<Pod>, ShimError> {
        let config = Config::load(req.options.config_path.as_deref())
            .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        let backend = hypervisor::select(&config)
            .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
        let mut sandbox_spec = sandbox_spec(&config, spec)?;
        // The pod's netns wired first: a network hull cannot wire is refused before any
        // VM process exists (and what was made is removed when `network` drops).
        let network = super::network::open(spec)?;
        sandbox_spec.nics = super::network::nics(network.as_ref());
        // Before any VM process starts: they inherit the pod's cgroup from the shim.
        let created = super::host_cgroup::enter(&config, spec, &mut sandbox_spec, &req.bundle)
            .and_then(|cgroup| Ok((Sandbox::create(&config, &sandbox_spec, backend)?, cgroup)));
        let (mut sandbox, cgroup) = match created {
            Ok(made) => made,
            Err(e) => {
                // (A cgroup made on the way went with its value.)
                Record::remove(&req.bundle);
                return Err(e);
            }
        };
        // Until the pod is up, a crashed shim leaves `delete` the state dir and cgroup.
        let early = Record::new(sandbox.state_dir(), Vec::new(), cgroup.as_ref());
        if let Err(e) = early.write(&req.bundle) {
            tracing::warn!(error = %e, "cannot write the sandbox record into the bundle");
        }
        let booted = async {
            let share = sandbox
                .share_mut()
                .ok_or_else(|| ShimError::internal("the sandbox has no share"))?;
            // A pod's later containers are mounted while virtiofsd runs.
            share
                .make_shared()
                .map_err(|e| ShimError::Internal(e.to_string()))?;
            let (host_dir, rootfs_guest) = rootfs::mount(
                share,
                &req.id,
                &req.rootfs,
                &req.bundle,
                spec.root_path(),
                false,
            )
            .await?;
            let json = spec.to_guest(&req.id, &rootfs_guest, share)?;
            let _ = std::fs::write(host_dir.join("config.json"), &json);
            sandbox.start(&config, &sandbox_spec).await?;
            let hostname = spec
                .hostname()
                .unwrap_or(&req.id)
                .chars()
                .take(64)
                .collect::<String>();
            sandbox.prepare_guest(&hostname).await?;
            let agent = sandbox
                .agent()
                .cloned()
                .ok_or_else(|| ShimError::internal("no agent connection"))?;
            super::network::configure_guest(&agent, network.as_ref()).await?;
            agent
                .create_container(&req.id, json, &req.stdio.spec())
                .instrument(tracing::info_span!("container_create", id = %req.id))
                .await?;
            Ok::<_, ShimError>(())
        }
        .await;
        if let Err(e) = booted {
            sandbox.teardown().await;
            drop(sandbox);
            if let Some(mut cg) = cgroup {
                cg.remove();
            }
            Record::remove(&req.bundle);
            return Err(e);
        }
        Ok(Arc::new(Pod::new(
            sandbox,
            &req.bundle,
            &req.id,
            cgroup,
            network,
        )?))
    }

    /// Creates a later container of the pod in its running VM.
    async fn join(
        &self,
        req: &CreateRequest,
        spec: &HostSpec,
        pod: &Arc<Pod>,
    ) -> Result<(), ShimError> {
        let json = {
            let mut guard = pod.lock_sandbox().await;
            let share = guard
                .as_mut()
                .and_then(|s| s.share_mut())
                .ok_or_else(|| ShimError::FailedPrecondition("the pod's VM is gone".into()))?;
            let prepared = async {
                let (host_dir, rootfs_guest) = rootfs::mount(
                    share,
                    &req.id,
                    &req.rootfs,
                    &req.bundle,
                    spec.root_path(),
                    false,
                )
                .await?;
                let json = spec.to_guest(&req.id, &rootfs_guest, share)?;
                let _ = std::fs::write(host_dir.join("config.json"), &json);
                Ok::<_, ShimError>(json)
            }
            .await;
            match prepared {
                Ok(json) => json,
                Err(e) => {
                    rootfs::unmount(share, &req.id);
                    return Err(e);
                }
            }
        };
        let created = pod
            .agent()
            .create_pod_container(
                &req.id,
                json,
                &req.stdio.spec(),
                pod.sandbox_container(),
                &spec.pod_namespaces(),
            )
            .instrument(tracing::info_span!("container_create", id = %req.id))
            .await;
        if let Err(e) = created {
            self.forget_failed(pod, &req.id).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Undoes a create that failed after the container reached the VM.
    async fn forget_failed(&self, pod: &Arc<Pod>, id: &str) {
        let _ = pod.agent().remove_container(id, 1).await;
        pod.with_sandbox(|s| {
            if let Some(share) = s.share_mut() {
                rootfs::unmount(share, id);
            }
        })
        .await;
        if lock(&self.containers).is_empty() {
            *self.pod.lock().await = None;
            pod.destroy().await;
        }
    }

    /// Start of the init process or of an exec.
    pub async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        let pod = self.pod().await?;
        if p.is_started() {
            return Err(ShimError::FailedPrecondition(format!(
                "process {id}/{exec_id} was already started"
            )));
        }
        let agent = pod.agent().clone();
        if exec_id.is_empty() {
            agent
                .start_container(id)
                .instrument(tracing::info_span!("container_start", id))
                .await?;
        } else {
            let json = lock(&p.exec_spec)
                .take()
                .ok_or_else(|| ShimError::internal("the exec has no process spec"))?;
            // Outputs first: the exec's first byte needs a reader.
            let io =
                ProcessIo::start(&agent, id, exec_id, &p.stdio, self.events.namespace()).await?;
            *p.io.lock().await = Some(io);
            agent
                .exec_process(id, exec_id, json, &p.stdio.spec())
                .await?;
        }
        *lock(&p.started) = true;
        self.spawn_waiter(pod.clone(), c.clone(), p.clone());
        let pid = pod.pid();
        if exec_id.is_empty() {
            self.events.start(id, pid).await;
        } else {
            self.events.exec_started(id, exec_id, pid).await;
        }
        Ok(pid)
    }

    fn spawn_waiter(self: &Arc<Self>, pod: Arc<Pod>, c: Arc<Container>, p: Arc<Proc>) {
        let svc = self.clone();
        tokio::spawn(async move {
            let agent = pod.agent().clone();
            let (status, oom_killed) = tokio::select! {
                r = agent.wait_process(&c.id, &p.exec_id) => match r {
                    Ok(e) => (u32::try_from(e.status).unwrap_or(VM_DIED_STATUS), e.oom_killed),
                    Err(e) => {
                        tracing::warn!(container = %c.id, exec = %p.exec_id, error = %e, "waiting for the process failed");
                        (VM_DIED_STATUS, false)
                    }
                },
                _ = pod.died() => (VM_DIED_STATUS, false),
            };
            // The exit counts once the output is drained (or the VM is gone), within a
            // deadline: a process the exit left behind may hold the output open.
            if let Some(io) = p.io.lock().await.as_mut() {
                tokio::select! {
                    _ = io.drain() => {}
                    _ = pod.died() => io.abort(),
                    _ = tokio::time::sleep(OUTPUT_DRAIN_DEADLINE) => {
                        tracing::warn!(container = %c.id, exec = %p.exec_id, deadline = ?OUTPUT_DRAIN_DEADLINE,
                            "the process exited but its output did not end: something it left holds it open; reporting the exit");
                        io.abort();
                    }
                }
            }
            // containerd's CRI says OOMKilled for a container that had a TaskOOM.
            if oom_killed {
                svc.events.oom(&c.id).await;
            }
            let exit = Exit { status, at: now() };
            p.exit_tx.send_replace(Some(exit.clone()));
            tracing::info!(container = %c.id, exec = %p.exec_id, status, "process exited");
            svc.events
                .exit(&c.id, &p.exec_id, pod.pid(), status, exit.at)
                .await;
        });
    }

    fn spawn_oom_watch(self: &Arc<Self>, pod: Arc<Pod>) {
        let svc = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    r = pod.agent().next_oom_event() => r,
                    _ = pod.died() => return,
                };
                let Some(svc) = svc.upgrade() else { return };
                match next {
                    Ok(cid) if svc.container(&cid).is_ok() => svc.events.oom(&cid).await,
                    Ok(cid) => {
                        tracing::debug!(container = %cid, "OOM event for an unknown container")
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "OOM watch ended");
                        return;
                    }
                }
            }
        });
    }

    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        process_json: &[u8],
    ) -> Result<(), ShimError> {
        let c = self.container(id)?;
        if c.init.exit().is_some() {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let json = super::spec::guest_process(process_json)?;
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec {exec_id} already exists in container {id}"
                )));
            }
            execs.insert(exec_id.to_string(), Proc::new(exec_id, stdio, Some(json)));
        }
        self.events.exec_added(id, exec_id).await;
        Ok(())
    }

    pub async fn kill(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ShimError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        if p.exit().is_some() {
            return Err(ShimError::NotFound(format!(
                "process {id}/{exec_id} has already exited"
            )));
        }
        let pod = self.pod().await?;
        if pod.is_dead() {
            return Err(ShimError::NotFound(format!(
                "the VM of container {id} is gone"
            )));
        }
        let sig = i32::try_from(signal)
            .map_err(|_| ShimError::InvalidArgument(format!("invalid signal {signal}")))?;
        pod.agent().signal_process(id, exec_id, sig, all).await?;
        Ok(())
    }

    /// Delete of an exec (forgotten) or of the container (removed from the guest, its
    /// mounts undone; the last one takes the VM with it).
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, Exit), ShimError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        let pod = self.pod().await?;
        if p.is_started() && p.exit().is_none() && !pod.is_dead() {
            return Err(ShimError::FailedPrecondition(format!(
                "process {id}/{exec_id} is still running"
            )));
        }
        let exit = p.exit().unwrap_or(Exit {
            status: 0,
            at: now(),
        });
        if let Some(mut io) = p.io.lock().await.take() {
            io.shutdown().await;
        }
        if !exec_id.is_empty() {
            lock(&c.execs).remove(exec_id);
            return Ok((pod.pid(), exit));
        }
        for e in lock(&c.execs).drain() {
            drop(e);
        }
        if !pod.is_dead() {
            // Created but never started: the agent stops it.
            if let Err(e) = pod.agent().remove_container(id, 1).await {
                tracing::warn!(container = id, error = %e, "the agent could not remove the container");
            }
        }
        pod.with_sandbox(|s| {
            if let Some(share) = s.share_mut() {
                rootfs::unmount(share, id);
            }
        })
        .await;
        let last = {
            let mut cs = lock(&self.containers);
            cs.remove(id);
            cs.is_empty()
        };
        if last {
            *self.pod.lock().await = None;
            pod.destroy().await;
        }
        self.events
            .delete(id, pod.pid(), exit.status, exit.at.clone())
            .await;
        Ok((pod.pid(), exit))
    }

    pub async fn pause(&self, id: &str) -> Result<(), ShimError> {
        let c = self.container(id)?;
        self.pod().await?.agent().pause_container(id).await?;
        *lock(&c.paused) = true;
        self.events.paused(id).await;
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<(), ShimError> {
        let c = self.container(id)?;
        self.pod().await?.agent().resume_container(id).await?;
        *lock(&c.paused) = false;
        self.events.resumed(id).await;
        Ok(())
    }

    pub async fn pids(&self, id: &str) -> Result<Vec<(i32, String)>, ShimError> {
        self.container(id)?;
        Ok(self.pod().await?.agent().list_processes(id).await?)
    }

    pub async fn stats(&self, id: &str) -> Result<ContainerStats, ShimError> {
        self.container(id)?;
        Ok(self.pod().await?.agent().stats_container(id).await?)
    }

    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<(), ShimError> {
        self.container(id)?;
        Ok(self
            .pod()
            .await?
            .agent()
            .update_container(id, resources_json)
            .await?)
    }

    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ShimError> {
        let c = self.container(id)?;
        c.process(exec_id)?;
        let rows = u16::try_from(height).unwrap_or(u16::MAX);
        let cols = u16::try_from(width).unwrap_or(u16::MAX);
        Ok(self
            .pod()
            .await?
            .agent()
            .resize_tty(id, exec_id, rows, cols)
            .await?)
    }

    pub async fn close_io(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        if let Some(io) = p.io.lock().await.as_mut() {
            io.close_stdin().await;
        }
        Ok(())
    }

    /// containerd's Shutdown: the shim exits once no container is left (or `now`).
    pub async fn shutdown(&self, now: bool) -> bool {
        if !now && !lock(&self.containers).is_empty() {
            return false;
        }
        if let Some(pod) = self.pod.lock().await.take() {
            pod.destroy().await;
        }
        self.exit.signal();
        true
    }
}

/// CRI's pod-level resources on the sandbox container (containerd 1.7+).
pub const ANNOTATION_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
pub const ANNOTATION_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const ANNOTATION_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// The smallest guest hull boots (kernel, agent, a small container).
pub const MIN_GUEST_MIB: u32 = 64;

/// The VM for a task or pod: share attached; memory = limit + overhead (never below the
/// config's size) and vCPUs from the CPU quota, `hull run`'s rule, from the pod's
/// resources when CRI gives them, else the container's. With a pod memory limit the VM
/// is never larger than that limit: a VM sized above its pod's cgroup gets the VMM
/// OOM-killed on the host. The host's own limits (the pod's cgroup and its parents) are
/// applied on top by [`super::host_cgroup::enter`].
pub fn sandbox_spec(config: &Config, spec: &HostSpec) -> Result<SandboxSpec, ShimError> {
    let num = |key: &str| {
        spec.annotation(key)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v > 0)
    };
    let pod_memory = num(ANNOTATION_SANDBOX_MEMORY).map(|v| v as u64);
    let pod_cpus = match (
        num(ANNOTATION_SANDBOX_CPU_QUOTA),
        num(ANNOTATION_SANDBOX_CPU_PERIOD),
    ) {
        (Some(q), Some(p)) => Some(q as f64 / p as f64),
        _ => None,
    };
    let mut s = crate::run::prepare::sandbox_spec(
        config,
        pod_memory.or(spec.memory_limit()),
        pod_cpus.or(spec.cpus()),
        false,
    );
    if let Some(limit) = pod_memory {
        let limit_mib = u32::try_from(limit >> 20).unwrap_or(u32::MAX);
        if limit_mib < MIN_GUEST_MIB {
            return Err(ShimError::InvalidArgument(format!(
                "the pod's memory limit ({limit} bytes, {ANNOTATION_SANDBOX_MEMORY}) is below the smallest VM hull boots ({MIN_GUEST_MIB} MiB)"
            )));
        }
        s.memory_mib = s.memory_mib.min(limit_mib);
    }
    Ok(s)
}

/// The bundle a shim was started in (its working directory).
pub fn bundle_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| Path::new(".").to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(annotations: serde_json::Value, memory: Option<i64>) -> HostSpec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "annotations": annotations,
            "linux": {}
        });
        if let Some(m) = memory {
            v["linux"]["resources"] = serde_json::json!({"memory": {"limit": m}});
        }
        HostSpec::parse(&serde_json::to_vec(&v).expect("json")).expect("spec")
    }

    #[test]
    fn vm_size_from_pod_or_container_never_above_the_pod_limit() {
        let config = Config::default();
        let base = config.guest.memory_mib;
        let s = sandbox_spec(&config, &spec(serde_json::json!({}), None)).expect("plain");
        assert_eq!(s.memory_mib, base);
        // A container limit: limit + overhead.
        let s =
            sandbox_spec(&config, &spec(serde_json::json!({}), Some(512 << 20))).expect("limit");
        assert_eq!(s.memory_mib, 512 + 128);
        // A pod limit: the VM fits in it, whatever the config's default.
        let pod = |bytes: u64| {
            serde_json::json!({ANNOTATION_SANDBOX_MEMORY: bytes.to_string(),
            ANNOTATION_SANDBOX_CPU_QUOTA: "250000", ANNOTATION_SANDBOX_CPU_PERIOD: "100000"})
        };
        let s = sandbox_spec(&config, &spec(pod(1 << 30), None)).expect("pod 1G");
        assert_eq!((s.memory_mib, s.vcpus), (1024, 3));
        let s = sandbox_spec(&config, &spec(pod(128 << 20), None)).expect("pod 128M");
        assert_eq!(s.memory_mib, 128);
        let e = sandbox_spec(&config, &spec(pod(16 << 20), None)).expect_err("too small");
        assert!(e.to_string().contains(ANNOTATION_SANDBOX_MEMORY), "{e}");
    }
}
