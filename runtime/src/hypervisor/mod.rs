//! Hypervisor backends: what runs a VM on the host.
//!
//! The trait is deliberately small (launch, wait, stop, a few accessors); everything
//! about containers lives above it in `sandbox`, and everything about one hypervisor's
//! command line or API lives below it in its module. Backends: [`qemu`] (QEMU microvm,
//! KVM or TCG) and [`hull_vmm`] (hull's own VMM, on hardware-KVM hosts); [`select`]
//! decides which one runs.

pub mod boot_files;
pub mod console;
pub mod disk;
pub mod hull_vmm;
pub mod net;
pub mod qemu;
mod ready;
pub mod select;
pub mod virtiofs;

/// The hybrid-vsock socket in a VM's socket dir (the sandbox listens on `<it>_1025`
/// for the agent's announcement). Helper processes run in the socket dir and are
/// handed these bare names (see `uds_path`).
pub const VSOCK_SOCK: &str = "vsock.sock";
/// vhost-device-vsock's vhost-user socket, which QEMU connects to.
pub const VHOST_VSOCK_SOCK: &str = "vhost-vsock.sock";

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use console::{Console, ConsoleProgress};
pub use select::{plan, select, BackendKind, BackendPlan, SelectError};

use crate::child::ChildError;
use crate::jail::{Jail, JailError};

/// Everything a backend needs to start one VM. Paths are host paths.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Short id, used in process names and logs.
    pub id: String,
    /// Per-VM directory the backend may put logs into; removed by the caller when the
    /// VM is gone.
    pub state_dir: PathBuf,
    /// Where the VM's sockets go: the state dir, or the jail's socket dir.
    pub sock_dir: PathBuf,
    /// The sandbox's jail: every process the backend starts runs in it.
    pub jail: Option<Arc<Jail>>,
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
    /// Start the VM from this snapshot (a template) instead of booting `kernel`; only
    /// backends whose [`Hypervisor::can_restore`] is true take it.
    pub restore: Option<SnapshotFiles>,
}

/// A snapshot's two files, opened by the runtime and inherited by the hypervisor
/// process (a jailed one could not open a root-owned template itself).
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    /// The snapshot's directory, for messages.
    pub dir: PathBuf,
    pub state: Arc<std::fs::File>,
    pub memory: Arc<std::fs::File>,
}

/// A storage device of a VM. Only a shared directory (virtio-fs) today; a block-device
/// rootfs (erofs/ext4 image on virtio-blk, found by serial) is a new variant here and a
/// `Storage { driver: "blk" }` for the agent, with no change to the agent API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmDevice {
    /// A host directory shared into the guest with virtio-fs (virtiofsd), mounted by the
    /// guest with `mount -t virtiofs <tag> <dir>`.
    SharedDir { tag: String, host_dir: PathBuf },
    /// A virtio-net interface on a tap the caller opened (see [`net`]); the fd stays
    /// the caller's, the hypervisor process inherits it.
    Net(net::NetDevice),
    /// A virtio-blk disk on a file the caller opened (see [`disk`]); the fd stays the
    /// caller's, the hypervisor process inherits it.
    Disk(disk::DiskDevice),
}

/// A command's arguments, as text (the device argument tests compare them).
#[cfg(test)]
pub(crate) fn args_of(cmd: &tokio::process::Command) -> Vec<String> {
    cmd.as_std()
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// The fds of `devices` (taps, disks) stay open across the hypervisor's exec: they
/// are close-on-exec in this process, so the flag is cleared in the child only.
pub fn inherit_device_fds(cmd: &mut tokio::process::Command, devices: &[VmDevice]) {
    let fds: Vec<std::os::fd::RawFd> = devices
        .iter()
        .filter_map(|d| match d {
            VmDevice::Net(n) => Some(n.tap_fd),
            VmDevice::Disk(d) => Some(d.fd),
            VmDevice::SharedDir { .. } => None,
        })
        .collect();
    inherit_fds(cmd, fds);
}

/// `fds` stay open across the child's exec (they are close-on-exec here).
pub fn inherit_fds(cmd: &mut tokio::process::Command, fds: Vec<std::os::fd::RawFd>) {
    if fds.is_empty() {
        return;
    }
    // SAFETY: the closure runs in the child between fork and exec; it only calls
    // fcntl (async-signal-safe) on fds the parent holds open, and does not allocate
    // (`fds` was built before the fork and is only read).
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                let flags = libc::fcntl(*fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(*fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
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
    #[error("hull-vmm could not build the VM (kernel {kernel}, initrd {initrd}): it exited with {status}\n{stderr}")]
    VmmExited {
        kernel: PathBuf,
        initrd: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("the VM cannot run on hull-vmm: {what}")]
    VmConfig { what: String },
    #[error("snapshot {dir}: {reason}")]
    Snapshot { dir: PathBuf, reason: String },
    #[error("{0}")]
    Jail(#[from] JailError),
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

    /// Whether [`VmSpec::restore`] and [`Hypervisor::snapshot`] work on this backend.
    fn can_restore(&self) -> bool {
        false
    }

    /// Pauses the running VM and writes a snapshot of it into the new directory `dir`
    /// (a host path). The VM stays paused; stop it afterwards.
    async fn snapshot(&mut self, dir: &std::path::Path) -> Result<(), HypervisorError> {
        Err(HypervisorError::VmConfig {
            what: format!(
                "{} cannot take snapshots (no {})",
                self.name(),
                dir.display()
            ),
        })
    }
}
