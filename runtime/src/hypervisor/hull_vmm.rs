//! hull-vmm backend: hull's own KVM microVM monitor (`vmm/`), run as a separate helper
//! process (`hull-vmm --config <state>/hull-vmm.json`), for hosts with hardware KVM.
//!
//! What the rest of the runtime sees is the same as with QEMU:
//! - the console comes on the helper's stdout (hull-vmm writes COM1 to
//!   `/proc/self/fd/1`, a pipe) and goes through [`Console`] to `console.log`;
//! - the hybrid vsock is `<state>/vsock.sock`, created by hull-vmm itself (Firecracker's
//!   protocol: `CONNECT <port>\n` -> `OK <host port>\n`; guest connections to host port
//!   P go to `<state>/vsock.sock_P`), so `agent_client` is unchanged;
//! - a shared dir is served by virtiofsd through hull-vmm's vhost-user-fs frontend (one
//!   per VM: hull-vmm has one virtio-fs device);
//! - the guest stops the VM by rebooting (`reboot=t`: a triple fault), which hull-vmm
//!   turns into exit status 0; SIGTERM stops it with status 10;
//! - hull-vmm serves `<sock dir>/api.sock` (`--api-socket`): [`Hypervisor::snapshot`]
//!   asks it for a snapshot there; a VM started from a template gets the snapshot's
//!   two files as inherited fds (`--restore-fds`), which works jailed too.
//!
//! Per-VM files: in the socket dir (the state dir, or the jail's, see `crate::jail`)
//! `hull-vmm.json` (the VM description), `vsock.sock` and `virtiofsd.sock`; in the state
//! dir `hull-vmm.log` (its stderr), `console.log` and `virtiofsd.log`. Jailed, hull-vmm
//! runs as the sandbox uid in its jail root with `/dev/kvm` (its own node, owned by
//! that uid) and keeps its per-thread seccomp filters.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Command;
use tracing::Instrument;

use super::ready::wait_for_socket;
use super::{
    boot_files, virtiofs, Console, Hypervisor, HypervisorError, VmDevice, VmSpec, VSOCK_SOCK,
};

/// virtiofsd's socket, in the socket dir.
const FS_SOCK: &str = "virtiofsd.sock";
/// hull-vmm's API socket (pause, resume, snapshot), in the socket dir.
const API_SOCK: &str = "api.sock";
/// How long hull-vmm may take to write a snapshot (guest memory to disk).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
use crate::child::HelperProcess;
use crate::jail::{self, Devices};

/// Guest CID of every VM (each VM has its own vsock device, so CIDs never meet).
pub const GUEST_CID: u64 = 3;
/// Where hull-vmm writes the guest console: its own stdout, a pipe to us.
pub const CONSOLE_PATH: &str = "/proc/self/fd/1";
/// How long hull-vmm may take to build the VM (open files, KVM, load the kernel,
/// connect to virtiofsd) before its vsock socket must exist.
const BUILD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct HullVmmConfig {
    /// The `hull-vmm` binary.
    pub binary: PathBuf,
    /// virtiofsd, when found (needed only for shared dirs).
    pub virtiofsd: Option<PathBuf>,
}

pub struct HullVmm {
    config: HullVmmConfig,
    /// virtiofsd, when the VM has a shared dir.
    fs_backend: Option<HelperProcess>,
    vmm: Option<HelperProcess>,
    vsock_uds: Option<PathBuf>,
    /// hull-vmm's API socket (host path), once launched.
    api_socket: Option<PathBuf>,
    /// The VM runs jailed: its snapshots would land inside the jail.
    jailed: bool,
}

/// The VM description hull-vmm gets for `spec`. `fs` is the (tag, vhost-user socket) of
/// a running virtiofsd. Validated with hull-vmm's own rules, so a VM it would refuse is
/// refused here, naming the field, before any process starts.
pub fn vm_config(
    spec: &VmSpec,
    fs: Option<(&str, &Path)>,
) -> Result<::hull_vmm::VmConfig, HypervisorError> {
    let invalid = |what: String| HypervisorError::VmConfig { what };
    let mut cfg = ::hull_vmm::VmConfig::new(&spec.kernel);
    cfg.initrd = Some(spec.initrd.clone());
    cfg.cmdline = spec.cmdline.clone();
    cfg.vcpus = u8::try_from(spec.vcpus)
        .map_err(|_| invalid(format!("vcpus must be 1..=40, got {}", spec.vcpus)))?;
    cfg.mem_mib = spec.memory_mib;
    // virtiofsd maps guest memory: a shared memfd (hull-vmm's default).
    cfg.shared_memory = true;
    cfg.console = Some(PathBuf::from(CONSOLE_PATH));
    cfg.seccomp = true;
    // hull-vmm runs in the socket dir: a path too long for a socket address is
    // given relative to it (`uds_path`).
    if spec.vsock {
        cfg.vsock = Some(::hull_vmm::VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: crate::uds_path::for_helper(&spec.sock_dir, VSOCK_SOCK),
        });
    }
    cfg.net = super::net::hull_vmm_config(&spec.devices);
    cfg.block = super::disk::hull_vmm_config(&spec.devices);
    if let Some((tag, socket)) = fs {
        cfg.fs = Some(::hull_vmm::FsConfig {
            socket: socket.to_path_buf(),
            tag: tag.to_string(),
        });
    }
    cfg.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(cfg)
}

