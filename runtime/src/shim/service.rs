//! The shim's verbs, one per Task request, each a short script: the container table
//! (here), the container's spec ([`spec`]), the pod's VM ([`PodSlot`]), the container
//! and its processes ([`process`]), the events to containerd ([`Events`]). `task.rs`
//! translates containerd's requests into these calls; nothing here names a ttrpc type,
//! and nothing below calls back up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use containerd_shim::asynchronous::ExitSignal;

use super::events::Events;
use super::hooks::{self, Stage};
use super::io::StdioPaths;
use super::pod::{CreateRequest, Pod, PodSlot};
use super::process::{Container, Exit};
use super::spec::{self, ContainerSpec};
use super::warm::WarmSlot;
use super::ShimError;
use crate::agent_client::ContainerStats;

type ContainerTable = Mutex<HashMap<String, Arc<Container>>>;

pub struct Service {
    events: Arc<Events>,
    exit: Arc<ExitSignal>,
    pod: PodSlot,
    containers: Arc<ContainerTable>,
}

impl Service {
    /// `warm`: a booted pool VM for the pod's first container (empty without one).
    pub fn new(events: Events, exit: Arc<ExitSignal>, warm: WarmSlot) -> Arc<Service> {
        Arc::new(Service {
            events: Arc::new(events),
            exit,
            pod: PodSlot::new(warm),
            containers: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Create: the container added to the pod (the first one boots the pod's VM,
    /// whose OOM notices are then watched), its outputs opened, its prestart,
    /// createRuntime and createContainer hooks run, TaskCreate published. A failure
    /// leaves no trace of the container (nor of a VM booted for it).
    pub async fn create(&self, req: CreateRequest) -> Result<u32, ShimError> {
        if self.table().contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!(
                "container {} already exists",
                req.id
            )));
        }
        let spec = ContainerSpec::load(&req.bundle)?;
        let added = self.pod.add_container(&req, &spec).await?;
        if added.booted {
            self.watch_oom(added.pod.clone());
        }
        let pod = added.pod;
        let namespace = self.events.namespace();
        let opened = Container::open(
            &req.id,
            req.bundle.clone(),
            spec.hooks.clone(),
            req.stdio.clone(),
            &pod,
            namespace,
        )
        .await;
        let container = match opened {
            Ok(c) => c,
            Err(e) => {
                self.forget(&req.id).await;
                return Err(e);
            }
        };
        let state = hooks::State {
            id: &req.id,
            pid: pod.pid(),
            bundle: &req.bundle,
        };
        for stage in [
            Stage::Prestart,
            Stage::CreateRuntime,
            Stage::CreateContainer,
        ] {
            if let Err(e) = container.hooks.run(stage, &state).await {
                self.forget(&req.id).await;
                return Err(e.into());
            }
        }
        self.table().insert(req.id.clone(), container);
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

    /// Start of the init process (after its startContainer hooks, before its
    /// poststart ones) or of an exec; its exit is watched from then on.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let c = self.container(id)?;
        let pod = self.pod().await?;
        let state = hooks::State {
            id,
            pid: pod.pid(),
            bundle: &c.bundle,
        };
        if exec_id.is_empty() {
            c.hooks.run(Stage::StartContainer, &state).await?;
        }
        c.start(exec_id, &pod, &self.events).await?;
        if exec_id.is_empty() {
            c.hooks.run_logged(Stage::Poststart, &state).await;
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
        let c = self.container(id)?;
        let pod = self.pod().await?;
        c.signal(exec_id, &pod, signal, all).await
    }

    /// Delete of an exec (forgotten) or of the container (removed from the guest and
    /// the share, the last one taking the VM with it; then its poststop hooks).
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, Exit), ShimError> {
        let c = self.container(id)?;
        let pod = self.pod().await?;
        let exit = c.remove_process(exec_id, &pod).await?;
        if exec_id.is_empty() {
            self.forget(id).await;
            let state = hooks::State {
                id,
                pid: pod.pid(),
                bundle: &c.bundle,
            };
            c.hooks.run_logged(Stage::Poststop, &state).await;
            self.events
                .delete(id, pod.pid(), exit.status, exit.at.clone())
                .await;
        }
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
        self.container(id)?.close_stdin(exec_id).await
    }

    /// containerd's Shutdown: the shim exits once no container is left (or `now`).
    pub async fn shutdown(&self, now: bool) -> bool {
        if !now && !self.table().is_empty() {
            return false;
        }
        self.pod.destroy().await;
        self.exit.signal();
        true
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        self.table()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id} not found")))
    }

    pub async fn vm_pid(&self) -> u32 {
        self.pod.vm_pid().await
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn pod(&self) -> Result<Arc<Pod>, ShimError> {
        self.pod.running().await
    }

    /// Publishes TaskOOM for the agent's OOM notices about the containers in the
    /// table, until the VM dies or the shim's service is gone.
    fn watch_oom(&self, pod: Arc<Pod>) {
        let table = Arc::downgrade(&self.containers);
        let events = self.events.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    r = pod.agent().next_oom_event() => r,
                    _ = pod.died() => return,
                };
                let cid = match next {
                    Ok(cid) => cid,
                    Err(e) => {
                        tracing::debug!(error = %e, "OOM watch ended");
                        return;
                    }
                };
                let Some(table) = table.upgrade() else {
                    return;
                };
                let known = table
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&cid);
                if known {
                    events.oom(&cid).await;
                } else {
                    tracing::debug!(container = %cid, "OOM event for an unknown container");
                }
            }
        });
    }

    /// Removes container `id` from the table and the pod (the guest, the share); the
    /// last one takes the VM with it.
    async fn forget(&self, id: &str) {
        let last = {
            let mut table = self.table();
            table.remove(id);
            table.is_empty()
        };
        self.pod.remove_container(id, last).await;
    }
}
