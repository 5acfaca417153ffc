//! A vsock "guest" for the benchmark (feature `bench`): split virtqueues in guest memory,
//! driven like a guest driver that echoes every byte it receives on its connections.
//! Runs against hull-vmm's device model (on its own event-loop thread, woken by the
//! queue eventfds like in a VM) or against a vhost-user backend (vhost-device-vsock, its
//! own process) sharing the same memfd memory; `benches/vsock.rs` measures.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use crate::devices::virtio::event_handler::VirtioEvents;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::vstate::memory::{create_guest_memory, MemoryBacking};

const QSIZE: u16 = 256;
const RING_BASE: u64 = 0x1_0000; // queue q at RING_BASE + q * 0x4000
const RX_BUFS: u64 = 0x10_0000; // 128 x (44-byte header + 4 KiB data), 0x2000 apart
const TX_BUFS: u64 = 0x40_0000; // 128 slots, 0x2000 apart
const SLOTS: u16 = 128;
const DATA: u32 = 4096;
const GUEST_BUF_ALLOC: u32 = 256 << 10;

/// Where the queues are served.
enum Backend {
    /// hull-vmm's device model on its own thread, fed as in a VM: the guest's
    /// notifications are the transport's queue eventfds (ioeventfds under KVM) and the
    /// host sockets are the device's backend fd, both on an event-manager loop
    /// (`VirtioEvents`, the same subscriber the VMM's event loop uses). So both sides of
    /// the comparison wake a device thread through an eventfd per kick.
    DeviceThread {
        kicks: Vec<EventFd>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
        _transport: MmioTransport,
    },
    VhostUser {
        _frontend: Frontend,
        kicks: Vec<EventFd>,
        _calls: Vec<EventFd>,
    },
}

struct Ring {
    base: u64,
    avail: u16,
    used_seen: u16,
}

pub struct EchoGuest {
    mem: GuestMemoryMmap,
    backend: Backend,
    rings: [Ring; 3],
    free_tx: Vec<u16>,
    /// Per connection (host port): bytes consumed, and the host's credit.
    conns: HashMap<u32, (u32, u32, u32, u32)>, // fwd_cnt, tx_cnt, peer_buf_alloc, peer_fwd_cnt
    /// fwd_cnt last told to the device, per connection.
    told: HashMap<u32, u32>,
}

fn memory() -> GuestMemoryMmap {
    let backing = MemoryBacking {
        shared: true,
        hugepages: false,
    };
    create_guest_memory(16 << 20, backing).expect("guest memory")
}

impl EchoGuest {
    fn new(mem: GuestMemoryMmap, backend: Backend) -> EchoGuest {
        let ring = |q: u64| Ring {
            base: RING_BASE + q * 0x4000,
            avail: 0,
            used_seen: 0,
        };
        EchoGuest {
            mem,
            backend,
            rings: [ring(0), ring(1), ring(2)],
            free_tx: (0..SLOTS).collect(),
            conns: HashMap::new(),
            told: HashMap::new(),
        }
    }

