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
        format!(
            "ready in {:.3} s on {} (from launch: processes {} s, kernel {} s, init {} s, agent ready {} s, connected {} s)",
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

pub(super) async fn run(
    sandbox: &mut Sandbox,
    config: &Config,
    spec: &SandboxSpec,
) -> Result<(), SandboxError> {
    let state = sandbox.state.path().to_path_buf();
    let sock_dir = sandbox.sock_dir();
    let vm = VmSpec {
        id: sandbox.id.clone(),
        state_dir: state.clone(),
        sock_dir: sock_dir.clone(),
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
    };
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
    tracing::info!(report = %sandbox.report.summary(), "sandbox ready");
    let boot = sandbox.report.seconds();
    if let Err(e) = crate::metrics::record_boot(&config.runtime.state_dir, &boot) {
        tracing::warn!(error = %e, "this boot is not counted in the node's boot histograms");
    }
    sandbox.metrics = Some(crate::metrics::SandboxMetricsWriter::start(
        &state,
        boot,
        agent.latency().clone(),
    ));
    sandbox.agent = Some(agent);
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
