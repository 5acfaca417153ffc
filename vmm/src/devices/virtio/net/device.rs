//! The virtio-net device: RX (0) and TX (1) queues between the guest and a [`Tap`].
//! The tap sits in the device's own epoll set (the event loop watches that fd), so it is
//! watched only while the guest has RX buffers: a guest that stops taking packets makes
//! the device wait, not spin.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use super::{MAX_FRAME, VNET_HDR_LEN};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Activation, IrqTrigger, QueuePosition, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

const QUEUE_SIZES: [u16; 2] = [256, 256];
const RX: usize = 0;
const TX: usize = 1;

fn bit(b: u32) -> u64 {
    1 << b
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    irq: Arc<IrqTrigger>,
    features: u64,
    /// Tap offloads and the RX watch are set up on the event loop, not the vCPU.
    set_up: bool,
}

pub struct Net {
    tap: Tap,
    epoll: Epoll,
    config: [u8; 8],
    active: Option<Active>,
    frame: Vec<u8>,
    /// A frame read from the tap that waits for an RX buffer.
    pending: Option<usize>,
    tx_buf: Vec<u8>,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6]) -> std::io::Result<Net> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            tap.as_raw_fd(),
            EpollEvent::new(EventSet::empty(), 0),
        )?;
        // virtio_net_config: mac[6], status u16 (LINK_UP).
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Ok(Net {
            tap,
            epoll,
            config,
            active: None,
            frame: vec![0; MAX_FRAME],
            pending: None,
            tx_buf: vec![0; MAX_FRAME],
        })
    }

    fn watch_tap(&self, on: bool) {
        let set = if on { EventSet::IN } else { EventSet::empty() };
        let ev = EpollEvent::new(set, 0);
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Modify, self.tap.as_raw_fd(), ev)
        {
            tracing::warn!("virtio-net epoll: {e}");
        }
    }

    fn set_up(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if a.set_up {
            return;
        }
        a.set_up = true;
        let mut flags = 0;
        if a.features & bit(VIRTIO_NET_F_GUEST_CSUM) != 0 {
            flags |= TUN_F_CSUM;
            if a.features & bit(VIRTIO_NET_F_GUEST_TSO4) != 0 {
                flags |= TUN_F_TSO4;
            }
            if a.features & bit(VIRTIO_NET_F_GUEST_TSO6) != 0 {
                flags |= TUN_F_TSO6;
            }
        }
        if let Err(e) = self.tap.set_offload(flags) {
            tracing::warn!("virtio-net: TUNSETOFFLOAD {flags:#x}: {e}");
        }
        self.watch_tap(true);
    }

    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = a.tx.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            match gather(&a.mem, &descs, &mut self.tx_buf) {
                Some(total) if total >= VNET_HDR_LEN => {
                    let frame = if self.tap.vnet_hdr() {
                        &self.tx_buf[..total]
                    } else {
                        &self.tx_buf[VNET_HDR_LEN..total]
                    };
                    if let Err(e) = self.tap.write_frame(frame) {
                        tracing::debug!("virtio-net: tap write: {e}");
                    }
                }
                _ => tracing::debug!("virtio-net: bad TX chain dropped"),
            }
            if let Err(e) = a.tx.add_used(&a.mem, head, 0) {
                tracing::debug!("virtio-net: add_used: {e:?}");
            }
            used = true;
        }
        if used && a.tx.needs_notification(&a.mem).unwrap_or(true) {
            a.irq.signal_used();
        }
    }

    fn read_tap(&mut self) -> Option<usize> {
        let vnet = self.tap.vnet_hdr();
        let start = if vnet { 0 } else { VNET_HDR_LEN };
        match self.tap.read_frame(&mut self.frame[start..]) {
            Ok(n) => {
                if !vnet {
                    self.frame[..VNET_HDR_LEN].fill(0);
                }
                Some(n + start)
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    tracing::debug!("virtio-net: tap read: {e}");
                }
                None
            }
        }
    }

    fn process_rx(&mut self) {
        if self.active.is_none() {
            return;
        }
        let mut used = false;
        let mut starved = false;
        loop {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match self.read_tap() {
                    Some(len) => len,
                    None => break,
                },
            };
            let Some(a) = self.active.as_mut() else {
                return;
            };
            let Some(chain) = a.rx.pop_descriptor_chain(&a.mem) else {
                self.pending = Some(len);
                starved = true;
                break;
            };
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            // num_buffers = 1 (no mergeable buffers).
            self.frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let written = scatter(&a.mem, &descs, &self.frame[..len]).unwrap_or_else(|| {
                tracing::debug!("virtio-net: RX buffer unusable, frame dropped");
                0
            });
            if let Err(e) = a.rx.add_used(&a.mem, head, written) {
                tracing::debug!("virtio-net: add_used: {e:?}");
            }
            used = true;
        }
        self.watch_tap(!starved);
        if let Some(a) = self.active.as_mut() {
            if used && a.rx.needs_notification(&a.mem).unwrap_or(true) {
                a.irq.signal_used();
            }
        }
    }
}

