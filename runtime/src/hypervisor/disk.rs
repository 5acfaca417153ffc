//! virtio-blk disks for both backends: the device arguments (QEMU) or entries
//! (hull-vmm) for each [`VmDevice::Disk`]. A disk is an open file of this process
//! that the hypervisor inherits (see [`super::inherit_device_fds`]), so a jailed
//! hypervisor never needs to see or own the file's path.

use std::os::fd::RawFd;

use tokio::process::Command;

use super::VmDevice;

/// One virtio-blk disk on an open read-write file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDevice {
    pub fd: RawFd,
    /// What the guest finds it by (`/sys/block/vdX/serial`), at most 20 bytes.
    pub serial: String,
    /// Its contents die with the VM: flushes are acknowledged without syncing the
    /// host file (nothing could read the data after a host crash anyway).
    pub volatile: bool,
}

pub(super) fn disks(devices: &[VmDevice]) -> impl Iterator<Item = &DiskDevice> {
    devices.iter().filter_map(|d| match d {
        VmDevice::Disk(disk) => Some(disk),
        _ => None,
    })
}

/// QEMU's arguments: each fd in an fd set (`-add-fd`), opened by a raw `file` block
/// node through `/dev/fdset/N`, under a `virtio-blk-device` (microvm: virtio-mmio).
pub fn qemu_args(cmd: &mut Command, devices: &[VmDevice]) {
    for (i, d) in disks(devices).enumerate() {
        let set = i + 1;
        let no_flush = if d.volatile { ",cache.no-flush=on" } else { "" };
        cmd.arg("-add-fd")
            .arg(format!("fd={},set={set}", d.fd))
            .arg("-blockdev")
            .arg(format!(
                "driver=file,node-name=disk{i},filename=/dev/fdset/{set}{no_flush}"
            ))
            .arg("-device")
            .arg(format!(
                "virtio-blk-device,drive=disk{i},serial={}",
                d.serial
            ));
    }
}

/// hull-vmm's `block` entries (hull-vmm duplicates the inherited fd).
pub fn hull_vmm_config(devices: &[VmDevice]) -> Vec<::hull_vmm::BlockConfig> {
    disks(devices)
        .map(|d| ::hull_vmm::BlockConfig {
            path: format!("inherited fd {}", d.fd).into(),
            fd: Some(d.fd),
            read_only: false,
            id: d.serial.clone(),
            volatile: d.volatile,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices() -> Vec<VmDevice> {
        vec![VmDevice::Disk(DiskDevice {
            fd: 9,
            serial: "hull-scratch".into(),
            volatile: true,
        })]
    }

    #[test]
    fn qemu_gets_an_fd_set_a_file_node_and_a_virtio_mmio_disk() {
        let mut cmd = Command::new("qemu");
        qemu_args(&mut cmd, &devices());
        assert_eq!(
            crate::hypervisor::args_of(&cmd),
            [
                "-add-fd",
                "fd=9,set=1",
                "-blockdev",
                "driver=file,node-name=disk0,filename=/dev/fdset/1,cache.no-flush=on",
                "-device",
                "virtio-blk-device,drive=disk0,serial=hull-scratch"
            ]
        );
    }

    #[test]
    fn hull_vmm_gets_the_fd_serial_and_volatility() {
        let cfg = hull_vmm_config(&devices());
        assert_eq!(cfg.len(), 1);
        assert_eq!(cfg[0].fd, Some(9));
        assert_eq!(cfg[0].id, "hull-scratch");
        assert!(cfg[0].volatile && !cfg[0].read_only);
    }
}
