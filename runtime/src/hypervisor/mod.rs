//! Hypervisor backends: what runs a VM on the host.
//!
//! The trait is deliberately small (launch, wait, stop, a few accessors); everything
//! about containers lives above it in `sandbox`, and everything about one hypervisor's
//! command line or API lives below it in its module. Backends: [`qemu`] (QEMU microvm,
//! KVM or TCG) and, on hardware-KVM hosts, hull-vmm (issue "hull-vmm devices and
//! backend").

pub mod boot_files;
pub mod console;
pub mod qemu;
pub mod virtiofs;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use async_trait::async_trait;

pub use console::{Console, ConsoleProgress};

use crate::child::ChildError;

/// Everything a backend needs to start one VM. Paths are host paths.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Short id, used in process names and logs.
    pub id: String,
    /// Per-VM directory the backend may put sockets and logs into; removed by the
    /// caller when the VM is gone.
    pub state_dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel command line (the backend appends its own device announcements).
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Attach a hybrid vsock device whose host side is `vsock_uds()`.
    pub vsock: bool,
    /// Storage devices to attach. The guest finds each by its tag (or, later, a block
    /// device by its serial); the agent mounts them when `CreateSandbox` names them.
    pub devices: Vec<VmDevice>,
}

/// A storage device of a VM. Only a shared directory (virtio-fs) today; a block-device
/// rootfs (erofs/ext4 image on virtio-blk, found by serial) is a new variant here and a
/// `Storage { driver: "blk" }` for the agent, with no change to the agent API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmDevice {
    /// A host directory shared into the guest with virtio-fs (virtiofsd), mounted by the
    /// guest with `mount -t virtiofs <tag> <dir>`.
    SharedDir { tag: String, host_dir: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error("{what} did not come up within {waited:?}{detail}")]
    NotReady {
        what: &'static str,
        waited: Duration,
        detail: String,
    },
    #[error("{0}")]
    BootFile(#[from] boot_files::BootFileError),
    #[error("{what} not found (looked in PATH and cargo's bin dir); fix: {fix}")]
    MissingHelper {
        what: &'static str,
        fix: &'static str,
    },
    #[error("cannot set up {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// A VM backend. One value runs at most one VM.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Backend name for logs and `hull check`, e.g. "qemu (tcg)".
    fn name(&self) -> String;

    /// Starts the VM. Returns once the hypervisor process runs and its console is
    /// being read; the guest boots in the background.
    async fn launch(&mut self, spec: &VmSpec) -> Result<Console, HypervisorError>;

    /// Host Unix socket of the guest's hybrid vsock (valid after `launch`).
    fn vsock_uds(&self) -> Option<PathBuf>;

    /// Waits until the VM process exits. Cancel-safe.
    async fn wait(&mut self) -> Result<ExitStatus, HypervisorError>;

    /// Stops the VM (SIGTERM, then SIGKILL after `grace`) and every helper process it
    /// started; reaps them all. Idempotent.
    async fn stop(&mut self, grace: Duration) -> Result<(), HypervisorError>;

    /// Host PIDs of every process this backend started that is still running.
    fn pids(&self) -> Vec<u32>;

    /// Hypervisor-side diagnostics for an error message (the tail of its stderr).
    fn diagnostics(&self) -> String;
}

/// Why no backend can be built.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("{what} not found (looked for {name} in PATH and cargo's bin dir); fix: {fix}")]
    Missing {
        what: &'static str,
        name: PathBuf,
        fix: &'static str,
    },
    #[error("the hull-vmm backend cannot run pods yet: it has no virtio devices (see the issue \"hull-vmm devices and backend\"); use backend = \"qemu\"")]
    HullVmmNotReady,
}

/// Builds the backend the config asks for. `auto` is QEMU until hull-vmm has the
/// devices a pod needs; QEMU then uses KVM on hardware-virtualisation hosts, TCG
/// elsewhere.
pub fn select(config: &crate::config::Config) -> Result<Box<dyn Hypervisor>, SelectError> {
    use crate::config::BackendChoice;
    match config.hypervisor.backend {
        BackendChoice::HullVmm => Err(SelectError::HullVmmNotReady),
        BackendChoice::Auto | BackendChoice::Qemu => {
            let qemu = crate::host::find_binary(&config.hypervisor.qemu).ok_or(SelectError::Missing {
                what: "QEMU",
                name: config.hypervisor.qemu.clone(),
                fix: "apt-get install qemu-system-x86",
            })?;
            let vhost_vsock = crate::host::find_binary(&config.hypervisor.vhost_vsock).ok_or(
                SelectError::Missing {
                    what: "vhost-device-vsock",
                    name: config.hypervisor.vhost_vsock.clone(),
                    fix: "cargo install --locked vhost-device-vsock@0.3.0",
                },
            )?;
            // virtiofsd is only needed for VMs with a shared dir; `launch` names it if
            // one is asked for and it is missing.
            let virtiofsd = crate::host::find_binary(&config.hypervisor.virtiofsd);
            Ok(Box::new(qemu::Qemu::new(qemu::QemuConfig {
                qemu,
                vhost_vsock,
                virtiofsd,
                accel: qemu::Accel::for_host(),
            })))
        }
    }
}
