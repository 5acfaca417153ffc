//! The VM description: what the runtime (or `hull-vmm --config vm.json`) asks for.
//! [`VmConfig::validate`] rejects anything hull-vmm cannot honour before any KVM work.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest vCPU count accepted: what the MP table in the 1 KiB EBDA can describe.
pub const MAX_VCPUS: u8 = crate::arch::x86_64::mptable::MAX_CPUS;
/// Smallest guest memory (MiB): room for the boot structures and a tiny kernel.
pub const MIN_MEM_MIB: u32 = 2;
/// Largest guest memory (MiB): 1 TiB.
pub const MAX_MEM_MIB: u32 = 1 << 20;
/// Longest kernel command line accepted (bytes, without the NUL).
pub const MAX_CMDLINE_LEN: usize = 4095;

/// How to interpret the kernel file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelFormat {
    /// ELF if it starts with the ELF magic, bzImage if it has the `HdrS` setup header.
    #[default]
    Auto,
    /// ELF (vmlinux): PVH entry if it has the `XEN_ELFNOTE_PHYS32_ENTRY` note, else the
    /// 64-bit Linux boot protocol at `e_entry`.
    Elf,
    /// bzImage: the 64-bit Linux boot protocol (needs `XLF_KERNEL_64`).
    Bzimage,
    /// A flat real-mode program loaded at 0x7c00 and entered at `0000:7c00` like a boot
    /// sector (no zero page, command line or initrd). For tests and tiny guests.
    Raw16,
}

/// A VM to boot. JSON example:
/// `{"kernel": "vmlinux", "cmdline": "console=ttyS0 reboot=k", "vcpus": 2, "mem_mib": 256,
///   "console": "/run/vm/console.log"}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel image (vmlinux ELF, bzImage, or raw16 program).
    pub kernel: PathBuf,
    /// How to read `kernel`.
    #[serde(default)]
    pub kernel_format: KernelFormat,
    /// Initial ramdisk, placed at the top of low memory.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Number of vCPUs (1..=40, the MP table's limit).
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_mem_mib")]
    pub mem_mib: u32,
    /// Back guest memory with a shared memfd, so that another process (a vhost-user
    /// backend) can map it. On by default.
    #[serde(default = "default_true")]
    pub shared_memory: bool,
    /// Back guest memory with 2 MiB huge pages (needs free pages in
    /// `/proc/sys/vm/nr_hugepages`; `mem_mib` must be even).
    #[serde(default)]
    pub hugepages: bool,
    /// File the serial console (COM1, ttyS0) is written to; created or truncated.
    /// Without it, guest console output is discarded.
    #[serde(default)]
    pub console: Option<PathBuf>,
    /// Most bytes of guest console output written to `console`; the rest is dropped
    /// (a hostile guest must not fill the host's disk). 0 means no limit.
    #[serde(default = "default_console_limit")]
    pub console_limit_bytes: u64,
    /// File or FIFO read as serial console input.
    #[serde(default)]
    pub console_input: Option<PathBuf>,
    /// Legacy devices.
    #[serde(default)]
    pub devices: Devices,
    /// virtio-vsock with the hybrid Unix socket (the agent's channel).
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    /// virtio-net interfaces on taps the caller opened.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// virtio-fs served by virtiofsd (vhost-user); needs `shared_memory`.
    #[serde(default)]
    pub fs: Option<FsConfig>,
    /// seccomp filters on the vCPU and event-loop threads (on by default; turn off only
    /// to debug a `SIGSYS`).
    #[serde(default = "default_true")]
    pub seccomp: bool,
}

/// virtio-vsock: the guest's CID and the host Unix socket of Firecracker's hybrid model
/// (host clients connect to `uds_path` and write `CONNECT <port>\n`; guest connections
/// to host port P go to `<uds_path>_P`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// 3..=0xffff_fffe.
    pub guest_cid: u64,
    /// Created by hull-vmm (must not exist), removed when the VM ends.
    pub uds_path: PathBuf,
}

/// A virtio-blk disk backed by a host file (raw image; size rounded down to 512 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// The raw image; with `fd`, only what names the disk in messages.
    pub path: PathBuf,
    /// An open file inherited from the parent, used instead of opening `path` (a
    /// jailed hull-vmm need not see the file). hull-vmm duplicates the fd.
    #[serde(default)]
    pub fd: Option<i32>,
    #[serde(default)]
    pub read_only: bool,
    /// Serial the guest reads with GET_ID (`/sys/block/vdX/serial`), at most 20 bytes.
    #[serde(default)]
    pub id: String,
    /// The disk's contents die with the VM: no FLUSH feature is offered, so the
    /// guest never waits for the host file to be synced.
    #[serde(default)]
    pub volatile: bool,
}

