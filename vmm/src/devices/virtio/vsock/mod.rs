//! virtio-vsock with Firecracker's hybrid host side: the guest's vsock is one host Unix
//! socket `uds_path`.
//! - Host -> guest: connect to `uds_path`, write `CONNECT <port>\n`, read
//!   `OK <host_port>\n` once the guest accepted; the stream then carries the connection.
//! - Guest -> host port P: hull-vmm connects to `<uds_path>_P`.
//!
//! `handshake.rs` parses the `CONNECT` line, `connection.rs` is one connection's state
//! machine (credit-based flow control), `muxer.rs` owns the sockets and routes packets,
//! `device.rs` moves packets between the virtqueues and the muxer.

mod connection;
mod device;
pub mod handshake;
mod muxer;
mod packet;
mod uds;

pub use device::Vsock;
#[cfg(feature = "fuzzing")]
pub use muxer::Muxer;
#[cfg(any(test, feature = "fuzzing"))]
pub use packet::Header;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Payload bytes one packet may carry (both directions).
pub const MAX_PKT_DATA: u32 = 64 << 10;
/// Receive buffer each connection advertises to the guest (`buf_alloc`): bytes the guest
/// may send before hull-vmm forwarded them to the host socket.
pub const CONN_BUF_SIZE: u32 = 256 << 10;
