//! A virtio driver for tests: negotiates through the MMIO registers, lays out split
//! virtqueues in guest memory, posts descriptor chains and reads the used rings. It can
//! also write raw (hostile) descriptors and ring entries.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::{IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1};

pub const MEM_SIZE: u64 = 16 << 20;
/// Test buffers live from here on.
pub const DATA: u64 = 0x10_0000;

pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

pub struct Driver {
    pub mem: GuestMemoryMmap,
    pub transport: MmioTransport,
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    pub irq: EventFd,
    pub rings: Vec<Ring>,
}

/// One buffer of a chain: guest address, length, device-writable.
pub type Buf = (u64, u32, bool);

impl Driver {
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>) -> Driver {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        Self::with_memory(device, mem)
    }

    /// With guest memory of the caller's choice (a shared memfd for vhost-user).
    pub fn with_memory(device: Arc<Mutex<dyn VirtioDevice>>, mem: GuestMemoryMmap) -> Driver {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let trigger = Arc::new(IrqTrigger::new(irq.try_clone().unwrap()));
        let transport = MmioTransport::new(device.clone(), mem.clone(), trigger).unwrap();
        Driver {
            mem,
            transport,
            device,
            irq,
            rings: Vec::new(),
        }
    }

    pub fn reg(&mut self, off: u32) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(u64::from(off), &mut b);
        u32::from_le_bytes(b)
    }

    pub fn set(&mut self, off: u32, v: u32) {
        self.transport.write(u64::from(off), &v.to_le_bytes());
    }

    pub fn device_features(&mut self) -> u64 {
        self.set(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let lo = self.reg(VIRTIO_MMIO_DEVICE_FEATURES);
        self.set(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let hi = self.reg(VIRTIO_MMIO_DEVICE_FEATURES);
        u64::from(hi) << 32 | u64::from(lo)
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK; true if the device kept FEATURES_OK.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.set(VIRTIO_MMIO_STATUS, 0);
        self.set(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.set(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        self.set(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.set(VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        self.set(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.set(VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        let s = self.reg(VIRTIO_MMIO_STATUS) | VIRTIO_CONFIG_S_FEATURES_OK;
        self.set(VIRTIO_MMIO_STATUS, s);
        self.reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    /// Lays out queue `i` of `size` entries and makes it ready.
    pub fn setup_queue(&mut self, i: u32, size: u16) {
        let base = 0x1_0000 + u64::from(i) * 0x4000;
        let ring = Ring {
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        self.set(VIRTIO_MMIO_QUEUE_SEL, i);
        assert!(self.reg(VIRTIO_MMIO_QUEUE_NUM_MAX) >= u32::from(size));
        self.set(VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
        for (lo, addr) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, ring.desc),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, ring.avail),
            (VIRTIO_MMIO_QUEUE_USED_LOW, ring.used),
        ] {
            self.set(lo, addr as u32);
            self.set(lo + 4, (addr >> 32) as u32);
        }
        self.set(VIRTIO_MMIO_QUEUE_READY, 1);
        self.rings.push(ring);
    }

    pub fn driver_ok(&mut self) {
        let s = self.reg(VIRTIO_MMIO_STATUS);
        self.set(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
    }

    /// The whole bring-up with VERSION_1 plus `extra` features and `queues` queues of 16.
    pub fn start(&mut self, extra: u64, queues: u32) {
        assert!(self.negotiate(VIRTIO_F_VERSION_1 | extra));
        for i in 0..queues {
            self.setup_queue(i, 16);
        }
        self.driver_ok();
        assert!(self.transport.is_active(), "device did not activate");
    }

    /// Writes descriptor `index` of queue `q` as is.
    pub fn raw_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.rings[q].desc + u64::from(index) * 16);
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, at).unwrap();
    }

    /// Puts `head` in the available ring and publishes it.
    pub fn push_avail(&mut self, q: usize, head: u16) {
        let r = &mut self.rings[q];
        let slot = r.avail + 4 + u64::from(r.avail_idx % r.size) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        r.avail_idx = r.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(r.avail_idx, GuestAddress(r.avail + 2))
            .unwrap();
    }

    /// Sets the available index directly (hostile tests).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.rings[q].avail + 2))
            .unwrap();
    }

    /// Posts a chain of buffers, as a driver does; returns its head.
    pub fn add_chain(&mut self, q: usize, bufs: &[Buf]) -> u16 {
        let size = self.rings[q].size;
        let head = self.rings[q].next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let index = (head + i as u16) % size;
            let last = i + 1 == bufs.len();
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.raw_desc(q, index, addr, len, flags, (index + 1) % size);
        }
        self.rings[q].next_desc = (head + bufs.len() as u16) % size;
        self.push_avail(q, head);
        head
    }

    /// Writes QueueNotify and runs the device as the event loop would.
    pub fn notify(&mut self, q: u32) {
        self.set(VIRTIO_MMIO_QUEUE_NOTIFY, q);
        if let Some(evt) = self.transport.queue_evts().get(q as usize) {
            if evt.read().is_ok() {
                self.device.lock().unwrap().process_queue(q as usize);
            }
        }
    }

    /// New used-ring entries of queue `q`: (descriptor head, length).
    pub fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let r = &mut self.rings[q];
        let idx: u16 = self.mem.read_obj(GuestAddress(r.used + 2)).unwrap();
        let mut out = Vec::new();
        while r.used_seen != idx {
            let at = r.used + 4 + u64::from(r.used_seen % r.size) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            r.used_seen = r.used_seen.wrapping_add(1);
        }
        out
    }

    /// Interrupt fired since the last call (and InterruptStatus acked).
    pub fn take_irq(&mut self) -> bool {
        let fired = self.irq.read().is_ok();
        let status = self.reg(VIRTIO_MMIO_INTERRUPT_STATUS);
        self.set(VIRTIO_MMIO_INTERRUPT_ACK, status);
        fired
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}
