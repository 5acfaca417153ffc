//! The virtio-mmio transport, version 2 ("modern") register layout, as a bus device.
//!
//! The guest is hostile: registers take 4-byte accesses only (others read as 0 and are
//! dropped), queue registers are writable only between FEATURES_OK and DRIVER_OK,
//! FEATURES_OK is refused when the driver acked a feature the device never offered (or
//! not VERSION_1), and DRIVER_OK with an unusable queue leaves the device inactive with
//! DEVICE_NEEDS_RESET set. Queue sizes and ring addresses are validated by virtio-queue
//! against guest memory before the device sees them.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateError, Activation, IrqTrigger, QueuePosition, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::bus::BusDevice;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Register layout version 2 (virtio 1.x).
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("HULL" would not fit the PCI convention; any value).
pub const VENDOR_ID: u32 = 0x4c4c_5548;

type SharedDevice = Arc<Mutex<dyn VirtioDevice>>;

/// One virtio device behind the MMIO register window.
pub struct MmioTransport {
    device: SharedDevice,
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    /// Signalled on QueueNotify (in a VM these are also ioeventfds, so KVM signals them
    /// without an exit; the write path here covers notifications that do exit).
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    offered: u64,
    features_sel: u32,
    acked_sel: u32,
    acked: u64,
    /// The driver set a feature bit above 63 (never offered).
    acked_beyond: bool,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    active: bool,
}

/// One queue as the driver configured it, and where the device was in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    /// The device's position; `None` while the device is not active.
    pub position: Option<QueuePosition>,
}

/// The transport's registers, its queues and the interrupt status: what a snapshot
/// records of one virtio-mmio slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// `VIRTIO_ID_*` of the device behind it (checked on restore).
    pub device_type: u32,
    pub features_sel: u32,
    pub acked_sel: u32,
    pub acked: u64,
    pub queue_sel: u32,
    pub status: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub active: bool,
    pub queues: Vec<SavedQueue>,
}

/// Why a transport state cannot be restored onto a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("device type {found} where the snapshot has {expected}")]
    DeviceType { expected: u32, found: u32 },
    #[error("{found} queues where the snapshot has {expected}")]
    QueueCount { expected: usize, found: usize },
    #[error("queue {0} of the snapshot is not valid for this device or guest memory")]
    BadQueue(usize),
    #[error("the snapshot acked features {0:#x} this device does not offer")]
    Features(u64),
    #[error("the device cannot be activated: {0}")]
    Activate(#[from] ActivateError),
}

fn lock(d: &SharedDevice) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

impl MmioTransport {
    /// `irq` fires the device's interrupt; one notification eventfd per queue is created.
    pub fn new(
        device: SharedDevice,
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
    ) -> std::io::Result<Self> {
        let (offered, sizes) = {
            let d = lock(&device);
            (d.features(), d.queue_max_sizes().to_vec())
        };
        let queues = sizes
            .iter()
            .map(|&max| Queue::new(max))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| std::io::Error::other(format!("queue: {e:?}")))?;
        let queue_evts = sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            mem,
            irq,
            queue_evts,
            queues,
            offered,
            features_sel: 0,
            acked_sel: 0,
            acked: 0,
            acked_beyond: false,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// The notification eventfds, one per queue (register them as ioeventfds at
    /// `base + VIRTIO_MMIO_QUEUE_NOTIFY` with the queue index as datamatch).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The transport's state for a snapshot (vCPUs paused): registers, queues and, for
    /// an active device, its position in each queue.
    pub fn save_state(&self) -> Result<TransportState, String> {
        let device = lock(&self.device);
        let positions = if self.active {
            let p = device.queue_positions()?;
            if p.len() != self.queues.len() {
                return Err(format!(
                    "the device reported {} queue positions for {} queues",
                    p.len(),
                    self.queues.len()
                ));
            }
            p.into_iter().map(Some).collect()
        } else {
            vec![None; self.queues.len()]
        };
        let queues = self
            .queues
            .iter()
            .zip(positions)
            .map(|(q, position)| SavedQueue {
                size: q.size(),
                ready: q.ready(),
                desc_table: q.desc_table(),
                avail_ring: q.avail_ring(),
                used_ring: q.used_ring(),
                position,
            })
            .collect();
        Ok(TransportState {
            device_type: device.device_type(),
            features_sel: self.features_sel,
            acked_sel: self.acked_sel,
            acked: self.acked,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.irq.status(),
            active: self.active,
            queues,
        })
    }

