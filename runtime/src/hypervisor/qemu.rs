//! QEMU backend: `qemu-system-x86_64 -M microvm` with KVM where the host has hardware
//! virtualisation, TCG elsewhere; vsock through rust-vmm's vhost-device-vsock
//! (vhost-user), which speaks Firecracker's hybrid-vsock protocol on a host Unix socket.
//!
//! Per-VM files: in the socket dir (the state dir, or the jail's, see `crate::jail`)
//! `vhost-vsock.sock` (QEMU <-> backend) and `vsock.sock` (hybrid vsock, host side); in
//! the state dir `console.log`, `qemu.log` and `vhost-vsock.log` (stderr). A shared dir
//! adds `virtiofsd.sock` and `virtiofsd.log` (see [`super::virtiofs`]).
//!
//! Jailed, QEMU and vhost-device-vsock run as the sandbox uid in their jail roots, and
//! QEMU also gets its own seccomp filter ([`QEMU_SANDBOX`]).

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Command;
use tracing::Instrument;

use super::ready::wait_for_socket;
use super::{
    boot_files, virtiofs, Console, Hypervisor, HypervisorError, VmDevice, VmSpec, VHOST_VSOCK_SOCK,
    VSOCK_SOCK,
};
use crate::child::HelperProcess;
use crate::host;
use crate::jail::{self, Devices};
use crate::uds_path;

/// Guest CID given to every VM: each VM has its own vsock backend, so CIDs never meet.
pub const GUEST_CID: u32 = 3;

/// TCG with a bounded translation cache: QEMU's default lets it grow to 1 GiB of
/// host memory, which no pod cgroup limit (VM + `hypervisor.host_overhead_mib`) could
/// hold. 64 MiB holds a guest boot and small workloads without flushing.
const TCG_ACCEL: &str = "tcg,tb-size=64";

/// QEMU's own seccomp filter, on when the VM is jailed: no obsolete system calls, no
/// set*id, no fork/exec, no scheduler or cpu-affinity changes.
pub const QEMU_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// KVM only where it boots Linux (hardware VMX/SVM); TCG otherwise (PVM or none).
    pub fn for_host() -> Accel {
        if host::kvm_kind().boots_linux() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
    /// virtiofsd, when found (needed only for shared dirs).
    pub virtiofsd: Option<PathBuf>,
    pub accel: Accel,
}

pub struct Qemu {
    config: QemuConfig,
    vsock_backend: Option<HelperProcess>,
    /// One virtiofsd per shared dir, with the vhost-user socket QEMU connects to.
    fs_backends: Vec<(HelperProcess, String, PathBuf)>,
    qemu: Option<HelperProcess>,
    vsock_uds: Option<PathBuf>,
}

impl Qemu {
    pub fn new(config: QemuConfig) -> Qemu {
        Qemu {
            config,
            vsock_backend: None,
            fs_backends: Vec::new(),
            qemu: None,
            vsock_uds: None,
        }
    }

    /// Starts vhost-device-vsock for this VM and waits for its vhost-user socket.
    async fn start_vsock_backend(&mut self, spec: &VmSpec) -> Result<PathBuf, HypervisorError> {
        let vhost_sock = spec.sock_dir.join(VHOST_VSOCK_SOCK);
        let uds = spec.sock_dir.join(VSOCK_SOCK);
        let mut cmd = jail::command(
            spec.jail.as_deref(),
            &spec.sock_dir,
            "vhost-device-vsock",
            &self.config.vhost_vsock,
            &[],
            Devices::Basic,
        )?;
        cmd.arg("--guest-cid")
            .arg(GUEST_CID.to_string())
            .arg("--socket")
            .arg(uds_path::for_helper(&spec.sock_dir, VHOST_VSOCK_SOCK))
            .arg("--uds-path")
            .arg(uds_path::for_helper(&spec.sock_dir, VSOCK_SOCK))
            .stdout(Stdio::null());
        let mut backend = HelperProcess::spawn(
            "vhost-device-vsock",
            cmd,
            &spec.state_dir.join("vhost-vsock.log"),
        )?;
        let waited = wait_for_socket(&vhost_sock, &mut backend, Duration::from_secs(10)).await;
        self.vsock_backend = Some(backend);
        waited?;
        Ok(uds)
    }

    /// Starts one virtiofsd per shared dir and waits for each socket.
    async fn start_fs_backends(&mut self, spec: &VmSpec) -> Result<(), HypervisorError> {
        for (i, dev) in spec.devices.iter().enumerate() {
            let VmDevice::SharedDir { tag, host_dir } = dev else {
                continue;
            };
            let bin = self.config.virtiofsd.clone().ok_or(HypervisorError::MissingHelper {
                what: "virtiofsd",
                fix: "apt-get install libseccomp-dev libcap-ng-dev && scripts/setup (cargo install --locked --root /usr/local/libexec/hull virtiofsd@1.14.0)",
            })?;
            let name = if i == 0 {
                "virtiofsd".to_string()
            } else {
                format!("virtiofsd-{i}")
            };
            let sock_name = format!("{name}.sock");
            let sock = spec.sock_dir.join(&sock_name);
            let log = spec.state_dir.join(format!("{name}.log"));
            let mut backend = virtiofs::spawn(
                spec.jail.as_deref(),
                &spec.sock_dir,
                &bin,
                &sock_name,
                host_dir,
                &log,
            )?;
            let waited = wait_for_socket(&sock, &mut backend, Duration::from_secs(10)).await;
            self.fs_backends.push((
                backend,
                tag.clone(),
                uds_path::for_helper(&spec.sock_dir, &sock_name),
            ));
            waited?;
            if let Some(j) = &spec.jail {
                j.give(&sock)?;
            }
        }
        Ok(())
    }