/// A virtio-net interface on an open tap fd (opened with `IFF_TAP | IFF_NO_PI`, and
/// `IFF_VNET_HDR` for checksum/TSO offloads). hull-vmm duplicates the fd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub tap_fd: i32,
    /// `aa:bb:cc:dd:ee:ff`; default `02:68:75:6c:<slot>:00`.
    #[serde(default)]
    pub mac: Option<String>,
}

/// virtio-fs: the vhost-user socket of a running virtiofsd and the tag the guest mounts
/// (`mount -t virtiofs <tag> /mnt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    pub socket: PathBuf,
    /// 1..=36 bytes.
    pub tag: String,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Most virtio devices: one edge-triggered ISA IRQ each (see `builder::VIRTIO_IRQS`).
pub const MAX_VIRTIO_DEVICES: usize = 8;
/// Longest `uds_path`: `sun_path` is 108 bytes and `_<port>` (up to 11) is appended.
pub const MAX_UDS_PATH: usize = 108 - 12;

/// Which legacy devices the VM gets on its I/O port bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// 8250 UART at 0x3f8, IRQ 4.
    #[serde(default = "default_true")]
    pub serial: bool,
    /// i8042 at 0x60/0x64; only its CPU-reset command (0xFE) does anything.
    #[serde(default = "default_true")]
    pub i8042: bool,
    /// Debug-exit port 0x501 (for tests): a byte written there ends the VM.
    #[serde(default)]
    pub debug_exit: bool,
}

impl Default for Devices {
    fn default() -> Self {
        Devices {
            serial: true,
            i8042: true,
            debug_exit: false,
        }
    }
}

/// 64 MiB of console log per VM.
fn default_console_limit() -> u64 {
    64 << 20
}

