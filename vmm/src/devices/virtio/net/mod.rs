//! virtio-net on a tap file descriptor the runtime opened (and passes in). Offloads are
//! offered only when the tap carries virtio-net headers (`IFF_VNET_HDR`), and the
//! guest-receive offloads the driver acks are switched on in the tap (`TUNSETOFFLOAD`):
//! the guest never gets a feature the host side cannot honour.

mod device;
mod tap;

pub use device::Net;
pub use tap::Tap;

/// `struct virtio_net_hdr_v1` (VERSION_1 always has `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame plus header either way (64 KiB GSO frames).
pub const MAX_FRAME: usize = 65562;
