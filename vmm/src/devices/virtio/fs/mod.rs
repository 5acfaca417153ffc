//! virtio-fs as a vhost-user frontend: virtiofsd (the backend, its own process) serves
//! the queues directly from the shared memfd guest memory; hull-vmm only negotiates,
//! hands over the memory table, the rings, the guest's notification eventfds (kick) and
//! its own call eventfds, and turns calls into virtio-mmio interrupts.

mod device;

pub use device::Fs;

/// Longest tag (`virtio_fs_config.tag` is 36 bytes, not NUL-terminated when full).
pub const MAX_TAG: usize = 36;