/// The command line that runs hull-vmm on the VM description `config_file` (jailed
/// when `spec` has a jail).
pub fn command(
    spec: &VmSpec,
    binary: &Path,
    config_file: &Path,
) -> Result<Command, HypervisorError> {
    let mut cmd = jail::command(
        spec.jail.as_deref(),
        &spec.sock_dir,
        "hull-vmm",
        binary,
        &[&spec.kernel, &spec.initrd],
        Devices::Kvm,
    )?;
    cmd.arg("--config")
        .arg(config_file)
        .arg("--api-socket")
        .arg(crate::uds_path::for_helper(&spec.sock_dir, API_SOCK))
        .env(
            "HULL_VMM_LOG",
            std::env::var("HULL_VMM_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped());
    Ok(cmd)
}

impl HullVmm {
    pub fn new(config: HullVmmConfig) -> HullVmm {
        HullVmm {
            config,
            fs_backend: None,
            vmm: None,
            vsock_uds: None,
            api_socket: None,
            jailed: false,
        }
    }

    /// The one shared dir of `spec`, if any (hull-vmm has a single virtio-fs device).
    fn shared_dir(spec: &VmSpec) -> Result<Option<(&str, &Path)>, HypervisorError> {
        let mut dirs = spec.devices.iter().filter_map(|d| match d {
            VmDevice::SharedDir { tag, host_dir } => Some((tag.as_str(), host_dir.as_path())),
            VmDevice::Net(_) | VmDevice::Disk(_) => None,
        });
        let first = dirs.next();
        if dirs.next().is_some() {
            return Err(HypervisorError::VmConfig {
                what: format!(
                    "{} shared dirs asked for; hull-vmm has one virtio-fs device",
                    spec.devices
                        .iter()
                        .filter(|d| matches!(d, VmDevice::SharedDir { .. }))
                        .count()
                ),
            });
        }
        Ok(first)
    }

    /// Starts virtiofsd for the shared dir and waits for its socket.
    async fn start_fs_backend(
        &mut self,
        spec: &VmSpec,
        host_dir: &Path,
    ) -> Result<(), HypervisorError> {
        let sock = spec.sock_dir.join(FS_SOCK);
        let bin = self.config.virtiofsd.clone().ok_or(HypervisorError::MissingHelper {
            what: "virtiofsd",
            fix: "apt-get install libseccomp-dev libcap-ng-dev && scripts/setup (cargo install --locked --root /usr/local/libexec/hull virtiofsd@1.14.0)",
        })?;
        let mut backend = virtiofs::spawn(
            spec.jail.as_deref(),
            &spec.sock_dir,
            &bin,
            FS_SOCK,
            host_dir,
            &spec.state_dir.join("virtiofsd.log"),
        )?;
        let waited = wait_for_socket(&sock, &mut backend, Duration::from_secs(10)).await;
        self.fs_backend = Some(backend);
        waited?;
        if let Some(j) = &spec.jail {
            j.give(&sock)?;
        }
        Ok(())
    }

    /// Every helper process, hull-vmm first.
    fn processes(&self) -> impl Iterator<Item = &HelperProcess> {
        self.vmm.iter().chain(self.fs_backend.iter())
    }
}

#[async_trait]
impl Hypervisor for HullVmm {
    fn name(&self) -> String {
        "hull-vmm (kvm)".into()
    }

    async fn launch(&mut self, spec: &VmSpec) -> Result<Console, HypervisorError> {
        boot_files::check_kernel(&spec.kernel)?;
        boot_files::check_initrd(&spec.initrd)?;
        let shared = Self::shared_dir(spec)?;
        // Refuse a VM hull-vmm would refuse before starting anything.
        let fs_sock = crate::uds_path::for_helper(&spec.sock_dir, FS_SOCK);
        let cfg = vm_config(spec, shared.map(|(tag, _)| (tag, fs_sock.as_path())))?;
        if let Some((_, host_dir)) = shared {
            self.start_fs_backend(spec, host_dir)
                .instrument(tracing::info_span!("virtiofsd_start"))
                .await?;
        }
        let json = serde_json::to_vec_pretty(&cfg).map_err(|e| HypervisorError::Io {
            what: "the hull-vmm VM description",
            source: std::io::Error::other(e),
        })?;
        let config_file = spec.sock_dir.join("hull-vmm.json");
        std::fs::write(&config_file, json).map_err(|source| HypervisorError::Io {
            what: "the hull-vmm VM description",
            source,
        })?;

        let mut cmd = command(spec, &self.config.binary, &config_file)?;
        super::inherit_device_fds(&mut cmd, &spec.devices);
        if let Some(snapshot) = &spec.restore {
            use std::os::fd::AsRawFd;
            let (state, memory) = (snapshot.state.as_raw_fd(), snapshot.memory.as_raw_fd());
            cmd.arg("--restore-fds").arg(format!("{state},{memory}"));
            super::inherit_fds(&mut cmd, vec![state, memory]);
        }
        self.api_socket = Some(spec.sock_dir.join(API_SOCK));
        self.jailed = spec.jail.is_some();
        tracing::debug!(?cmd, "launching hull-vmm");
        let mut vmm = HelperProcess::spawn("hull-vmm", cmd, &spec.state_dir.join("hull-vmm.log"))?;
        let stdout = vmm.child_mut().stdout.take();
        self.vmm = Some(vmm);
        let stdout = stdout.ok_or(HypervisorError::Io {
            what: "the console pipe",
            source: std::io::Error::other("hull-vmm's stdout was not captured"),
        })?;
        // Read the console from the first byte, before waiting for anything.
        let console = Console::spawn(stdout, &spec.state_dir.join("console.log"))
            .await
            .map_err(|source| HypervisorError::Io {
                what: "the console log",
                source,
            })?;
        if let Some(uds) = cfg.vsock.as_ref().map(|v| spec.sock_dir.join(&v.uds_path)) {
            // hull-vmm creates the socket once the VM is built: a kernel it cannot load,
            // a KVM it cannot use or a virtiofsd it cannot talk to ends it before that,
            // and the error carries its stderr.
            if let Some(vmm) = self.vmm.as_mut() {
                if let Err(e) = wait_for_socket(&uds, vmm, BUILD_TIMEOUT).await {
                    return Err(match vmm.try_status() {
                        // (A VM that ran and ended cleanly before we saw its socket is
                        // not a build failure: the plain "exited with" error says so.)
                        Some(status) if !status.success() => HypervisorError::VmmExited {
                            kernel: spec.kernel.clone(),
                            initrd: spec.initrd.clone(),
                            status: crate::child::describe_status(&status),
                            stderr: vmm.stderr_tail(10),
                        },
                        _ => e,
                    });
                }
            }
            self.vsock_uds = Some(uds);
        }
        Ok(console)
    }

    fn vsock_uds(&self) -> Option<PathBuf> {
        self.vsock_uds.clone()
    }

    async fn wait(&mut self) -> Result<ExitStatus, HypervisorError> {
        match self.vmm.as_mut() {
            Some(v) => Ok(v.wait().await?),
            None => std::future::pending().await,
        }
    }

    async fn stop(&mut self, grace: Duration) -> Result<(), HypervisorError> {
        // SIGTERM: hull-vmm stops its vCPUs and exits with status 10.
        Ok(
            crate::child::stop_vm_processes(self.vmm.as_mut(), grace, self.fs_backend.iter_mut())
                .await?,
        )
    }

    fn pids(&self) -> Vec<u32> {
        self.processes().filter_map(|p| p.pid()).collect()
    }

    fn diagnostics(&self) -> String {
        crate::child::stderr_tails(self.processes())
    }

    fn can_restore(&self) -> bool {
        true
    }

    async fn snapshot(&mut self, dir: &Path) -> Result<(), HypervisorError> {
        let failed = |reason: String| HypervisorError::Snapshot {
            dir: dir.to_path_buf(),
            reason,
        };
        if self.jailed {
            return Err(failed(
                "the VM runs jailed; its snapshot would be written inside the jail".into(),
            ));
        }
        let socket = self
            .api_socket
            .clone()
            .ok_or_else(|| failed("the VM is not running".into()))?;
        let request = format!("snapshot {}\n", dir.display());
        let answer = tokio::time::timeout(SNAPSHOT_TIMEOUT, api_request(&socket, &request))
            .await
            .map_err(|_| {
                failed(format!(
                    "hull-vmm did not answer within {SNAPSHOT_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| failed(format!("hull-vmm's API socket {}: {e}", socket.display())))?;
        match answer.strip_prefix("error: ") {
            None if answer == "ok" => Ok(()),
            Some(why) => Err(failed(why.to_string())),
            None => Err(failed(format!("unexpected answer {answer:?}"))),
        }
    }
}

/// Sends one request line on hull-vmm's API socket and reads the answer line.
async fn api_request(socket: &Path, request: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let reachable = crate::uds_path::Reachable::new(socket)?;
    let mut stream = tokio::net::UnixStream::connect(reachable.path()).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut line = String::new();
    // The answer is one short line; a longer one is cut at 4 KiB.
    let mut reader = BufReader::new(stream.take(4096));
    reader.read_line(&mut line).await?;
    Ok(line.trim_end().to_string())
}

#[cfg(test)]
mod tests;
