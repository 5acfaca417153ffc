//! The boot sequence of a sandbox, stage by stage, with its timing report.

use std::time::{Duration, Instant};

use tracing::Instrument;

use super::{Sandbox, SandboxError, SandboxSpec};
use crate::agent_client::{self, AgentClient, GuestListener};
use crate::child::describe_status;
use crate::config::Config;
use std::os::fd::AsRawFd;

use crate::hypervisor::disk::DiskDevice;
use crate::hypervisor::{ConsoleProgress, VmDevice, VmSpec};

/// The stages a boot goes through, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootStage {
    /// The hypervisor process is starting.
    Launch,
    /// The guest kernel runs (its banner is on the console).
    Kernel,
    /// The agent runs as /init (its first console line).
    Init,
    /// The agent listens on vsock and has announced itself.
    Agent,
    /// The host is connected and the agent answered a health check.
    Connected,
}

impl BootStage {
    pub fn describe(self) -> &'static str {
        match self {
            BootStage::Launch => "the hypervisor to start",
            BootStage::Kernel => "the guest kernel to start (its banner on the console)",
            BootStage::Init => "the agent to start as /init (its first console line)",
            BootStage::Agent => "the agent to announce itself over vsock",
            BootStage::Connected => "the agent to answer over vsock",
        }
    }
}

/// When each stage was reached, measured from the start of the launch on the host.
#[derive(Debug, Clone, Default)]
pub struct BootReport {
    pub backend: String,
    /// The hypervisor process (and its helpers) were started.
    pub launched: Duration,
    pub kernel: Option<Duration>,
    pub init: Option<Duration>,
    pub agent_ready: Duration,
    pub connected: Duration,
    /// The template snapshot the VM was restored from (no kernel boot then).
    pub restored_from: Option<std::path::PathBuf>,
}

impl BootReport {
    /// The report as `hull monitor` reads it.
    pub fn seconds(&self) -> crate::metrics::BootSeconds {
        crate::metrics::BootSeconds {
            backend: self.backend.clone(),
            processes: self.launched.as_secs_f64(),
            kernel: self.kernel.map(|d| d.as_secs_f64()),
            init: self.init.map(|d| d.as_secs_f64()),
            agent_ready: self.agent_ready.as_secs_f64(),
            connected: self.connected.as_secs_f64(),
        }
    }

    /// One line: `ready in 1.23 s (launch 0.01, kernel 0.30, init 0.95, agent 1.10, connected 1.23)`.
    pub fn summary(&self) -> String {
        let s = |d: Option<Duration>| {
            d.map(|d| format!("{:.3}", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into())
        };
        let how = match &self.restored_from {
            Some(dir) => format!(", restored from template {}", dir.display()),
            None => String::new(),
        };
        format!(
            "ready in {:.3} s on {}{how} (from launch: processes {} s, kernel {} s, init {} s, agent ready {} s, connected {} s)",
            self.connected.as_secs_f64(),
            self.backend,
            s(Some(self.launched)),
            s(self.kernel),
            s(self.init),
            s(Some(self.agent_ready)),
            s(Some(self.connected)),
        )
    }
}

/// Boots the sandbox's VM: from its template snapshot when it has one (falling back
/// to a cold boot if the restore fails), else from its kernel.
pub(super) async fn run(
    sandbox: &mut Sandbox,
    config: &Config,
    spec: &SandboxSpec,
) -> Result<(), SandboxError> {
    if let Some(snapshot) = spec.restore.clone() {
        let dir = snapshot.dir.clone();
        match restore(sandbox, config, spec, snapshot).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(template = %dir.display(), error = %e, "restoring the template failed; booting cold");
                forget_failed_restore(sandbox).await;
            }
        }
    }
    cold(sandbox, config, spec).await
}

