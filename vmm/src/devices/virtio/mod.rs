//! virtio devices on the virtio-mmio transport.
//!
//! Every device is a pure state machine behind [`VirtioDevice`]: the transport
//! ([`mmio::MmioTransport`]) owns the registers, feature negotiation and the queue
//! configuration; once the driver sets DRIVER_OK it hands the device its queues, guest
//! memory and an [`IrqTrigger`]. Queue notifications arrive as [`VirtioDevice::process_queue`]
//! calls (from the event loop, fed by ioeventfds), host-side I/O as
//! [`VirtioDevice::process_backend`]. No KVM anywhere: tests drive devices with
//! in-process memory (see `tests/`).
//!
//! Layout per device: `<dev>/mod.rs` (public pieces), `<dev>/device.rs` (the
//! `VirtioDevice`), plus the device's own request/connection modules.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub mod block;
pub mod event_handler;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod vsock;

#[cfg(test)]
mod tests;

/// `VIRTIO_F_VERSION_1`: every hull device is a modern (virtio 1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;

/// Why a device could not start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// The driver configured a queue the device cannot use.
    #[error("queue {0} is not usable (size, alignment or address outside guest memory)")]
    BadQueue(usize),
    /// The device needs a queue the driver did not make ready.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// A host resource for the device failed.
    #[error("backend: {0}")]
    Backend(String),
}

/// The device's interrupt line: sets bits of the transport's InterruptStatus register
/// and fires the eventfd (an irqfd in a VM, a plain counter in tests).
pub struct IrqTrigger {
    status: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    pub fn new(evt: EventFd) -> Self {
        IrqTrigger {
            status: AtomicU32::new(0),
            evt,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!("virtio interrupt: {e}");
        }
    }

    /// The device put buffers into a used ring.
    pub fn signal_used(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// The device's configuration (or status) changed.
    pub fn signal_config(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// Sets InterruptStatus to a snapshot's value. The line is not raised again: an
    /// interrupt not yet taken is in the restored irqchip state.
    pub fn restore(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    /// One per entry of [`VirtioDevice::queue_max_sizes`], validated against `mem`.
    pub queues: Vec<Queue>,
    pub irq: std::sync::Arc<IrqTrigger>,
    /// Features the driver acked (a subset of [`VirtioDevice::features`]).
    pub features: u64,
    /// Clones of the queue-notification eventfds (for devices served by another
    /// process, which reads them itself).
    pub notifiers: Vec<EventFd>,
}

/// Where a device is in one of its queues: the next available entry it will take and
/// the next used entry it will fill. Read for a snapshot, given back on restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueuePosition {
    pub next_avail: u16,
    pub next_used: u16,
}

impl QueuePosition {
    /// The position of a queue the device itself serves.
    pub fn of(queue: &Queue) -> Self {
        use virtio_queue::QueueT;
        QueuePosition {
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
        }
    }
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// `VIRTIO_ID_*`.
    fn device_type(&self) -> u32;
    /// Feature bits offered (must include [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Largest size of each queue; the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device configuration space; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Back to the state before activation (driver wrote 0 to Status).
    fn reset(&mut self);
    /// For a snapshot (vCPUs paused): the device's position in each queue, in queue
    /// order. Called only on an active device. An error says why this device cannot be
    /// snapshotted now (e.g. requests still in flight in another process).
    fn queue_positions(&self) -> Result<Vec<QueuePosition>, String>;
    /// Called once after a restore re-activated the device with the snapshot's queues,
    /// before any vCPU runs: what the guest must learn about the host side it lost
    /// (vsock: its connections are gone).
    fn restored(&mut self) {}
    /// False when someone else (a vhost-user backend) reads the notification eventfds.
    fn handles_notifications(&self) -> bool {
        true
    }
    /// The driver notified queue `index` (ignored before activation).
    fn process_queue(&mut self, index: usize);
    /// A host fd the event loop watches for this device (e.g. the vsock muxer's epoll).
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// `backend_fd` is readable.
    fn process_backend(&mut self) {}
}

/// Copies `src` (a device's config structure, little-endian) into `data` at `offset`;
/// anything outside reads as zero.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - start);
    data[..n].copy_from_slice(&src[start..start + n]);
}