/// Copies a TX chain (device-readable descriptors only, at most `buf.len()` bytes).
fn gather(mem: &GuestMemoryMmap, descs: &[Descriptor], buf: &mut [u8]) -> Option<usize> {
    let mut total = 0usize;
    for d in descs {
        let len = d.len() as usize;
        if d.is_write_only() || total + len > buf.len() {
            return None;
        }
        mem.read_slice(&mut buf[total..total + len], d.addr())
            .ok()?;
        total += len;
    }
    Some(total)
}

/// Writes `frame` over an RX chain (device-writable descriptors only, all inside guest
/// memory, large enough); returns the bytes written.
fn scatter(mem: &GuestMemoryMmap, descs: &[Descriptor], frame: &[u8]) -> Option<u32> {
    let mut room = 0u64;
    for d in descs {
        if !d.is_write_only() || !mem.check_range(d.addr(), d.len() as usize, Permissions::Write) {
            return None;
        }
        room += u64::from(d.len());
    }
    if room < frame.len() as u64 {
        return None;
    }
    let mut off = 0usize;
    for d in descs {
        if off == frame.len() {
            break;
        }
        let n = (d.len() as usize).min(frame.len() - off);
        mem.write_slice(&frame[off..off + n], d.addr()).ok()?;
        off += n;
    }
    u32::try_from(off).ok()
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS);
        if self.tap.vnet_hdr() {
            f |= bit(VIRTIO_NET_F_CSUM)
                | bit(VIRTIO_NET_F_HOST_TSO4)
                | bit(VIRTIO_NET_F_HOST_TSO6)
                | bit(VIRTIO_NET_F_GUEST_CSUM)
                | bit(VIRTIO_NET_F_GUEST_TSO4)
                | bit(VIRTIO_NET_F_GUEST_TSO6);
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let mut q = a.queues.into_iter();
        let (Some(rx), Some(tx)) = (q.next(), q.next()) else {
            return Err(ActivateError::QueueNotReady(1));
        };
        self.active = Some(Active {
            mem: a.mem,
            rx,
            tx,
            irq: a.irq,
            features: a.features,
            set_up: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
        self.watch_tap(false);
    }

    /// A frame read from the tap but not yet given to the guest is not part of it:
    /// the network may drop a packet.
    fn queue_positions(&self) -> Result<Vec<QueuePosition>, String> {
        Ok(self
            .active
            .iter()
            .flat_map(|a| [QueuePosition::of(&a.rx), QueuePosition::of(&a.tx)])
            .collect())
    }

    fn process_queue(&mut self, index: usize) {
        self.set_up();
        match index {
            RX => self.process_rx(),
            TX => self.process_tx(),
            _ => {}
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn process_backend(&mut self) {
        let mut events = [EpollEvent::default(); 4];
        let _ = self.epoll.wait(0, &mut events);
        self.set_up();
        self.process_rx();
    }
}