/// The VM description of `sandbox` as `spec` asks for it (not restored).
fn vm_spec(sandbox: &Sandbox, spec: &SandboxSpec) -> VmSpec {
    VmSpec {
        id: sandbox.id.clone(),
        state_dir: sandbox.state.path().to_path_buf(),
        sock_dir: sandbox.sock_dir(),
        jail: sandbox.jail.clone(),
        kernel: spec.kernel.clone(),
        initrd: spec.initrd.clone(),
        cmdline: spec.cmdline(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        vsock: true,
        restore: None,
        devices: sandbox
            .share
            .iter()
            .map(|s| VmDevice::SharedDir {
                tag: super::share::SHARE_TAG.to_string(),
                host_dir: s.host_dir().to_path_buf(),
            })
            .chain(spec.nics.iter().cloned().map(VmDevice::Net))
            .chain(sandbox.scratch.iter().map(|disk| {
                VmDevice::Disk(DiskDevice {
                    fd: disk.file.as_raw_fd(),
                    serial: super::scratch::SERIAL.to_string(),
                    volatile: true,
                })
            }))
            .collect(),
    }
}

/// Starts the VM from `snapshot` (a template): no kernel boot and no announcement
/// (the agent made it before the snapshot and listens), so the host connects at
/// once, then gives the clone its own identity (entropy, clock, hostname).
async fn restore(
    sandbox: &mut Sandbox,
    config: &Config,
    spec: &SandboxSpec,
    snapshot: crate::hypervisor::SnapshotFiles,
) -> Result<(), SandboxError> {
    let dir = snapshot.dir.clone();
    let mut vm = vm_spec(sandbox, spec);
    vm.restore = Some(snapshot);
    let uds = vm.sock_dir.join(crate::hypervisor::VSOCK_SOCK);
    let t0 = Instant::now();
    sandbox.report = BootReport {
        backend: sandbox.hypervisor.name(),
        restored_from: Some(dir),
        ..Default::default()
    };
    let console = sandbox
        .hypervisor
        .launch(&vm)
        .instrument(tracing::info_span!("vm_restore"))
        .await?;
    sandbox.report.launched = t0.elapsed();
    sandbox.console = Some(console.clone());
    sandbox.note_pids()?;
    let limit = config.boot.agent_timeout();
    // The guest learns that its old connections are gone (vsock TRANSPORT_RESET) when
    // it first runs, which may be just after the host's first connection is made: that
    // one is then reset too. So a connection that fails is made again.
    let connect = async {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let tried = async {
                let agent = AgentClient::connect(&uds, config.boot.request_timeout()).await?;
                agent.check().await?;
                let boot_id = agent
                    .set_identity(&sandbox.id, &sandbox.id)
                    .instrument(tracing::info_span!("set_identity"))
                    .await?;
                Ok::<_, SandboxError>((agent, boot_id))
            }
            .await;
            match tried {
                Ok((agent, boot_id)) => {
                    tracing::debug!(boot_id, attempt, "the clone has its identity");
                    return agent;
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "the restored agent's connection failed; again");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    .instrument(tracing::info_span!("agent_connect"));
    let agent = tokio::select! {
        agent = tokio::time::timeout(limit, connect) => agent.map_err(|_| SandboxError::Boot {
            stage: BootStage::Connected,
            message: format!("the restored agent did not answer within {:.1} s", limit.as_secs_f64()),
            log: console.log_path().display().to_string(),
            console: console.tail(),
            diagnostics: String::new(),
        })?,
        status = sandbox.hypervisor.wait() => {
            let status = status?;
            return Err(SandboxError::Boot {
                stage: BootStage::Connected,
                message: format!("the restored VM stopped ({})", describe_status(&status)),
                log: console.log_path().display().to_string(),
                console: console.tail(),
                diagnostics: sandbox.hypervisor.diagnostics(),
            });
        }
    };
    sandbox.report.agent_ready = t0.elapsed();
    sandbox.report.connected = t0.elapsed();
    finish(sandbox, config, agent);
    Ok(())
}

/// After a failed restore: its processes stopped and its sockets gone, so a cold boot
/// starts clean.
async fn forget_failed_restore(sandbox: &mut Sandbox) {
    if let Err(e) = sandbox.hypervisor.stop(Duration::from_millis(500)).await {
        tracing::warn!(error = %e, "stopping the failed restore's processes");
    }
    sandbox.console = None;
    sandbox.agent = None;
    sandbox.report = BootReport::default();
    let sock_dir = sandbox.sock_dir();
    for name in [crate::hypervisor::VSOCK_SOCK, "virtiofsd.sock", "api.sock"] {
        let _ = std::fs::remove_file(sock_dir.join(name));
    }
}

/// The sandbox is up: counted in the node's boot histograms, its metrics kept, its
/// agent connection held.
fn finish(sandbox: &mut Sandbox, config: &Config, agent: AgentClient) {
    tracing::info!(report = %sandbox.report.summary(), "sandbox ready");
    let boot = sandbox.report.seconds();
    if let Err(e) = crate::metrics::record_boot(&config.runtime.state_dir, &boot) {
        tracing::warn!(error = %e, "this boot is not counted in the node's boot histograms");
    }
    sandbox.metrics = Some(crate::metrics::SandboxMetricsWriter::start(
        sandbox.state.path(),
        boot,
        agent.latency().clone(),
    ));
    sandbox.agent = Some(agent);
}

/// Boots the VM's kernel and waits for its agent to announce itself and answer.
async fn cold(
    sandbox: &mut Sandbox,
    config: &Config,
    spec: &SandboxSpec,
) -> Result<(), SandboxError> {
    let vm = vm_spec(sandbox, spec);
    let sock_dir = vm.sock_dir.clone();
    // Listen for the announcement before anything can send it.
    let uds = sock_dir.join(crate::hypervisor::VSOCK_SOCK);
    let announce = GuestListener::bind(&uds, hull_proto::ANNOUNCE_VSOCK_PORT)?;
    if let Some(jail) = &sandbox.jail {
        // The jailed vsock backend connects to it.
        jail.give(announce.path())
            .map_err(crate::hypervisor::HypervisorError::from)?;
    }

    let t0 = Instant::now();
    sandbox.report.backend = sandbox.hypervisor.name();
    let console = sandbox
        .hypervisor
        .launch(&vm)
        .instrument(tracing::info_span!("vm_launch"))
        .await?;
    sandbox.report.launched = t0.elapsed();
    sandbox.console = Some(console.clone());
    tracing::debug!(pids = ?sandbox.hypervisor.pids(), "VM launched");
    sandbox.note_pids()?;

    let mut progress = console.progress();
    let deadlines = [
        (BootStage::Kernel, config.boot.kernel_timeout()),
        (BootStage::Init, config.boot.init_timeout()),
        (BootStage::Agent, config.boot.agent_timeout()),
    ];
    let failure = |stage: BootStage, message: String, sandbox: &Sandbox| SandboxError::Boot {
        stage,
        message: format!(
            "{message} (kernel {}, initrd {})",
            spec.kernel.display(),
            spec.initrd.display()
        ),
        log: console.log_path().display().to_string(),
        console: console.tail(),
        diagnostics: sandbox.hypervisor.diagnostics(),
    };

    let mut announce_stream = loop {
        let p = progress.borrow().clone();
        let missing = first_missing_stage(&p);
        let (stage, limit) = deadlines
            .iter()
            .copied()
            .find(|(s, _)| *s == missing)
            .unwrap_or((BootStage::Agent, config.boot.agent_timeout()));
        let deadline = t0 + limit;
        tokio::select! {
            conn = announce.accept() => break conn?,
            status = sandbox.hypervisor.wait() => {
                let status = status?;
                // Let the console reader drain what the guest printed last.
                let _ = tokio::time::timeout(Duration::from_millis(500), progress.wait_for(|p| p.closed)).await;
                let reached = first_missing_stage(&progress.borrow());
                return Err(failure(reached, format!(
                    "the VM stopped ({} {}) while waiting for {}",
                    sandbox.hypervisor.name(), describe_status(&status), reached.describe()
                ), sandbox));
            }
            changed = progress.changed() => {
                if changed.is_err() {
                    // The console reader is gone; the exit branch reports why.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                return Err(failure(stage, format!(
                    "timed out after {:.1} s waiting for {}",
                    limit.as_secs_f64(), stage.describe()
                ), sandbox));
            }
        }
    };
    sandbox.report.agent_ready = t0.elapsed();
    {
        let p = progress.borrow();
        sandbox.report.kernel = p.kernel.map(|t| t - t0);
        sandbox.report.init = p.agent.map(|t| t - t0);
    }
    agent_client::read_announcement(&mut announce_stream, Duration::from_secs(5)).await?;
    drop(announce_stream);
    drop(announce);

    let agent = async {
        let agent = AgentClient::connect(&uds, config.boot.request_timeout()).await?;
        agent.check().await?;
        Ok::<_, SandboxError>(agent)
    }
    .instrument(tracing::info_span!("agent_connect"))
    .await?;
    sandbox.report.connected = t0.elapsed();
    finish(sandbox, config, agent);
    Ok(())
}

/// The first stage the console has not shown yet (the agent stage is not on the console:
/// once init is seen, what is missing is the announcement).
fn first_missing_stage(p: &ConsoleProgress) -> BootStage {
    if p.kernel.is_none() && p.agent.is_none() {
        BootStage::Kernel
    } else if p.agent.is_none() {
        BootStage::Init
    } else {
        BootStage::Agent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_stage_follows_the_console() {
        let mut p = ConsoleProgress::default();
        assert_eq!(first_missing_stage(&p), BootStage::Kernel);
        p.kernel = Some(Instant::now());
        assert_eq!(first_missing_stage(&p), BootStage::Init);
        p.agent = Some(Instant::now());
        assert_eq!(first_missing_stage(&p), BootStage::Agent);
    }
}
