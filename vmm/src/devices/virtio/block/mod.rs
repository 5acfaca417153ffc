//! virtio-blk backed by a host file: read, write (unless read-only), flush, get-id.
//! `request.rs` validates and runs one request; `device.rs` is the queue side.

mod device;
mod request;

pub use device::{Block, BlockOptions};
