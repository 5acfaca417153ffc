//! A sandbox is one VM with its agent: it owns the hypervisor backend, the agent
//! client and the VM's state dir, and is the only place that knows the boot sequence:
//!
//! 1. state dir, and a listener for the agent's announcement (`vsock.sock_1025`);
//! 2. the backend launches the VM (console read from the first byte);
//! 3. wait, stage by stage, for the kernel banner, the agent's first console line and
//!    its announcement, failing with the stage that never came and the console tail;
//! 4. only then dial the agent (polling earlier can break vhost-device-vsock) and check
//!    its health.
//!
//! Whatever fails, and whenever the future is dropped, every process is killed and the
//! state dir removed (the backend's processes are kill-on-drop; `StateDir` removes
//! itself on drop).

mod boot;
pub mod leftovers;
pub mod record;
pub mod scratch;
pub mod share;
pub mod state_dir;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::agent_client::{AgentClient, AgentError, AgentVersion, StorageSpec, VsockError};
use crate::config::Config;
use crate::hypervisor::{Console, Hypervisor, HypervisorError};
use crate::jail::{Jail, JailError};
pub use boot::{BootReport, BootStage};
use share::{Share, ShareError};
use state_dir::StateDir;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot create the VM state dir under {base}: {source}")]
    StateDir {
        base: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Hypervisor(#[from] HypervisorError),
    #[error("{0}")]
    Listener(#[from] VsockError),
    #[error("{0}")]
    Agent(#[from] AgentError),
    #[error("{0}")]
    Share(#[from] ShareError),
    #[error("{0}")]
    Jail(#[from] JailError),
    #[error("{0}")]
    Record(#[from] record::RecordError),
    #[error("{0}")]
    Scratch(#[from] scratch::ScratchError),
    #[error("{0}")]
    Leftovers(#[from] leftovers::LeftoversError),
    #[error("cannot read the agent policy {path} ([policy] file): {source}")]
    Policy {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a sandbox named {0:?} already exists (pick another --name)")]
    NameTaken(String),
    #[error("the sandbox has no agent connection (not booted, or torn down)")]
    NotConnected,
    #[error("{message}\n--- last console lines ({log}) ---\n{console}{diagnostics}")]
    Boot {
        stage: BootStage,
        message: String,
        log: String,
        console: String,
        diagnostics: String,
    },
}

/// What to boot. Built from the config, then adjusted per workload.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Extra kernel parameters after hull's own.
    pub kernel_params: String,
    pub agent_log: String,
    /// Keep the state dir (console log, helper logs) after the VM is gone.
    pub keep_state: bool,
    /// Attach the sandbox share (`<state>/share` over virtio-fs, tag `hullshare`).
    pub share: bool,
    /// The sandbox's id (its state dir's name, what `hull exec` finds it by); a random
    /// one when unset.
    pub id: Option<String>,
    /// virtio-net interfaces on the pod's taps (see `crate::network`).
    pub nics: Vec<crate::hypervisor::net::NetDevice>,
    /// Attach a scratch disk ([`scratch`]) for the containers' writable layers, mounted
    /// by the agent at [`scratch::GUEST_DIR`].
    pub scratch_disk: bool,
    /// Start from this template snapshot (see `crate::template`) instead of booting;
    /// a restore that fails falls back to booting.
    pub restore: Option<crate::hypervisor::SnapshotFiles>,
}

impl SandboxSpec {
    pub fn from_config(config: &Config) -> SandboxSpec {
        SandboxSpec {
            kernel: config.guest.kernel.clone(),
            initrd: config.guest.initrd.clone(),
            vcpus: config.guest.vcpus,
            memory_mib: config.guest.memory_mib,
            kernel_params: config.guest.kernel_params.clone(),
            agent_log: config.guest.agent_log.clone(),
            keep_state: false,
            share: false,
            id: None,
            nics: Vec::new(),
            scratch_disk: false,
            restore: None,
        }
    }

    /// The guest kernel command line: serial console; stop by reboot (the backend
    /// turns a reboot into the VM process exiting); a kernel panic reboots at once.
    pub fn cmdline(&self) -> String {
        let mut c = format!(
            "console=ttyS0 reboot=t panic=-1 hull.log={}",
            self.agent_log
        );
        if !self.kernel_params.trim().is_empty() {
            c.push(' ');
            c.push_str(self.kernel_params.trim());
        }
        c
    }
}

pub struct Sandbox {
    id: String,
    // Field order is drop order: the backend (and its processes) goes before the dir.
    hypervisor: Box<dyn Hypervisor>,
    agent: Option<AgentClient>,
    /// Keeps `metrics.json` in the state dir current (for `hull monitor`).
    metrics: Option<crate::metrics::SandboxMetricsWriter>,
    console: Option<Console>,
    // After the VM (virtiofsd gone), before the state dir: volumes are unmounted first.
    share: Option<Share>,
    /// The containers' writable layers (removed with the state dir).
    scratch: Option<scratch::ScratchDisk>,
    /// The jail of the VM's processes (its uid is released when they are gone).
    jail: Option<Arc<Jail>>,
    state: StateDir,
    report: BootReport,
    shutdown_timeout: Duration,
    /// `[debug] exec` of the config it booted with (told to the agent, recorded).
    debug_exec: bool,
    /// `[policy] file` and its text, sent to the agent at CreateSandbox (recorded).
    policy: Option<(PathBuf, String)>,
    /// What cleaning up after a dead owner needs, kept in the state dir.
    leftovers: leftovers::Leftovers,
}

impl Sandbox {
    /// Boots a VM on `hypervisor` and connects to its agent. On error nothing is left.
    pub async fn boot(
        config: &Config,
        spec: &SandboxSpec,
        hypervisor: Box<dyn Hypervisor>,
    ) -> Result<Sandbox, SandboxError> {
        let mut sandbox = Sandbox::create(config, spec, hypervisor)?;
        sandbox.start(config, spec).await?;
        Ok(sandbox)
    }

    /// Creates the state dir (and the share dir when asked), without starting the VM,
    /// so the caller can fill the share first. Dropping the value removes it all.
    pub fn create(
        config: &Config,
        spec: &SandboxSpec,
        hypervisor: Box<dyn Hypervisor>,
    ) -> Result<Sandbox, SandboxError> {
        let base = &config.runtime.state_dir;
        // Read before anything exists: a missing policy file leaves nothing behind.
        let policy = match &config.policy.file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| SandboxError::Policy {
                        path: path.clone(),
                        source,
                    })?;
                Some((path.clone(), text))
            }
            None => None,
        };
        let id = match &spec.id {
            Some(id) => {
                share::check_id(id)?;
                // A name left by a hull that was killed (its record names a dead owner)
                // is free again: its leftovers go first.
                if let Err(record::RecordError::Gone { pid, .. }) =
                    record::SandboxRecord::load(base, id)
                {
                    tracing::warn!(
                        id,
                        owner = pid,
                        "removing the state of a dead sandbox of that name"
                    );
                    drop(StateDir::adopt_stale(base, id));
                }
                id.clone()
            }
            None => state_dir::new_id(),
        };
        let mut state = StateDir::create(base, &id).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists && spec.id.is_some() {
                SandboxError::NameTaken(id.clone())
            } else {
                SandboxError::StateDir {
                    base: base.clone(),
                    source,
                }
            }
        })?;
        if spec.keep_state {
            state.keep();
        }
        // First, so an owner that dies from here on leaves `hull gc` all it needs.
        let leftovers = leftovers::Leftovers {
            state_dir: state.path().to_path_buf(),
            owner: leftovers::Owner::current(),
            backend: hypervisor.name(),
            ..Default::default()
        };
        leftovers.write(&state.path().join(leftovers::FILE))?;
        let share = if spec.share {
            Some(Share::create(state.path())?)
        } else {
            None
        };
        let jail = if config.jail.enabled {
            Some(Arc::new(Jail::create(&config.jail, state.path(), &id)?))
        } else {
            None
        };
        let scratch = if spec.scratch_disk {
            Some(scratch::ScratchDisk::create(
                &config.rootfs.scratch_dir,
                state.path(),
                &id,
                config.rootfs.scratch_size_mib,
            )?)
        } else {
            None
        };
        Ok(Sandbox {
            id,
            hypervisor,
            agent: None,
            metrics: None,
            console: None,
            share,
            scratch,
            jail,
            state,
            report: BootReport::default(),
            shutdown_timeout: config.boot.shutdown_timeout(),
            debug_exec: config.debug.exec,
            policy,
            leftovers,
        })
    }

    /// Boots the VM and connects to its agent. On error every process is stopped.
    pub async fn start(&mut self, config: &Config, spec: &SandboxSpec) -> Result<(), SandboxError> {
        // Spans are attached with `instrument`, never entered across an await (that
        // would leak them into other tasks and make the future !Send).
        let span = tracing::info_span!("sandbox_boot", id = %self.id);
        async {
            match boot::run(self, config, spec)
                .await
                .and_then(|()| self.write_record())
            {
                Ok(()) => Ok(()),
                Err(e) => {
                    self.teardown().await;
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Publishes `sandbox.json` so other hull commands can reach the running sandbox.
    fn write_record(&self) -> Result<(), SandboxError> {
        let Some(vsock_uds) = self.hypervisor.vsock_uds() else {
            return Ok(());
        };
        record::SandboxRecord {
            id: self.id.clone(),
            backend: self.hypervisor.name(),
            owner_pid: std::process::id(),
            vm_pids: self.hypervisor.pids(),
            vsock_uds,
            created: record::now_secs(),
            debug_exec: self.debug_exec,
            policy: self.policy.as_ref().map(|(path, _)| path.clone()),
        }
        .write(self.state.path())?;
        Ok(())
    }

    /// Has the guest do now what a first container would wait for: compile
    /// containerd's default seccomp profile (as hull's specs carry it) into the agent's
    /// cache. For a VM that waits for its pod (a pool VM, a template before its
    /// snapshot). A failure is only logged: the first container compiles it then.
    pub async fn prepare_guest_caches(&self) {
        let Some(agent) = self.agent.as_ref() else {
            return;
        };
        let profile = crate::spec::default_seccomp_json();
        match agent
            .prepare_caches(&[profile])
            .instrument(tracing::info_span!("prepare_caches"))
            .await
        {
            Ok(n) => tracing::debug!(seccomp_profiles = n, "guest caches prepared"),
            Err(e) => tracing::warn!(error = %e, "the guest's caches are not prepared"),
        }
    }

    /// Pauses the VM and writes a snapshot of it into the new directory `dir` (what a
    /// template is made of). The VM stays paused: tear the sandbox down afterwards.
    pub async fn snapshot_vm(
        &mut self,
        dir: &std::path::Path,
    ) -> Result<(), crate::hypervisor::HypervisorError> {
        // The host's connection goes first: the guest would keep it in the snapshot.
        self.agent = None;
        self.metrics = None;
        self.hypervisor
            .snapshot(dir)
            .instrument(tracing::info_span!("vm_snapshot"))
            .await
    }

    /// What cleaning up after this sandbox's owner needs (see [`leftovers`]).
    pub fn leftovers(&self) -> &leftovers::Leftovers {
        &self.leftovers
    }

    /// Records the host cgroups made for the sandbox (removed by `hull gc` if its
    /// owner dies).
    pub fn note_cgroups(&mut self, dirs: &[PathBuf]) -> Result<(), SandboxError> {
        self.leftovers.cgroups = dirs.to_vec();
        self.save_leftovers()
    }

    /// Records the pod's netns and its (veth index, tap name) wiring.
    pub fn note_network(
        &mut self,
        netns: PathBuf,
        links: Vec<(u32, String)>,
    ) -> Result<(), SandboxError> {
        self.leftovers.network = Some(leftovers::NetworkLeftovers { netns, links });
        self.save_leftovers()
    }

    /// Records the VM's processes once launched.
    fn note_pids(&mut self) -> Result<(), SandboxError> {
        self.leftovers.pids = self.hypervisor.pids();
        self.save_leftovers()
    }

    fn save_leftovers(&self) -> Result<(), SandboxError> {
        Ok(self
            .leftovers
            .write(&self.state.path().join(leftovers::FILE))?)
    }

    /// The host side of the share, if the sandbox has one.
    pub fn share(&self) -> Option<&Share> {
        self.share.as_ref()
    }

    /// The hybrid vsock socket that reaches the guest's vsock ports, once started.
    pub fn vsock_uds(&self) -> Option<PathBuf> {
        self.hypervisor.vsock_uds()
    }

    pub fn share_mut(&mut self) -> Option<&mut Share> {
        self.share.as_mut()
    }

    /// The connected agent, or an error saying there is none.
    pub fn agent_or_err(&self) -> Result<&AgentClient, SandboxError> {
        self.agent.as_ref().ok_or(SandboxError::NotConnected)
    }

    /// `CreateSandbox`: hostname, the share mounted at [`share::GUEST_SHARE`] and the
    /// scratch disk at [`scratch::GUEST_DIR`], debug processes allowed or not, the
    /// agent policy of `[policy] file`.
    pub async fn prepare_guest(&self, hostname: &str) -> Result<(), SandboxError> {
        let share = self
            .share
            .iter()
            .map(|_| StorageSpec::virtiofs_share(share::SHARE_TAG, share::GUEST_SHARE));
        let scratch = self
            .scratch
            .iter()
            .map(|_| StorageSpec::disk(scratch::SERIAL, "ext4", scratch::GUEST_DIR));
        let storages: Vec<StorageSpec> = share.chain(scratch).collect();
        self.agent_or_err()?
            .create_sandbox(
                &self.id,
                hostname,
                &storages,
                self.debug_exec,
                self.policy.as_ref().map(|(_, text)| text.as_str()),
            )
            .instrument(tracing::info_span!("create_sandbox"))
            .await?;
        Ok(())
    }

    /// Whether the containers' writable layers go on the guest's scratch disk.
    pub fn has_scratch_disk(&self) -> bool {
        self.scratch.is_some()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn state_dir(&self) -> &std::path::Path {
        self.state.path()
    }

    /// Where the VM's sockets are: the jail's socket dir, or the state dir unjailed.
    pub fn sock_dir(&self) -> PathBuf {
        match &self.jail {
            Some(j) => j.sock_dir().to_path_buf(),
            None => self.state.path().to_path_buf(),
        }
    }

    /// The uid the VM's processes run as, when jailed.
    pub fn jail_uid(&self) -> Option<u32> {
        self.jail.as_ref().map(|j| j.uid())
    }

    pub fn boot_report(&self) -> &BootReport {
        &self.report
    }

    pub fn backend_name(&self) -> String {
        self.hypervisor.name()
    }

    /// Host PIDs of the VM's processes (hypervisor and helpers).
    pub fn pids(&self) -> Vec<u32> {
        self.hypervisor.pids()
    }

    pub fn agent(&self) -> Option<&AgentClient> {
        self.agent.as_ref()
    }

    pub async fn agent_version(&self) -> Result<AgentVersion, SandboxError> {
        match &self.agent {
            Some(a) => Ok(a.version().await?),
            None => Err(SandboxError::Agent(AgentError::BadReply {
                rpc: "version",
                what: "no agent connection".into(),
            })),
        }
    }

    /// Orderly stop: the agent stops every process in the guest and syncs, and says
    /// so in its reply (it reboots the guest a moment later); then the VM's processes
    /// are stopped at once, as nothing in the guest is left to wait for. An agent that
    /// does not answer gets its VM killed. Everything is removed either way.
    pub async fn destroy(self) -> Result<(), SandboxError> {
        let span = tracing::info_span!("sandbox_destroy", id = %self.id);
        self.destroy_inner().instrument(span).await
    }

    async fn destroy_inner(mut self) -> Result<(), SandboxError> {
        let mut result = Ok(());
        if let Some(agent) = self.agent.take() {
            if let Err(e) = agent
                .destroy_sandbox(self.shutdown_timeout.as_secs() as u32)
                .await
            {
                tracing::warn!(error = %e, "agent did not accept DestroySandbox; killing the VM");
                result = Err(e.into());
            }
        }
        self.teardown().await;
        result
    }

    /// Resolves when the VM process exits, with how it ended.
    pub async fn wait_exit(&mut self) -> String {
        match self.hypervisor.wait().await {
            Ok(status) => crate::child::describe_status(&status),
            Err(e) => e.to_string(),
        }
    }

    /// Stops every process now (no guest shutdown) and unmounts the volumes. The state
    /// dir goes on drop.
    pub async fn teardown(&mut self) {
        self.agent = None;
        self.metrics = None;
        if let Err(e) = self.hypervisor.stop(Duration::from_millis(500)).await {
            tracing::warn!(error = %e, "stopping the VM's processes");
        }
        if let Some(share) = self.share.as_mut() {
            share.unmount_all();
        }
    }
}