    /// hull-vmm's device model, in this process; the hybrid socket at `uds`.
    pub fn hull(uds: &Path) -> EchoGuest {
        let mem = memory();
        let dev: Arc<Mutex<dyn VirtioDevice>> =
            Arc::new(Mutex::new(Vsock::new(3, uds).expect("vsock")));
        let irq = Arc::new(IrqTrigger::new(
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
        ));
        let mut t = MmioTransport::new(dev.clone(), mem.clone(), irq).expect("transport");
        let mut set = |off: u64, v: u32| t.write(off, &v.to_le_bytes());
        set(0x70, 3);
        set(0x24, 1);
        set(0x20, 1);
        set(0x70, 0xb);
        for q in 0..3u32 {
            let base = RING_BASE as u32 + q * 0x4000;
            set(0x30, q);
            set(0x38, u32::from(QSIZE));
            set(0x80, base);
            set(0x90, base + 0x1000);
            set(0xa0, base + 0x2000);
            set(0x44, 1);
        }
        set(0x70, 0xf);
        assert!(t.is_active_for_bench(), "device not active");
        let clone = |e: &EventFd| e.try_clone().expect("eventfd clone");
        let kicks: Vec<EventFd> = t.queue_evts().iter().map(clone).collect();
        let events = VirtioEvents::new(dev, t.queue_evts().iter().map(clone).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-device".into())
            .spawn(move || {
                let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
                    EventManager::new().expect("event manager");
                em.add_subscriber(Arc::new(Mutex::new(events)));
                while !thread_stop.load(Ordering::Relaxed) {
                    let _ = em.run_with_timeout(50);
                }
            })
            .expect("device thread");
        let mut g = EchoGuest::new(
            mem,
            Backend::DeviceThread {
                kicks,
                stop,
                thread: Some(thread),
                _transport: t,
            },
        );
        g.post_rx_all();
        g
    }

    /// A vhost-user vsock backend (vhost-device-vsock) at `socket`.
    pub fn vhost_user(socket: &Path) -> EchoGuest {
        let mem = memory();
        let mut f = Frontend::connect(socket, 3).expect("vhost-user connect");
        f.set_owner().expect("SET_OWNER");
        let offered = f.get_features().expect("GET_FEATURES");
        let proto = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let features = VIRTIO_F_VERSION_1 | (offered & proto);
        f.set_features(features).expect("SET_FEATURES");
        if features & proto != 0 {
            let p = f.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
            let want = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
            f.set_protocol_features(p & want)
                .expect("SET_PROTOCOL_FEATURES");
            if p.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request is acknowledged: a refused one fails here, not silently.
                f.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        let regions: Vec<_> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).expect("memfd region"))
            .collect();
        f.set_mem_table(&regions).expect("SET_MEM_TABLE");
        let host = |gpa: u64| {
            mem.get_host_address(GuestAddress(gpa))
                .expect("ring in memory") as u64
        };
        let (mut kicks, mut calls) = (Vec::new(), Vec::new());
        for q in 0..3usize {
            let base = RING_BASE + q as u64 * 0x4000;
            let cfg = VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: host(base),
                used_ring_addr: host(base + 0x2000),
                avail_ring_addr: host(base + 0x1000),
                log_addr: None,
            };
            let kick = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
            let call = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
            f.set_vring_num(q, QSIZE).expect("SET_VRING_NUM");
            f.set_vring_addr(q, &cfg).expect("SET_VRING_ADDR");
            f.set_vring_base(q, 0).expect("SET_VRING_BASE");
            f.set_vring_call(q, &call).expect("SET_VRING_CALL");
            f.set_vring_kick(q, &kick).expect("SET_VRING_KICK");
            kicks.push(kick);
            calls.push(call);
        }
        if features & proto != 0 {
            for q in 0..3 {
                f.set_vring_enable(q, true).expect("SET_VRING_ENABLE");
            }
        }
        let mut g = EchoGuest::new(
            mem,
            Backend::VhostUser {
                _frontend: f,
                kicks,
                _calls: calls,
            },
        );
        g.post_rx_all();
        g
    }

    fn notify(&mut self, q: usize) {
        match &self.backend {
            Backend::DeviceThread { kicks, .. } | Backend::VhostUser { kicks, .. } => {
                let _ = kicks[q].write(1);
            }
        }
    }

    fn desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.rings[q].base + u64::from(i) * 16;
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        let _ = self.mem.write_slice(&d, GuestAddress(at));
    }

    fn publish(&mut self, q: usize, head: u16) {
        let r = &mut self.rings[q];
        let slot = r.base + 0x1000 + 4 + u64::from(r.avail % QSIZE) * 2;
        let _ = self.mem.write_obj(head, GuestAddress(slot));
        r.avail = r.avail.wrapping_add(1);
        let _ = self.mem.write_obj(r.avail, GuestAddress(r.base + 0x1002));
    }

    fn post_rx(&mut self, slot: u16) {
        let buf = RX_BUFS + u64::from(slot) * 0x2000;
        let head = slot * 2;
        self.desc(0, head, buf, 44, 2 | 1, head + 1); // WRITE | NEXT
        self.desc(0, head + 1, buf + 0x1000, DATA, 2, 0);
        self.publish(0, head);
    }

    fn post_rx_all(&mut self) {
        for s in 0..SLOTS {
            self.post_rx(s);
        }
        self.notify(0);
    }

    fn used(&mut self, q: usize) -> Vec<u32> {
        let r = &mut self.rings[q];
        let idx: u16 = self
            .mem
            .read_obj(GuestAddress(r.base + 0x2002))
            .unwrap_or(r.used_seen);
        let mut out = Vec::new();
        while r.used_seen != idx {
            let at = r.base + 0x2004 + u64::from(r.used_seen % QSIZE) * 8;
            out.push(self.mem.read_obj(GuestAddress(at)).unwrap_or(0));
            r.used_seen = r.used_seen.wrapping_add(1);
        }
        out
    }

    /// Sends one packet; false when no TX slot is free.
    fn send(&mut self, op: u16, host_port: u32, data: &[u8]) -> bool {
        for id in self.used(1) {
            self.free_tx.push((id / 2) as u16);
        }
        let Some(slot) = self.free_tx.pop() else {
            return false;
        };
        let (fwd, tx, _, _) = self.conns.entry(host_port).or_insert((0, 0, 0, 0));
        *tx = tx.wrapping_add(data.len() as u32);
        self.told.insert(host_port, *fwd);
        let mut h = [0u8; 44];
        h[0..8].copy_from_slice(&3u64.to_le_bytes());
        h[8..16].copy_from_slice(&2u64.to_le_bytes());
        h[16..20].copy_from_slice(&1024u32.to_le_bytes());
        h[20..24].copy_from_slice(&host_port.to_le_bytes());
        h[24..28].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[28..30].copy_from_slice(&1u16.to_le_bytes());
        h[30..32].copy_from_slice(&op.to_le_bytes());
        h[36..40].copy_from_slice(&GUEST_BUF_ALLOC.to_le_bytes());
        h[40..44].copy_from_slice(&fwd.to_le_bytes());
        let buf = TX_BUFS + u64::from(slot) * 0x2000;
        let _ = self.mem.write_slice(&h, GuestAddress(buf));
        let head = slot * 2;
        if data.is_empty() {
            self.desc(1, head, buf, 44, 0, 0);
        } else {
            let _ = self.mem.write_slice(data, GuestAddress(buf + 0x1000));
            self.desc(1, head, buf, 44, 1, head + 1);
            self.desc(1, head + 1, buf + 0x1000, data.len() as u32, 0, 0);
        }
        self.publish(1, head);
        true
    }

    /// Serves until `stop`: accepts connections on port 1024 and echoes their bytes.
    pub fn run(&mut self, stop: &AtomicBool) {
        let mut backlog: Vec<(u16, u32, Vec<u8>)> = Vec::new();
        let mut idle = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let mut sent = false;
            let mut recycled = false;
            for id in self.used(0) {
                let slot = (id / 2) as u16;
                let buf = RX_BUFS + u64::from(slot) * 0x2000;
                let mut h = [0u8; 44];
                let _ = self.mem.read_slice(&mut h, GuestAddress(buf));
                let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
                let (port, len, op) = (u32_at(16), u32_at(24), u16::from_le_bytes([h[30], h[31]]));
                let c = self.conns.entry(port).or_insert((0, 0, 0, 0));
                c.2 = u32_at(36);
                c.3 = u32_at(40);
                match op {
                    1 => backlog.push((2, port, Vec::new())), // REQUEST -> RESPONSE
                    5 => {
                        let mut data = vec![0u8; (len as usize).min(DATA as usize)];
                        let _ = self.mem.read_slice(&mut data, GuestAddress(buf + 0x1000));
                        c.0 = c.0.wrapping_add(len);
                        backlog.push((5, port, data));
                    }
                    4 => backlog.push((3, port, Vec::new())), // SHUTDOWN -> RST
                    // Like Linux (virtio_transport_recv_connected): a CREDIT_REQUEST is
                    // answered with a CREDIT_UPDATE. vhost-device-vsock depends on it:
                    // when it runs out of the guest's credit it sends CREDIT_REQUEST and
                    // stops polling that connection's host socket until a CREDIT_UPDATE
                    // arrives (credit carried by data packets does not resume it). Without
                    // this answer the stream stalled after the guest's 256 KiB buffer.
                    7 => backlog.push((6, port, Vec::new())),
                    // CREDIT_UPDATE: the credit fields were recorded above.
                    _ => {}
                }
                self.post_rx(slot);
                recycled = true;
            }
            if recycled {
                self.notify(0);
            }
            let mut rest = Vec::new();
            for (op, port, data) in backlog.drain(..) {
                let (_, tx, peer_alloc, peer_fwd) =
                    self.conns.get(&port).copied().unwrap_or_default();
                let credit = peer_alloc.saturating_sub(tx.wrapping_sub(peer_fwd));
                if (data.len() as u32) > credit || !self.send(op, port, &data) {
                    rest.push((op, port, data));
                } else {
                    sent = true;
                }
            }
            backlog = rest;
            // Blocked on the device's credit with nothing arriving: ask for an update
            // (CREDIT_REQUEST), now and then.
            idle = if recycled || backlog.is_empty() {
                0
            } else {
                idle + 1
            };
            if idle % 4096 == 4095 {
                if let Some(&(_, port, _)) = backlog.first() {
                    sent |= self.send(7, port, &[]);
                }
            }
            // Like Linux: tell the device about consumed bytes once half the buffer is
            // free again, even when nothing else is sent (a CREDIT_UPDATE needs no credit).
            let due: Vec<u32> = self
                .conns
                .iter()
                .filter(|(p, c)| {
                    c.0.wrapping_sub(*self.told.get(p).unwrap_or(&0)) >= GUEST_BUF_ALLOC / 2
                })
                .map(|(p, _)| *p)
                .collect();
            for port in due {
                if self.send(6, port, &[]) {
                    sent = true;
                }
            }
            if sent {
                self.notify(1);
            }
        }
    }
}

impl Drop for EchoGuest {
    fn drop(&mut self) {
        if let Backend::DeviceThread { stop, thread, .. } = &mut self.backend {
            stop.store(true, Ordering::Relaxed);
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl MmioTransport {
    fn is_active_for_bench(&mut self) -> bool {
        let mut b = [0u8; 4];
        self.read(0x70, &mut b);
        u32::from_le_bytes(b) == 0xf
    }
}