fn default_true() -> bool {
    true
}
fn default_vcpus() -> u8 {
    1
}
fn default_mem_mib() -> u32 {
    128
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            kernel_format: KernelFormat::Auto,
            initrd: None,
            cmdline: String::new(),
            vcpus: default_vcpus(),
            mem_mib: default_mem_mib(),
            shared_memory: true,
            hugepages: false,
            console: None,
            console_limit_bytes: default_console_limit(),
            console_input: None,
            devices: Devices::default(),
            vsock: None,
            block: Vec::new(),
            net: Vec::new(),
            fs: None,
            seccomp: true,
        }
    }

    /// Parses the JSON form.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    /// Checks everything that can be checked without touching KVM or memory.
    pub fn validate(&self) -> Result<()> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(Error::Config(format!(
                "vcpus must be 1..={MAX_VCPUS}, got {}",
                self.vcpus
            )));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(Error::Config(format!(
                "mem_mib must be {MIN_MEM_MIB}..={MAX_MEM_MIB}, got {}",
                self.mem_mib
            )));
        }
        if self.hugepages && self.mem_mib & 1 != 0 {
            return Err(Error::Config(
                "mem_mib must be a multiple of 2 with hugepages".into(),
            ));
        }
        if self.cmdline.len() > MAX_CMDLINE_LEN {
            return Err(Error::Config(format!(
                "cmdline is {} bytes, the limit is {MAX_CMDLINE_LEN}",
                self.cmdline.len()
            )));
        }
        if let Some(bad) = self.cmdline.chars().find(|c| !(' '..='~').contains(c)) {
            return Err(Error::Config(format!(
                "cmdline may hold printable ASCII only, found {bad:?}"
            )));
        }
        if self.kernel_format == KernelFormat::Raw16
            && (self.initrd.is_some() || !self.cmdline.is_empty())
        {
            return Err(Error::Config(
                "a raw16 kernel takes no initrd and no command line".into(),
            ));
        }
        self.validate_virtio()
    }

    /// virtio devices, one per virtio-mmio slot: disks, interfaces, fs, vsock.
    pub fn virtio_device_count(&self) -> usize {
        self.block.len()
            + self.net.len()
            + usize::from(self.fs.is_some())
            + usize::from(self.vsock.is_some())
    }

    fn validate_virtio(&self) -> Result<()> {
        let count = self.virtio_device_count();
        if let Some(fs) = &self.fs {
            if !self.shared_memory {
                return Err(Error::Config(
                    "fs needs shared_memory (virtiofsd maps guest memory)".into(),
                ));
            }
            if fs.tag.is_empty() || fs.tag.len() > 36 {
                return Err(Error::Config("fs tag must be 1..=36 bytes".into()));
            }
        }
        for n in &self.net {
            if n.tap_fd < 0 {
                return Err(Error::Config(format!("bad tap_fd {}", n.tap_fd)));
            }
            if let Some(mac) = &n.mac {
                if parse_mac(mac).is_none() {
                    return Err(Error::Config(format!("bad mac {mac:?}")));
                }
            }
        }
        if count > MAX_VIRTIO_DEVICES {
            return Err(Error::Config(format!(
                "{count} virtio devices, at most {MAX_VIRTIO_DEVICES}"
            )));
        }
        if count > 0 && self.kernel_format == KernelFormat::Raw16 {
            return Err(Error::Config(
                "virtio devices are announced on the command line, which raw16 has not".into(),
            ));
        }
        if let Some(v) = &self.vsock {
            if !(3..=0xffff_fffe).contains(&v.guest_cid) {
                return Err(Error::Config(format!(
                    "vsock guest_cid must be 3..=4294967294, got {}",
                    v.guest_cid
                )));
            }
            let len = v.uds_path.as_os_str().len();
            if len == 0 || len > MAX_UDS_PATH {
                return Err(Error::Config(format!(
                    "vsock uds_path must be 1..={MAX_UDS_PATH} bytes"
                )));
            }
        }
        for b in &self.block {
            if b.id.len() > 20 {
                return Err(Error::Config(format!(
                    "block id {:?} is longer than 20 bytes",
                    b.id
                )));
            }
        }
        Ok(())
    }

    /// Guest memory size in bytes.
    pub fn mem_bytes(&self) -> u64 {
        u64::from(self.mem_mib) << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_defaults_and_rejections() {
        let c = VmConfig::from_json(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(c, VmConfig::new("/k"));
        assert!(c.validate().is_ok());
        assert!(VmConfig::from_json(r#"{"kernel": "/k", "vcpu": 2}"#).is_err());
        let c = VmConfig::from_json(r#"{"kernel": "/k", "kernel_format": "raw16"}"#).unwrap();
        assert_eq!(c.kernel_format, KernelFormat::Raw16);

        let mut bad = VmConfig::new("/k");
        bad.vcpus = 0;
        assert!(matches!(bad.validate(), Err(Error::Config(_))));
        let mut bad = VmConfig::new("/k");
        bad.mem_mib = 1;
        assert!(bad.validate().is_err());
        let mut bad = VmConfig::new("/k");
        bad.cmdline = "a\nb".into();
        assert!(bad.validate().is_err());
        let mut bad = VmConfig::new("/k");
        bad.cmdline = "x".repeat(MAX_CMDLINE_LEN + 1);
        assert!(bad.validate().is_err());
        let c = VmConfig::from_json(
            r#"{"kernel": "/k", "vsock": {"guest_cid": 3, "uds_path": "/run/v.sock"},
                "block": [{"path": "/d.img", "read_only": true, "id": "root"}]}"#,
        )
        .unwrap();
        assert!(c.validate().is_ok());
        assert!(c.block[0].read_only);
        assert!(VmConfig::from_json(
            r#"{"kernel": "/k", "vsock": {"guest_cid": 3, "uds_path": "/x", "cid": 1}}"#
        )
        .is_err());
        assert!(
            VmConfig::from_json(r#"{"kernel": "/k", "block": [{"path": "/d", "ro": true}]}"#)
                .is_err()
        );
        let mut bad = c.clone();
        bad.vsock.as_mut().unwrap().guest_cid = 2;
        assert!(bad.validate().is_err());
        let mut bad = c.clone();
        bad.vsock.as_mut().unwrap().uds_path = "x".repeat(200).into();
        assert!(bad.validate().is_err());
        let mut bad = c.clone();
        bad.block[0].id = "x".repeat(21);
        assert!(bad.validate().is_err());
        let mut bad = c.clone();
        bad.block = vec![c.block[0].clone(); 8];
        assert!(bad.validate().is_err());

        let mut bad = VmConfig::new("/k");
        bad.hugepages = true;
        bad.mem_mib = 3;
        assert!(bad.validate().is_err());
    }
}
