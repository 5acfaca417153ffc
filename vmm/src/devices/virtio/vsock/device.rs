//! The virtio-vsock device: RX (0), TX (1) and event (2) queues; packets parsed with the
//! `virtio-vsock` crate (which checks descriptor directions and lengths) and routed by
//! the [`Muxer`].

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

/// virtio_vsock_event id: every connection of the guest is gone (spec 5.10.6.7).
const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
use virtio_queue::{Queue, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::muxer::Muxer;
use super::packet::Header;
use super::MAX_PKT_DATA;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Activation, IrqTrigger, QueuePosition, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::error::{Error, Result};

const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
const RX: usize = 0;
const TX: usize = 1;

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    event: Queue,
    irq: Arc<IrqTrigger>,
}

pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    active: Option<Active>,
    buf: Vec<u8>,
}

impl Vsock {
    /// Binds the hybrid socket `uds_path` for guest `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self> {
        let muxer = Muxer::new(guest_cid, uds_path).map_err(Error::file(uds_path))?;
        Ok(Vsock {
            guest_cid,
            muxer,
            active: None,
            buf: vec![0; MAX_PKT_DATA as usize],
        })
    }

    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(mut chain) = a.tx.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(&a.mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let h = Header::from(&pkt);
                    let len = h.len as usize;
                    let data = &mut self.buf[..len.min(MAX_PKT_DATA as usize)];
                    let copied = match pkt.data_slice() {
                        Some(s) if len > 0 => s.copy_to(data) == len,
                        _ => len == 0,
                    };
                    if copied {
                        self.muxer.send_to_host(&h, data);
                    } else {
                        tracing::debug!("vsock: TX packet shorter than its len, dropped");
                    }
                }
                Err(e) => tracing::debug!("vsock: bad TX chain dropped: {e}"),
            }
            if let Err(e) = a.tx.add_used(&a.mem, head, 0) {
                tracing::debug!("vsock: add_used: {e:?}");
            }
            used = true;
        }
        if used && a.tx.needs_notification(&a.mem).unwrap_or(true) {
            a.irq.signal_used();
        }
    }

    fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while self.muxer.has_rx() {
            let Some(mut chain) = a.rx.pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let used_len = match VsockPacket::from_rx_virtq_chain(&a.mem, &mut chain, MAX_PKT_DATA)
            {
                Ok(mut pkt) => {
                    let room = pkt.data_slice().map_or(0, |s| s.len()).min(self.buf.len());
                    match self.muxer.fill_rx(&mut self.buf[..room]) {
                        Some((h, n)) => {
                            let written =
                                pkt.header_slice().write_slice(&[0u8; PKT_HEADER_SIZE], 0);
                            h.write_to(&mut pkt);
                            let data_ok = n == 0
                                || pkt
                                    .data_slice()
                                    .is_some_and(|s| s.write_slice(&self.buf[..n], 0).is_ok());
                            if written.is_err() || !data_ok {
                                tracing::warn!("vsock: RX buffer write failed, packet lost");
                            }
                            (PKT_HEADER_SIZE + n) as u32
                        }
                        None => {
                            // Nothing to send after all: give the buffer back.
                            a.rx.set_next_avail(a.rx.next_avail().wrapping_sub(1));
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("vsock: bad RX chain dropped: {e}");
                    0
                }
            };
            if let Err(e) = a.rx.add_used(&a.mem, head, used_len) {
                tracing::debug!("vsock: add_used: {e:?}");
            }
            used = true;
        }
        if used && a.rx.needs_notification(&a.mem).unwrap_or(true) {
            a.irq.signal_used();
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> std::result::Result<(), ActivateError> {
        let mut q = a.queues.into_iter();
        let (Some(rx), Some(tx), Some(event)) = (q.next(), q.next(), q.next()) else {
            return Err(ActivateError::QueueNotReady(2));
        };
        self.active = Some(Active {
            mem: a.mem,
            rx,
            tx,
            event,
            irq: a.irq,
        });
        // Packets that waited for the driver go out on its first RX notification (this
        // runs on a vCPU thread, which does no socket I/O).
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset();
    }

    /// Host-side streams are not part of a snapshot: [`Vsock::restored`] tells the
    /// guest they are gone.
    fn queue_positions(&self) -> std::result::Result<Vec<QueuePosition>, String> {
        Ok(self
            .active
            .iter()
            .flat_map(|a| {
                [
                    QueuePosition::of(&a.rx),
                    QueuePosition::of(&a.tx),
                    QueuePosition::of(&a.event),
                ]
            })
            .collect())
    }

    /// Sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: the guest drops every connection it
    /// had (they lived in the old VMM's sockets) and keeps its listeners, as after a
    /// live migration.
    fn restored(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(chain) = a.event.pop_descriptor_chain(&a.mem) else {
            tracing::warn!("vsock: no event buffer from the guest; transport reset not sent");
            return;
        };
        let head = chain.head_index();
        let written = match chain.writable().next() {
            Some(desc)
                if desc.len() >= 4
                    && a.mem
                        .write_obj(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le(), desc.addr())
                        .is_ok() =>
            {
                4
            }
            _ => 0,
        };
        if a.event.add_used(&a.mem, head, written).is_ok() {
            a.irq.signal_used();
        }
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            TX => {
                self.process_tx();
                self.process_rx();
            }
            RX => self.process_rx(),
            _ => {}
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }

    fn process_backend(&mut self) {
        self.muxer.process_events();
        self.process_rx();
    }
}