    /// A transport for `device` in the snapshot's `state`. An active device is
    /// activated again with the queues where it left them, then told it was restored.
    /// Everything in `state` is checked as a guest's register writes are: a snapshot
    /// file is input.
    pub fn restore(
        device: SharedDevice,
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
        state: &TransportState,
    ) -> Result<Self, RestoreError> {
        let mut t = MmioTransport::new(device, mem, irq)
            .map_err(|e| ActivateError::Backend(e.to_string()))?;
        let found = lock(&t.device).device_type();
        if found != state.device_type {
            return Err(RestoreError::DeviceType {
                expected: state.device_type,
                found,
            });
        }
        if state.queues.len() != t.queues.len() {
            return Err(RestoreError::QueueCount {
                expected: state.queues.len(),
                found: t.queues.len(),
            });
        }
        if state.acked & !t.offered != 0 {
            return Err(RestoreError::Features(state.acked & !t.offered));
        }
        for (i, (saved, q)) in state.queues.iter().zip(t.queues.iter_mut()).enumerate() {
            let config = QueueState {
                max_size: q.max_size(),
                next_avail: 0,
                next_used: 0,
                event_idx_enabled: false,
                size: saved.size,
                ready: saved.ready,
                desc_table: saved.desc_table,
                avail_ring: saved.avail_ring,
                used_ring: saved.used_ring,
            };
            *q = Queue::try_from(config).map_err(|_| RestoreError::BadQueue(i))?;
        }
        t.features_sel = state.features_sel;
        t.acked_sel = state.acked_sel;
        t.acked = state.acked;
        t.queue_sel = state.queue_sel;
        t.status = state.status;
        t.config_generation = state.config_generation;
        if state.active {
            let positions: Vec<QueuePosition> = state
                .queues
                .iter()
                .enumerate()
                .map(|(i, q)| q.position.ok_or(RestoreError::BadQueue(i)))
                .collect::<Result<_, _>>()?;
            t.activate_at(&positions)?;
            lock(&t.device).restored();
        }
        // Over what `restored` may have signalled: the snapshot's bits, plus those.
        let signalled = t.irq.status();
        t.irq.restore(state.interrupt_status | signalled);
        Ok(t)
    }

    /// DRIVER_OK was accepted and the device runs.
    #[cfg(test)]
    pub fn is_active(&self) -> bool {
        self.active
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only while the driver sets the device up.
    fn queue_config_allowed(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) == 0
    }

