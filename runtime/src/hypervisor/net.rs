//! virtio-net on a tap for both backends: the device arguments (QEMU) or entries
//! (hull-vmm) for each [`VmDevice::Net`]; the hypervisor process inherits the taps
//! ([`super::inherit_device_fds`]). The taps themselves are made and owned by
//! `crate::network` (in the pod's netns); here they are only fd numbers.

use std::os::fd::RawFd;

use tokio::process::Command;

use super::VmDevice;

/// One virtio-net interface: an open tap fd of this process and the guest MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    pub tap_fd: RawFd,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

fn nets(devices: &[VmDevice]) -> impl Iterator<Item = &NetDevice> {
    devices.iter().filter_map(|d| match d {
        VmDevice::Net(n) => Some(n),
        _ => None,
    })
}

/// QEMU's arguments (microvm: virtio-mmio, so `virtio-net-device`).
pub fn qemu_args(cmd: &mut Command, devices: &[VmDevice]) {
    for (i, n) in nets(devices).enumerate() {
        cmd.arg("-netdev")
            .arg(format!("tap,id=net{i},fd={}", n.tap_fd))
            .arg("-device")
            .arg(format!("virtio-net-device,netdev=net{i},mac={}", n.mac));
    }
}

/// hull-vmm's `net` entries (hull-vmm duplicates the inherited fd).
pub fn hull_vmm_config(devices: &[VmDevice]) -> Vec<::hull_vmm::NetConfig> {
    nets(devices)
        .map(|n| ::hull_vmm::NetConfig {
            tap_fd: n.tap_fd,
            mac: Some(n.mac.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices() -> Vec<VmDevice> {
        vec![
            VmDevice::SharedDir {
                tag: "hullshare".into(),
                host_dir: "/tmp".into(),
            },
            VmDevice::Net(NetDevice {
                tap_fd: 7,
                mac: "0a:58:0a:f4:00:05".into(),
            }),
        ]
    }

    #[test]
    fn qemu_gets_a_tap_netdev_and_a_virtio_mmio_nic() {
        let mut cmd = Command::new("qemu");
        qemu_args(&mut cmd, &devices());
        assert_eq!(
            crate::hypervisor::args_of(&cmd),
            [
                "-netdev",
                "tap,id=net0,fd=7",
                "-device",
                "virtio-net-device,netdev=net0,mac=0a:58:0a:f4:00:05"
            ]
        );
    }

    #[test]
    fn hull_vmm_gets_the_fd_and_mac() {
        let cfg = hull_vmm_config(&devices());
        assert_eq!(cfg.len(), 1);
        assert_eq!(cfg[0].tap_fd, 7);
        assert_eq!(cfg[0].mac.as_deref(), Some("0a:58:0a:f4:00:05"));
    }
}