    /// QEMU runs in the socket dir and finds its sockets there by name (`uds_path`).
    fn qemu_command(&self, spec: &VmSpec, vsock: bool) -> Result<Command, HypervisorError> {
        let devices = match self.config.accel {
            Accel::Kvm => Devices::Kvm,
            Accel::Tcg => Devices::Basic,
        };
        let mut cmd = jail::command(
            spec.jail.as_deref(),
            &spec.sock_dir,
            "qemu",
            &self.config.qemu,
            &[&spec.kernel, &spec.initrd],
            devices,
        )?;
        if spec.jail.is_some() {
            cmd.args(["-sandbox", QEMU_SANDBOX]);
        }
        let mem = format!("{}M", spec.memory_mib);
        let (accel, cpu) = match self.config.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => (TCG_ACCEL, "max"),
        };
        cmd.arg("-name")
            .arg(format!("hull-{},debug-threads=on", spec.id))
            // microvm: no PCI, no firmware, virtio-mmio devices announced on the kernel
            // command line (acpi=off makes QEMU add `virtio_mmio.device=` itself).
            .args(["-M", "microvm,acpi=off,memory-backend=mem"])
            .args(["-accel", accel, "-cpu", cpu])
            .arg("-smp")
            .arg(spec.vcpus.to_string())
            .arg("-m")
            .arg(&mem)
            // Guest RAM in a shared memfd: vhost-user backends map it.
            .arg("-object")
            .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"))
            .args(["-nodefaults", "-no-user-config", "-nographic"])
            // The guest stops the VM by rebooting (reboot=t); -no-reboot turns that
            // into QEMU exiting with status 0.
            .arg("-no-reboot")
            // The console comes to us on stdout (see console.rs).
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(&spec.kernel)
            .arg("-initrd")
            .arg(&spec.initrd)
            .arg("-append")
            .arg(&spec.cmdline)
            .stdout(Stdio::piped());
        if vsock {
            cmd.arg("-chardev")
                .arg(format!(
                    "socket,id=vsock,path={}",
                    uds_path::for_helper(&spec.sock_dir, VHOST_VSOCK_SOCK).display()
                ))
                .args(["-device", "vhost-user-vsock-device,chardev=vsock"]);
        }
        // The tag goes on the QEMU device only: virtiofsd's --tag crashes QEMU 7.x.
        for (i, (_, tag, sock)) in self.fs_backends.iter().enumerate() {
            cmd.arg("-chardev")
                .arg(format!("socket,id=fs{i},path={}", sock.display()))
                .arg("-device")
                .arg(format!("vhost-user-fs-device,chardev=fs{i},tag={tag}"));
        }
        super::net::qemu_args(&mut cmd, &spec.devices);
        super::disk::qemu_args(&mut cmd, &spec.devices);
        super::inherit_device_fds(&mut cmd, &spec.devices);
        Ok(cmd)
    }
}

#[async_trait]
impl Hypervisor for Qemu {
    fn name(&self) -> String {
        match self.config.accel {
            Accel::Kvm => "qemu (kvm)".into(),
            Accel::Tcg => "qemu (tcg)".into(),
        }
    }

    async fn launch(&mut self, spec: &VmSpec) -> Result<Console, HypervisorError> {
        if let Some(snapshot) = &spec.restore {
            return Err(HypervisorError::Snapshot {
                dir: snapshot.dir.clone(),
                reason: "QEMU does not restore hull-vmm snapshots; templates need hull-vmm".into(),
            });
        }
        boot_files::check_kernel(&spec.kernel)?;
        boot_files::check_initrd(&spec.initrd)?;
        if spec.vsock {
            self.vsock_uds = Some(self.start_vsock_backend(spec).await?);
        }
        self.start_fs_backends(spec)
            .instrument(tracing::info_span!("virtiofsd_start"))
            .await?;
        let cmd = self.qemu_command(spec, spec.vsock)?;
        tracing::debug!(?cmd, "launching qemu");
        let mut qemu = HelperProcess::spawn("qemu", cmd, &spec.state_dir.join("qemu.log"))?;
        let stdout = qemu.child_mut().stdout.take();
        self.qemu = Some(qemu);
        let stdout = stdout.ok_or(HypervisorError::Io {
            what: "the console pipe",
            source: std::io::Error::other("qemu's stdout was not captured"),
        })?;
        Console::spawn(stdout, &spec.state_dir.join("console.log"))
            .await
            .map_err(|source| HypervisorError::Io {
                what: "the console log",
                source,
            })
    }

    fn vsock_uds(&self) -> Option<PathBuf> {
        self.vsock_uds.clone()
    }

    async fn wait(&mut self) -> Result<ExitStatus, HypervisorError> {
        match self.qemu.as_mut() {
            Some(q) => Ok(q.wait().await?),
            None => std::future::pending().await,
        }
    }

    async fn stop(&mut self, grace: Duration) -> Result<(), HypervisorError> {
        // vhost-device-vsock outlives its VM (it waits for the next one): always stop it.
        let backends = self
            .vsock_backend
            .iter_mut()
            .chain(self.fs_backends.iter_mut().map(|(p, _, _)| p));
        Ok(crate::child::stop_vm_processes(self.qemu.as_mut(), grace, backends).await?)
    }

    fn pids(&self) -> Vec<u32> {
        self.processes().filter_map(|p| p.pid()).collect()
    }

    fn diagnostics(&self) -> String {
        crate::child::stderr_tails(self.processes())
    }
}

impl Qemu {
    /// Every helper process, QEMU first.
    fn processes(&self) -> impl Iterator<Item = &HelperProcess> {
        self.qemu
            .iter()
            .chain(self.vsock_backend.iter())
            .chain(self.fs_backends.iter().map(|(p, _, _)| p))
    }
}
