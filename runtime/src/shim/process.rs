//! The shim's containers and their processes (init and execs), and the watchers that
//! turn what happens in the guest into containerd's events.
//!
//! A process goes Created -> Running -> Stopped. Its exit watcher (spawned at start)
//! waits for the agent's WaitProcess, or for the VM to die, then drains the output,
//! publishes TaskOOM when the agent says the process was OOM-killed, records the exit
//! and publishes TaskExit: in that order, so `ctr` never misses output and containerd's
//! CRI says OOMKilled.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use oci_spec::runtime::Process;
use tokio::sync::watch;
use tracing::Instrument;

use super::events::Events;
use super::hooks::ContainerHooks;
use super::io::{ProcessIo, StdioPaths};
use super::pod::Pod;
use super::ShimError;

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
    /// The exec's process (guest form), until it is started.
    exec_spec: Mutex<Option<Process>>,
    started: Mutex<bool>,
    exit_tx: watch::Sender<Option<Exit>>,
    io: tokio::sync::Mutex<Option<ProcessIo>>,
}

impl Proc {
    fn new(exec_id: &str, stdio: StdioPaths, exec_spec: Option<Process>) -> Arc<Proc> {
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

    /// Opens the process's outputs (containerd's FIFOs <- the agent's streams) before
    /// it runs, so nothing it writes is lost.
    async fn open_io(&self, pod: &Pod, cid: &str, namespace: &str) -> Result<(), ShimError> {
        let io = ProcessIo::start(pod.agent(), cid, &self.exec_id, &self.stdio, namespace).await?;
        *self.io.lock().await = Some(io);
        Ok(())
    }

    /// Starts the process in the guest: the container's init, or the exec with its
    /// outputs opened first (the exec's first byte needs a reader).
    async fn start(&self, pod: &Pod, cid: &str, namespace: &str) -> Result<(), ShimError> {
        if self.is_started() {
            return Err(ShimError::FailedPrecondition(format!(
                "process {cid}/{} was already started",
                self.exec_id
            )));
        }
        if self.exec_id.is_empty() {
            pod.agent()
                .start_container(cid)
                .instrument(tracing::info_span!("container_start", id = cid))
                .await?;
        } else {
            let process = lock(&self.exec_spec)
                .take()
                .ok_or_else(|| ShimError::internal("the exec has no process spec"))?;
            self.open_io(pod, cid, namespace).await?;
            pod.agent()
                .exec_process(cid, &self.exec_id, &process, &self.stdio.spec())
                .await?;
        }
        *lock(&self.started) = true;
        Ok(())
    }

    /// The exit, or (never started, or its VM gone) status 0 now; the outputs closed.
    async fn finish(&self) -> Exit {
        if let Some(mut io) = self.io.lock().await.take() {
            io.shutdown().await;
        }
        self.exit().unwrap_or(Exit {
            status: 0,
            at: now(),
        })
    }

    async fn close_stdin(&self) {
        if let Some(io) = self.io.lock().await.as_mut() {
            io.close_stdin().await;
        }
    }
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// The spec's OCI hooks (run by the service at Start and Delete).
    pub hooks: ContainerHooks,
    pub init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    paused: Mutex<bool>,
}

impl Container {
    /// Container `id`, created in `pod`'s guest: its init process, with its outputs
    /// opened now so nothing it writes before Start is lost.
    pub async fn open(
        id: &str,
        bundle: PathBuf,
        hooks: ContainerHooks,
        stdio: StdioPaths,
        pod: &Pod,
        namespace: &str,
    ) -> Result<Arc<Container>, ShimError> {
        let init = Proc::new("", stdio, None);
        init.open_io(pod, id, namespace).await?;
        Ok(Arc::new(Container {
            id: id.to_string(),
            bundle,
            hooks,
            init,
            execs: Mutex::new(HashMap::new()),
            paused: Mutex::new(false),
        }))
    }

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

    /// Adds exec `exec_id` (not started) to a running container.
    pub fn add_exec(
        &self,
        exec_id: &str,
        stdio: StdioPaths,
        process: Process,
    ) -> Result<(), ShimError> {
        if self.init.exit().is_some() {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not running",
                self.id
            )));
        }
        let mut execs = lock(&self.execs);
        if execs.contains_key(exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {exec_id} already exists in container {}",
                self.id
            )));
        }
        execs.insert(
            exec_id.to_string(),
            Proc::new(exec_id, stdio, Some(process)),
        );
        Ok(())
    }

    /// Starts process `exec_id` (empty: the init) in the guest and watches it to its
    /// exit.
    pub async fn start(
        self: &Arc<Self>,
        exec_id: &str,
        pod: &Arc<Pod>,
        events: &Arc<Events>,
    ) -> Result<(), ShimError> {
        let p = self.process(exec_id)?;
        p.start(pod, &self.id, events.namespace()).await?;
        watch_exit(pod.clone(), events.clone(), self.clone(), p);
        Ok(())
    }

    /// Sends `signal` to process `exec_id` (with `all`, to every process of the
    /// container).
    pub async fn signal(
        &self,
        exec_id: &str,
        pod: &Pod,
        signal: u32,
        all: bool,
    ) -> Result<(), ShimError> {
        let p = self.process(exec_id)?;
        if p.exit().is_some() {
            return Err(ShimError::NotFound(format!(
                "process {}/{exec_id} has already exited",
                self.id
            )));
        }
        if pod.is_dead() {
            return Err(ShimError::NotFound(format!(
                "the VM of container {} is gone",
                self.id
            )));
        }
        let signal = i32::try_from(signal)
            .map_err(|_| ShimError::InvalidArgument(format!("invalid signal {signal}")))?;
        pod.agent()
            .signal_process(&self.id, exec_id, signal, all)
            .await?;
        Ok(())
    }

    /// Forgets process `exec_id` once it has exited (or never started, or lost its
    /// VM): its outputs closed; the init takes the execs with it. Returns its exit.
    pub async fn remove_process(&self, exec_id: &str, pod: &Pod) -> Result<Exit, ShimError> {
        let p = self.process(exec_id)?;
        if p.is_started() && p.exit().is_none() && !pod.is_dead() {
            return Err(ShimError::FailedPrecondition(format!(
                "process {}/{exec_id} is still running",
                self.id
            )));
        }
        let exit = p.finish().await;
        if exec_id.is_empty() {
            lock(&self.execs).clear();
        } else {
            lock(&self.execs).remove(exec_id);
        }
        Ok(exit)
    }

    pub async fn close_stdin(&self, exec_id: &str) -> Result<(), ShimError> {
        self.process(exec_id)?.close_stdin().await;
        Ok(())
    }

    pub fn set_paused(&self, paused: bool) {
        *lock(&self.paused) = paused;
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

/// Watches process `p` of container `c` to its exit: waits for the agent's
/// WaitProcess or the VM's death, drains the output (within a deadline: a process the
/// exit left behind may hold it open), publishes TaskOOM if the agent says the process
/// was OOM-killed, records the exit and publishes TaskExit.
fn watch_exit(pod: Arc<Pod>, events: Arc<Events>, c: Arc<Container>, p: Arc<Proc>) {
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
            events.oom(&c.id).await;
        }
        let exit = Exit { status, at: now() };
        p.exit_tx.send_replace(Some(exit.clone()));
        tracing::info!(container = %c.id, exec = %p.exec_id, status, "process exited");
        events
            .exit(&c.id, &p.exec_id, pod.pid(), status, exit.at)
            .await;
    });
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
