//! virtio-vsock through the test driver and real Unix sockets: both connection
//! directions of the hybrid model, credit flow control, and hostile packets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;

use super::driver::{Driver, DATA, MEM_SIZE};
use crate::devices::virtio::vsock::{Header, Vsock, CONN_BUF_SIZE, HOST_CID};

const CID: u64 = 3;
const RX: usize = 0;
const TX: usize = 1;
/// TX packets are built here, RX buffers from RX_BUFS on (4 KiB data each).
const TX_HDR: u64 = DATA;
const TX_DATA: u64 = DATA + 0x1000;
const RX_BUFS: u64 = DATA + 0x10_0000;

const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;

struct Guest {
    d: Driver,
    dir: PathBuf,
    uds: PathBuf,
    rx_posted: u64,
}

fn encode(h: &Header) -> [u8; 44] {
    let mut b = [0u8; 44];
    b[0..8].copy_from_slice(&h.src_cid.to_le_bytes());
    b[8..16].copy_from_slice(&h.dst_cid.to_le_bytes());
    b[16..20].copy_from_slice(&h.src_port.to_le_bytes());
    b[20..24].copy_from_slice(&h.dst_port.to_le_bytes());
    b[24..28].copy_from_slice(&h.len.to_le_bytes());
    b[28..30].copy_from_slice(&h.type_.to_le_bytes());
    b[30..32].copy_from_slice(&h.op.to_le_bytes());
    b[32..36].copy_from_slice(&h.flags.to_le_bytes());
    b[36..40].copy_from_slice(&h.buf_alloc.to_le_bytes());
    b[40..44].copy_from_slice(&h.fwd_cnt.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Header {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
    Header {
        src_cid: u64::from_le_bytes(b[0..8].try_into().unwrap()),
        dst_cid: u64::from_le_bytes(b[8..16].try_into().unwrap()),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16_at(28),
        op: u16_at(30),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    }
}

/// A guest-side packet header.
fn pkt(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: 1,
        op,
        flags: 0,
        buf_alloc: 64 << 10,
        fwd_cnt: 0,
    }
}

impl Guest {
    fn new(name: &str) -> Guest {
        let dir = std::env::temp_dir().join(format!("hull-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let dev = Vsock::new(CID, &uds).unwrap();
        let mut d = Driver::new(Arc::new(Mutex::new(dev)));
        d.start(0, 3);
        let mut g = Guest {
            d,
            dir,
            uds,
            rx_posted: 0,
        };
        for _ in 0..8 {
            g.post_rx();
        }
        g
    }

    /// One RX buffer: header descriptor + 4 KiB data descriptor, as Linux posts them.
    fn post_rx(&mut self) {
        let at = RX_BUFS + (self.rx_posted % 8) * 0x2000;
        self.rx_posted += 1;
        self.d
            .add_chain(RX, &[(at, 44, true), (at + 0x1000, 4096, true)]);
    }

    fn send(&mut self, h: Header, data: &[u8]) {
        self.d.write(TX_HDR, &encode(&h));
        if data.is_empty() {
            self.d.add_chain(TX, &[(TX_HDR, 44, false)]);
        } else {
            self.d.write(TX_DATA, data);
            self.d.add_chain(
                TX,
                &[(TX_HDR, 44, false), (TX_DATA, data.len() as u32, false)],
            );
        }
        self.d.notify(TX as u32);
        assert!(!self.d.used(TX).is_empty(), "TX buffer returned");
    }

    /// Lets the device serve its sockets.
    fn backend(&mut self) {
        self.d.device.lock().unwrap().process_backend();
    }

    /// Packets the device delivered (header, data); re-posts the buffers.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for (id, len) in self.d.used(RX) {
            let size = self.d.rings[RX].size;
            let at = self.d.read_desc_addr(RX, (id as u16) % size);
            let h = decode(&self.d.read(at, 44));
            assert_eq!(len, 44 + h.len, "used length covers header and data");
            let data = self.d.read(at + 0x1000, h.len as usize);
            out.push((h, data));
            self.post_rx();
        }
        self.d.notify(RX as u32);
        out
    }

    /// Polls the backend until a packet arrives (or 2 s pass).
    fn wait_packet(&mut self) -> (Header, Vec<u8>) {
        for _ in 0..200 {
            self.backend();
            if let Some(p) = self.recv().into_iter().next() {
                return p;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no packet from the device");
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Driver {
    fn read_desc_addr(&self, q: usize, index: u16) -> u64 {
        let b = self.read(self.rings[q].desc + u64::from(index) * 16, 8);
        u64::from_le_bytes(b.try_into().unwrap())
    }
}

#[test]
fn config_space_holds_the_cid() {
    let g = Guest::new("cfg");
    let mut cid = [0u8; 8];
    g.d.device.lock().unwrap().read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    assert!(g.uds.exists());
}

#[test]
fn host_initiated_connection_with_connect_handshake() {
    let mut g = Guest::new("host");
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client.write_all(b"CONNECT 1024\nearly").unwrap();
    let (req, _) = g.wait_packet();
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid, req.src_cid),
        (OP_REQUEST, 1024, CID, HOST_CID)
    );
    assert!(req.src_port >= 1 << 30);
    assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
    let host_port = req.src_port;
    g.send(pkt(OP_RESPONSE, 1024, host_port, 0), &[]);
    // The client reads `OK <port>\n` exactly as the runtime's agent client does.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        client.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    assert_eq!(line, format!("OK {host_port}\n").into_bytes());
    // Bytes the client sent right after the CONNECT line reach the guest.
    let (p, data) = g.wait_packet();
    assert_eq!((p.op, data.as_slice()), (OP_RW, &b"early"[..]));
    assert_eq!(p.fwd_cnt, 0, "the OK line does not count as guest data");
    // Guest -> host.
    g.send(pkt(OP_RW, 1024, host_port, 5), b"hello");
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    // Host closes: the guest gets a full SHUTDOWN.
    drop(client);
    let (p, _) = g.wait_packet();
    assert_eq!((p.op, p.flags), (OP_SHUTDOWN, 3));
    assert!(g.d.device.lock().unwrap().backend_fd().is_some());
}

#[test]
fn guest_initiated_connection_goes_to_uds_port() {
    let mut g = Guest::new("guest");
    let listener = UnixListener::bind(format!("{}_5000", g.uds.display())).unwrap();
    g.send(pkt(OP_REQUEST, 7777, 5000, 0), &[]);
    let (resp, _) = g.wait_packet();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (OP_RESPONSE, 5000, 7777)
    );
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    g.send(pkt(OP_RW, 7777, 5000, 3), b"abc");
    let mut buf = [0u8; 3];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"abc");
    host.write_all(b"xyz").unwrap();
    let (p, data) = g.wait_packet();
    assert_eq!((p.op, p.len, data.as_slice()), (OP_RW, 3, &b"xyz"[..]));
    assert_eq!(p.fwd_cnt, 3, "the device forwarded 3 guest bytes");
    // Guest closes: RST back, host sees EOF.
    g.send(
        Header {
            flags: 3,
            ..pkt(OP_SHUTDOWN, 7777, 5000, 0)
        },
        &[],
    );
    let (p, _) = g.wait_packet();
    assert_eq!(p.op, OP_RST);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // Nobody listens on 5001: RST.
    g.send(pkt(OP_REQUEST, 7778, 5001, 0), &[]);
    assert_eq!(g.wait_packet().0.op, OP_RST);
}

#[test]
fn host_to_guest_respects_guest_credit() {
    let mut g = Guest::new("credit");
    let listener = UnixListener::bind(format!("{}_6000", g.uds.display())).unwrap();
    let small = Header {
        buf_alloc: 1000,
        ..pkt(OP_REQUEST, 1, 6000, 0)
    };
    g.send(small, &[]);
    assert_eq!(g.wait_packet().0.op, OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(&[7u8; 3000]).unwrap();
    let mut got = 0;
    for _ in 0..20 {
        g.backend();
        got += g.recv().iter().map(|(_, d)| d.len()).sum::<usize>();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(got, 1000, "no more than the guest's buf_alloc");
    // The guest consumed it all and says so.
    g.send(
        Header {
            buf_alloc: 1000,
            fwd_cnt: 1000,
            ..pkt(OP_CREDIT_UPDATE, 1, 6000, 0)
        },
        &[],
    );
    for _ in 0..20 {
        g.backend();
        got += g.recv().iter().map(|(_, d)| d.len()).sum::<usize>();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(got, 2000);
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let mut g = Guest::new("overrun");
    let listener = UnixListener::bind(format!("{}_6001", g.uds.display())).unwrap();
    g.send(pkt(OP_REQUEST, 1, 6001, 0), &[]);
    assert_eq!(g.wait_packet().0.op, OP_RESPONSE);
    let (_host, _) = listener.accept().unwrap(); // never reads
    let chunk = vec![1u8; 64 << 10];
    let mut reset = false;
    for _ in 0..64 {
        g.send(pkt(OP_RW, 1, 6001, chunk.len() as u32), &chunk);
        g.backend();
        if g.recv().iter().any(|(h, _)| h.op == OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "a guest sending past buf_alloc must be reset");
}

#[test]
fn hostile_packets_are_dropped_or_reset() {
    let mut g = Guest::new("hostile");
    // Wrong source CID, wrong destination CID: dropped silently.
    g.send(
        Header {
            src_cid: 99,
            ..pkt(OP_REQUEST, 1, 2, 0)
        },
        &[],
    );
    g.send(
        Header {
            dst_cid: 7,
            ..pkt(OP_REQUEST, 1, 2, 0)
        },
        &[],
    );
    g.backend();
    assert!(g.recv().is_empty());
    // Data for a connection that does not exist, unknown type: RST.
    g.send(pkt(OP_RW, 1, 2, 3), b"abc");
    assert_eq!(g.wait_packet().0.op, OP_RST);
    g.send(
        Header {
            type_: 2,
            ..pkt(OP_REQUEST, 1, 2, 0)
        },
        &[],
    );
    assert_eq!(g.wait_packet().0.op, OP_RST);
    // RST for nothing: ignored (no RST storm).
    g.send(pkt(OP_RST, 1, 2, 0), &[]);
    g.backend();
    assert!(g.recv().is_empty());
    // Malformed TX chains: header write-only, header short, len beyond the data or the
    // limit, data outside memory. Each buffer comes back, nothing reaches the muxer.
    g.d.write(TX_HDR, &encode(&pkt(OP_REQUEST, 1, 2, 0)));
    g.d.add_chain(TX, &[(TX_HDR, 44, true)]);
    g.d.add_chain(TX, &[(TX_HDR, 20, false)]);
    g.d.write(TX_HDR + 0x100, &encode(&pkt(OP_RW, 1, 2, 100)));
    g.d.add_chain(TX, &[(TX_HDR + 0x100, 44, false), (TX_DATA, 10, false)]);
    g.d.write(TX_HDR + 0x200, &encode(&pkt(OP_RW, 1, 2, u32::MAX)));
    g.d.add_chain(TX, &[(TX_HDR + 0x200, 44, false), (TX_DATA, 4096, false)]);
    g.d.write(TX_HDR + 0x300, &encode(&pkt(OP_RW, 1, 2, 16)));
    g.d.add_chain(
        TX,
        &[(TX_HDR + 0x300, 44, false), (MEM_SIZE - 8, 16, false)],
    );
    g.d.notify(TX as u32);
    assert_eq!(g.d.used(TX).len(), 5);
    g.backend();
    assert!(g.recv().is_empty());
    // Malformed RX buffers (read-only, too short) are returned empty; good ones still work.
    let mut g = Guest::new("hostile-rx");
    let ro = (RX_BUFS + 0x40000, 44, false);
    let write = VRING_DESC_F_WRITE;
    assert_eq!(write, 2);
    for _ in 0..8 {
        // Use up the good buffers first.
        g.send(pkt(OP_RW, 1, 2, 0), &[]);
    }
    g.backend();
    let _ = g.d.used(RX);
    g.d.add_chain(RX, &[ro, (RX_BUFS + 0x41000, 4096, false)]);
    g.d.add_chain(RX, &[(RX_BUFS + 0x42000, 10, true)]);
    g.send(pkt(OP_RW, 1, 2, 0), &[]);
    let used = g.d.used(RX);
    assert!(used.iter().all(|&(_, len)| len == 0), "{used:?}");
}

#[test]
fn malformed_connect_lines_close_the_client() {
    let mut g = Guest::new("handshake");
    for line in [&b"HELLO\n"[..], b"CONNECT x\n", &[b'A'; 64]] {
        let mut c = UnixStream::connect(&g.uds).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(line).unwrap();
        for _ in 0..10 {
            g.backend();
            std::thread::sleep(Duration::from_millis(5));
        }
        // EOF, or a reset when the device left bytes unread.
        let mut rest = Vec::new();
        match c.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty()),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
    g.backend();
    assert!(g.recv().is_empty(), "no REQUEST for a bad handshake");
}

/// A transport state read from a running vsock device restores onto a new device (a
/// new socket): the registers come back, the guest is told its connections are gone
/// (TRANSPORT_RESET in its event buffer), and a host connection on the new socket
/// reaches the guest through the RX buffers it had posted before the snapshot.
#[test]
fn a_restored_device_resets_the_guests_connections_and_serves_the_new_socket() {
    use crate::devices::virtio::mmio::{MmioTransport, RestoreError};
    use crate::devices::virtio::IrqTrigger;
    use vmm_sys_util::eventfd::EventFd;

    let mut g = Guest::new("restore");
    const EVENT: usize = 2;
    let event_buf = DATA + 0x8000;
    g.d.write(event_buf, &[0xff; 8]);
    g.d.add_chain(EVENT, &[(event_buf, 8, true)]);
    let state =
        g.d.transport
            .save_state()
            .expect("state of an active device");
    assert!(state.active);
    assert_eq!(state.device_type, 19);
    assert_eq!(state.queues[RX].position.map(|p| p.next_avail), Some(0));

    let uds = g.dir.join("restored.sock");
    let dev: Arc<Mutex<dyn crate::devices::virtio::VirtioDevice>> =
        Arc::new(Mutex::new(Vsock::new(CID, &uds).unwrap()));
    let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let restored =
        MmioTransport::restore(dev.clone(), g.d.mem.clone(), irq, &state).expect("restore");
    assert_eq!(restored.save_state().unwrap().status, state.status);

    let used = g.d.used(EVENT);
    assert_eq!(used.len(), 1, "one event delivered");
    assert_eq!(used[0].1, 4);
    assert_eq!(
        g.d.read(event_buf, 4),
        0u32.to_le_bytes(),
        "TRANSPORT_RESET"
    );

    // The device on the new socket delivers a host connection into the old buffers.
    let mut client = UnixStream::connect(&uds).unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        dev.lock().unwrap().process_backend();
        if let Some((req, _)) = g.recv().into_iter().next() {
            assert_eq!((req.op, req.dst_port), (OP_REQUEST, 1024));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no REQUEST after the restore"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // A state restores only onto the device type it was taken from.
    let (disk, _file) = super::block::test_disk(8, true);
    let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let wrong = MmioTransport::restore(Arc::new(Mutex::new(disk)), g.d.mem.clone(), irq, &state);
    assert!(matches!(
        wrong.err(),
        Some(RestoreError::DeviceType {
            expected: 19,
            found: 2
        })
    ));
}