    fn read_reg(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => lock(&self.device).device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.irq.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u32, v: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.acked_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => self.ack_features(v),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v),
            VIRTIO_MMIO_INTERRUPT_ACK => self.irq.ack(v),
            VIRTIO_MMIO_STATUS => self.set_status(v),
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_reg(offset, v),
            _ => tracing::debug!(
                offset,
                v,
                "virtio-mmio: write to read-only/unknown register"
            ),
        }
    }

    fn write_queue_reg(&mut self, offset: u32, v: u32) {
        if !self.queue_config_allowed() {
            tracing::debug!(offset, "virtio-mmio: queue register outside setup, ignored");
            return;
        }
        let Some(q) = self.selected_queue() else {
            return;
        };
        match offset {
            // An invalid size (0, not a power of two, above max) is ignored by
            // virtio-queue; the queue then stays at its previous size.
            VIRTIO_MMIO_QUEUE_NUM => match u16::try_from(v) {
                Ok(size) => q.set_size(size),
                Err(_) => tracing::debug!(v, "virtio-mmio: queue size too large, ignored"),
            },
            VIRTIO_MMIO_QUEUE_READY => q.set_ready(v == 1),
            VIRTIO_MMIO_QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
            VIRTIO_MMIO_QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
            VIRTIO_MMIO_QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(v)),
            _ => {}
        }
    }

    fn ack_features(&mut self, v: u32) {
        // Only while negotiating: after FEATURES_OK the set is frozen.
        if self.status & VIRTIO_CONFIG_S_DRIVER == 0
            || self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
        {
            return;
        }
        let v = u64::from(v);
        match self.acked_sel {
            0 => self.acked = (self.acked & !0xffff_ffff) | v,
            1 => self.acked = (self.acked & 0xffff_ffff) | (v << 32),
            // Pages past the second hold no features: a set bit there was never offered.
            _ => self.acked_beyond |= v != 0,
        }
    }

    fn notify(&mut self, v: u32) {
        match self.queue_evts.get(v as usize) {
            Some(evt) if self.active => {
                let _ = evt.write(1);
            }
            _ => tracing::debug!(v, "virtio-mmio: notify of unknown or inactive queue"),
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let new_bits = v & !self.status;
        // The driver may only add bits (spec 3.1.1), except by writing 0.
        if v & self.status != self.status {
            tracing::debug!(
                v,
                old = self.status,
                "virtio-mmio: status bits cleared, ignored"
            );
            return;
        }
        if new_bits & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        if new_bits & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let honest = !self.acked_beyond
                && self.acked & !self.offered == 0
                && self.acked & VIRTIO_F_VERSION_1 != 0;
            if !honest || self.status & VIRTIO_CONFIG_S_DRIVER == 0 {
                tracing::warn!(
                    acked = self.acked,
                    offered = self.offered,
                    "virtio-mmio: driver acked features never offered; FEATURES_OK refused"
                );
                // Keep the other new bits, not FEATURES_OK: the driver reads it back.
                self.status |= new_bits & !VIRTIO_CONFIG_S_FEATURES_OK & !VIRTIO_CONFIG_S_DRIVER_OK;
                return;
            }
        }
        if new_bits & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if (self.status | new_bits) & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                tracing::warn!("virtio-mmio: DRIVER_OK without FEATURES_OK, ignored");
                self.status |= new_bits & !VIRTIO_CONFIG_S_DRIVER_OK;
                return;
            }
            self.status |= new_bits;
            if let Err(e) = self.activate() {
                tracing::warn!("virtio-mmio: device not activated: {e}");
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                self.irq.signal_config();
            }
            return;
        }
        let allowed =
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        self.status |= new_bits & allowed;
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        let start = vec![
            QueuePosition {
                next_avail: 0,
                next_used: 0
            };
            self.queues.len()
        ];
        self.activate_at(&start)
    }

    /// Hands the device its validated queues, each starting at `positions[i]`.
    fn activate_at(&mut self, positions: &[QueuePosition]) -> Result<(), ActivateError> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::QueueNotReady(i));
            }
            if !q.is_valid(&self.mem) {
                return Err(ActivateError::BadQueue(i));
            }
            let mut copy = Queue::try_from(q.state()).map_err(|_| ActivateError::BadQueue(i))?;
            copy.set_event_idx(false);
            let position = positions.get(i).ok_or(ActivateError::QueueNotReady(i))?;
            copy.set_next_avail(position.next_avail);
            copy.set_next_used(position.next_used);
            queues.push(copy);
        }
        lock(&self.device).activate(Activation {
            mem: self.mem.clone(),
            queues,
            irq: self.irq.clone(),
            features: self.acked,
            notifiers: self
                .queue_evts
                .iter()
                .map(EventFd::try_clone)
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| ActivateError::Backend(e.to_string()))?,
        })?;
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        if self.active {
            lock(&self.device).reset();
        }
        self.active = false;
        for q in &mut self.queues {
            q.reset();
        }
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.irq.clear();
        self.status = 0;
        self.acked = 0;
        self.acked_beyond = false;
        self.features_sel = 0;
        self.acked_sel = 0;
        self.queue_sel = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            lock(&self.device).read_config(offset - config, data);
            return;
        }
        match (u32::try_from(offset), data.len()) {
            (Ok(off), 4) if off % 4 == 0 => data.copy_from_slice(&self.read_reg(off).to_le_bytes()),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            lock(&self.device).write_config(offset - config, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        match (u32::try_from(offset), <[u8; 4]>::try_from(data)) {
            (Ok(off), Ok(bytes)) if off % 4 == 0 => self.write_reg(off, u32::from_le_bytes(bytes)),
            _ => tracing::debug!(
                offset,
                len = data.len(),
                "virtio-mmio: bad access size, ignored"
            ),
        }
    }
}
