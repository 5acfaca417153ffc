//! The shim's verbs, one per Task request, each a short script over the pod
//! ([`Pod`]: the VM and what it runs) and the containers' processes ([`process`]).
//! `task.rs` translates containerd's requests into these calls; nothing here names a
//! ttrpc type, and nothing below calls back up.

use std::sync::Arc;

use containerd_shim::asynchronous::ExitSignal;

use super::events::Events;
use super::io::StdioPaths;
use super::pod::{CreateRequest, Pod};
use super::process::{self, Container, ContainerTable, Exit, Proc};
use super::spec::{self, ContainerSpec};
use super::ShimError;
use crate::agent_client::ContainerStats;

pub struct Service {
    pub events: Arc<Events>,
    exit: Arc<ExitSignal>,
    pod: tokio::sync::Mutex<Option<Arc<Pod>>>,
    containers: Arc<ContainerTable>,
}

impl Service {
    pub fn new(events: Events, exit: Arc<ExitSignal>) -> Arc<Service> {
        Arc::new(Service {
            events: Arc::new(events),
            exit,
            pod: tokio::sync::Mutex::new(None),
            containers: Arc::new(ContainerTable::default()),
        })
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        self.containers.get(id)
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

    /// Create: the first container boots the pod's VM; each container is then created
    /// in it and its outputs opened, or, failing that, removed again (the VM with it
    /// when it is the only one); TaskCreate is published.
    pub async fn create(&self, req: CreateRequest) -> Result<u32, ShimError> {
        self.containers.check_new(&req.id)?;
        let spec = ContainerSpec::load(&req.bundle)?;
        let pod = self.running_pod(&req, &spec).await?;
        let init = Proc::new("", req.stdio.clone(), None);
        let created = async {
            pod.add_container(&req, &spec).await?;
            init.open_io(&pod, &req.id, self.events.namespace()).await
        }
        .await;
        if let Err(e) = created {
            self.forget(&pod, &req.id).await;
            return Err(e);
        }
        self.containers
            .insert(Container::new(&req.id, req.bundle.clone(), init));
        self.events
            .create(
                &req.id,
                &req.bundle.to_string_lossy(),
                &req.stdio,
                pod.pid(),
            )
            .await;
        Ok(pod.pid())
    }

    /// The pod's VM: the running one, or booted for `req` (its OOM notices then
    /// watched).
    async fn running_pod(
        &self,
        req: &CreateRequest,
        spec: &ContainerSpec,
    ) -> Result<Arc<Pod>, ShimError> {
        let mut slot = self.pod.lock().await;
        if let Some(pod) = slot.as_ref() {
            return Ok(pod.clone());
        }
        let pod = Pod::boot(req, spec).await?;
        *slot = Some(pod.clone());
        process::watch_oom(
            pod.clone(),
            self.events.clone(),
            Arc::downgrade(&self.containers),
        );
        Ok(pod)
    }

    /// Removes container `id` from the pod (the guest, the share, the table); the last
    /// one takes the VM with it.
    async fn forget(&self, pod: &Pod, id: &str) {
        pod.remove_container(id).await;
        if self.containers.remove(id) {
            *self.pod.lock().await = None;
            pod.destroy().await;
        }
    }

    /// Start of the init process or of an exec; its exit is watched from then on.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        let pod = self.pod().await?;
        p.start(&pod, id, self.events.namespace()).await?;
        process::watch_exit(pod.clone(), self.events.clone(), c, p);
        if exec_id.is_empty() {
            self.events.start(id, pod.pid()).await;
        } else {
            self.events.exec_started(id, exec_id, pod.pid()).await;
        }
        Ok(pod.pid())
    }

    /// Exec: a process added to a running container, started by a later Start.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        process_json: &[u8],
    ) -> Result<(), ShimError> {
        let c = self.container(id)?;
        let process = spec::guest_process(process_json)?;
        c.add_exec(exec_id, stdio, process)?;
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
        let p = self.container(id)?.process(exec_id)?;
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
        let signal = i32::try_from(signal)
            .map_err(|_| ShimError::InvalidArgument(format!("invalid signal {signal}")))?;
        pod.agent().signal_process(id, exec_id, signal, all).await?;
        Ok(())
    }

    /// Delete of an exec (forgotten) or of the container (removed from the guest and
    /// the share; the last one takes the VM with it).
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, Exit), ShimError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        let pod = self.pod().await?;
        if p.is_started() && p.exit().is_none() && !pod.is_dead() {
            return Err(ShimError::FailedPrecondition(format!(
                "process {id}/{exec_id} is still running"
            )));
        }
        let exit = p.finish().await;
        if !exec_id.is_empty() {
            c.remove_exec(exec_id);
            return Ok((pod.pid(), exit));
        }
        c.remove_execs();
        self.forget(&pod, id).await;
        self.events
            .delete(id, pod.pid(), exit.status, exit.at.clone())
            .await;
        Ok((pod.pid(), exit))
    }

    pub async fn pause(&self, id: &str) -> Result<(), ShimError> {
        let c = self.container(id)?;
        self.pod().await?.agent().pause_container(id).await?;
        c.set_paused(true);
        self.events.paused(id).await;
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<(), ShimError> {
        let c = self.container(id)?;
        self.pod().await?.agent().resume_container(id).await?;
        c.set_paused(false);
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

    /// New resources (containerd's OCI `LinuxResources` JSON) for container `id`.
    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), ShimError> {
        self.container(id)?;
        let resources = spec::resources(resources_json)?;
        Ok(self
            .pod()
            .await?
            .agent()
            .update_container(id, &resources)
            .await?)
    }

    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ShimError> {
        self.container(id)?.process(exec_id)?;
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
        self.container(id)?.process(exec_id)?.close_stdin().await;
        Ok(())
    }

    /// containerd's Shutdown: the shim exits once no container is left (or `now`).
    pub async fn shutdown(&self, now: bool) -> bool {
        if !now && !self.containers.is_empty() {
            return false;
        }
        if let Some(pod) = self.pod.lock().await.take() {
            pod.destroy().await;
        }
        self.exit.signal();
        true
    }
}
