//! virtio-net on a tap for both backends: the device arguments (QEMU) or entries
//! (hull-vmm) for each [`VmDevice::Net`], and the fd inheritance that hands the taps to
//! the hypervisor process. The taps themselves are made and owned by
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
        VmDevice::SharedDir { .. } => None,
    })
}

/// The tap fds of `devices` stay open across the hypervisor's exec: they are
/// close-on-exec in this process, so the flag is cleared in the child only.
pub fn inherit(cmd: &mut Command, devices: &[VmDevice]) {
    let fds: Vec<RawFd> = nets(devices).map(|n| n.tap_fd).collect();
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

/// QEMU's arguments (microvm: virtio-mmio, so `virtio-net-device`), with the fds
/// inherited.
pub fn qemu_args(cmd: &mut Command, devices: &[VmDevice]) {
    for (i, n) in nets(devices).enumerate() {
        cmd.arg("-netdev")
            .arg(format!("tap,id=net{i},fd={}", n.tap_fd))
            .arg("-device")
            .arg(format!("virtio-net-device,netdev=net{i},mac={}", n.mac));
    }
    inherit(cmd, devices);
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
        let args: Vec<String> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
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
