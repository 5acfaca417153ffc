//! The NIC of a pool VM (`crate::pool`), booted before any pod's network exists: a tap
//! in a network namespace of its own (nothing else in it, no address, down), so the
//! VM has a virtio-net device from boot (a VM's NICs cannot be added later). When a pod
//! takes the VM, the tap moves into the pod's netns (a tap keeps working across
//! namespaces: the VMM's fd stays attached) and is wired to the pod's veth there like
//! any tap, and the guest interface is given the veth's MAC (see
//! `GuestInterface::device_mac`).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::{format_mac, netns, tap, wire, NetworkError};

/// The tap's name, in the pool netns and then in the pod's (a fresh CNI netns holds
/// only lo and the veth; the cold path names its first tap the same).
const TAP_NAME: &str = "hulltap0";

#[derive(Debug)]
pub struct PoolNic {
    /// The private netns, held open: it lives while the tap is in it.
    netns: File,
    tap: OwnedFd,
    /// The address the VM's NIC has (locally administered, random).
    mac: String,
}

impl PoolNic {
    /// Creates the netns and the tap in it.
    pub fn create() -> Result<PoolNic, NetworkError> {
        let made = std::thread::Builder::new()
            .name("hull-pool-nic".into())
            .spawn(|| -> std::io::Result<(File, OwnedFd)> {
                // Only this thread moves to the new netns; it ends right after.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                let netns = File::open("/proc/thread-self/ns/net")?;
                let tap = tap::open(TAP_NAME)?;
                Ok((netns, tap))
            })
            .map_err(pool_io)?
            .join()
            .map_err(|_| pool_io(std::io::Error::other("the pool NIC thread panicked")))?
            .map_err(|source| NetworkError::Tap {
                netns: pool_netns(),
                name: TAP_NAME.into(),
                source,
            })?;
        let (netns, tap) = made;
        Ok(PoolNic {
            netns,
            tap,
            mac: format_mac(&random_mac()),
        })
    }

    /// The tap's fd, for the hypervisor.
    pub fn tap_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }

    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// Moves the tap into `target` (the pod's netns, opened from `path`); returns its
    /// name and fd there, and the VM NIC's address.
    pub(super) fn move_to(
        self,
        target: &File,
        path: &Path,
    ) -> Result<((String, OwnedFd), String), NetworkError> {
        let target_fd = target.try_clone().map_err(|source| NetworkError::Io {
            netns: path.to_path_buf(),
            source,
        })?;
        netns::run_in(&self.netns, &pool_netns(), move || async move {
            wire::move_link(&pool_netns(), TAP_NAME, target_fd.as_raw_fd()).await
        })??;
        Ok(((TAP_NAME.to_string(), self.tap), self.mac))
    }
}

/// How errors name the pool VM's netns (it has no path).
fn pool_netns() -> PathBuf {
    PathBuf::from("(the pool VM's own netns)")
}

fn pool_io(source: std::io::Error) -> NetworkError {
    NetworkError::Io {
        netns: pool_netns(),
        source,
    }
}

/// A locally administered unicast address: 02:xx:xx:xx:xx:xx.
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    let id = crate::sandbox::state_dir::new_id();
    for (i, b) in mac.iter_mut().enumerate().skip(1) {
        *b = u8::from_str_radix(id.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    mac[0] = 0x02;
    mac
}
