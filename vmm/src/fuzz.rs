//! Entry points for the cargo-fuzz targets in `vmm/fuzz` (feature `fuzzing`). Each takes
//! arbitrary bytes, drives one guest- or host-facing parser, and must never panic, hang
//! or touch memory outside the guest's.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::devices::virtio::block::{Block, BlockOptions};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::vsock::handshake::{parse_connect, LineReader};
use crate::devices::virtio::vsock::{Header, Muxer, Vsock};
use crate::devices::virtio::{IrqTrigger, VirtioDevice};

const MEM: usize = 1 << 20;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).expect("1 MiB of test memory")
}

fn null_disk() -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("/dev/null")
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hull-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// One vsock device per process, reset between inputs (binding a socket per input
/// would make the fuzzer slow).
fn shared_vsock() -> Arc<Mutex<dyn VirtioDevice>> {
    static DEV: OnceLock<Arc<Mutex<Vsock>>> = OnceLock::new();
    DEV.get_or_init(|| {
        let path = scratch_dir().join("dev.sock");
        let _ = std::fs::remove_file(&path);
        Arc::new(Mutex::new(Vsock::new(3, &path).expect("vsock device")))
    })
    .clone()
}

fn transport(device: Arc<Mutex<dyn VirtioDevice>>, mem: &GuestMemoryMmap) -> MmioTransport {
    let irq = Arc::new(IrqTrigger::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    ));
    // A shared device may still run with the last input's queues.
    device.lock().unwrap_or_else(|p| p.into_inner()).reset();
    MmioTransport::new(device, mem.clone(), irq).expect("transport")
}

fn serve_all(device: &Arc<Mutex<dyn VirtioDevice>>) {
    let mut d = device.lock().unwrap_or_else(|p| p.into_inner());
    let queues = d.queue_max_sizes().len();
    for q in 0..queues {
        d.process_queue(q);
    }
    d.process_backend();
}

/// The hybrid `CONNECT <port>\n` line.
pub fn connect_line(data: &[u8]) {
    let _ = parse_connect(data);
    let mut input = data;
    let mut reader = LineReader::default();
    let _ = reader.poll(&mut input);
}

/// The virtio-mmio register interface: records of 7 bytes {op, offset u16, value u32};
/// op bit 0 = write, bits 1..3 = access size 1/2/4/8. Device queues are served after
/// every write, as the event loop would after a notification.
pub fn mmio_registers(data: &[u8]) {
    let mem = memory();
    let (first, rest) = data.split_first().map_or((0, data), |(f, r)| (*f, r));
    let device: Arc<Mutex<dyn VirtioDevice>> = if first & 1 == 0 {
        Arc::new(Mutex::new(Block::from_file(
            null_disk(),
            8,
            BlockOptions {
                volatile: false,
                read_only: first & 2 != 0,
                id: "fuzz".into(),
            },
        )))
    } else {
        shared_vsock()
    };
    let mut t = transport(device.clone(), &mem);
    for rec in rest.chunks_exact(7) {
        let size = [1usize, 2, 4, 8][usize::from(rec[0] >> 1 & 3)];
        let offset = u64::from(u16::from_le_bytes([rec[1], rec[2]]));
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&rec[3..7]);
        if rec[0] & 1 == 1 {
            t.write(offset, &bytes[..size]);
            serve_all(&device);
        } else {
            t.read(offset, &mut bytes[..size]);
        }
    }
}

/// Descriptor-chain walking: a well-formed driver brings up a device with 16-entry
/// queues at fixed addresses, then the input becomes the descriptor tables, available
/// rings and buffers, and the queues are served.
pub fn descriptor_chains(data: &[u8]) {
    let mem = memory();
    let (first, rest) = data.split_first().map_or((0, data), |(f, r)| (*f, r));
    let device: Arc<Mutex<dyn VirtioDevice>> = if first & 1 == 0 {
        Arc::new(Mutex::new(Block::from_file(
            null_disk(),
            16,
            BlockOptions {
                volatile: false,
                read_only: false,
                id: String::new(),
            },
        )))
    } else {
        shared_vsock()
    };
    let mut t = transport(device.clone(), &mem);
    let set = |t: &mut MmioTransport, off: u64, v: u32| t.write(off, &v.to_le_bytes());
    set(&mut t, 0x70, 3);
    set(&mut t, 0x24, 1);
    set(&mut t, 0x20, 1); // VERSION_1
    set(&mut t, 0x70, 0xb);
    let queues = device
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .queue_max_sizes()
        .len();
    for q in 0..queues as u32 {
        let base = 0x1_0000 + q * 0x1000;
        set(&mut t, 0x30, q);
        set(&mut t, 0x38, 16);
        set(&mut t, 0x80, base);
        set(&mut t, 0x90, base + 0x400);
        set(&mut t, 0xa0, base + 0x800);
        set(&mut t, 0x44, 1);
    }
    set(&mut t, 0x70, 0xf);
    // 16 descriptors per queue from the input: 12 bytes each {addr u32, len u16, flags u8
    // (NEXT/WRITE/INDIRECT), next u8, selector u32}; most addresses land in the buffer
    // area so that the interesting paths run, some anywhere.
    let mut input = rest;
    let mut take = |n: usize| {
        let (a, b) = input.split_at(n.min(input.len()));
        input = b;
        let mut v = a.to_vec();
        v.resize(n, 0);
        v
    };
    for q in 0..queues as u64 {
        let base = 0x1_0000 + q * 0x1000;
        for i in 0..16u64 {
            let r = take(12);
            let raw = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
            let addr = if r[8] & 7 == 0 {
                u64::from(raw) | u64::from(r[9]) << 32
            } else {
                0x2_0000 + u64::from(raw % 0x8_0000)
            };
            let len = u32::from(u16::from_le_bytes([r[4], r[5]])) << (r[10] & 3);
            let flags = u16::from(r[6] & 7);
            let next = u16::from(r[7] % 20);
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            let _ = mem.write_slice(&d, GuestAddress(base + i * 16));
        }
        // Available ring: idx and 16 heads.
        let r = take(17);
        let idx = u16::from(r[0] % 40);
        let _ = mem.write_obj(idx, GuestAddress(base + 0x402));
        for (k, h) in r[1..].iter().enumerate() {
            let _ = mem.write_obj(
                u16::from(*h % 20),
                GuestAddress(base + 0x404 + 2 * k as u64),
            );
        }
    }
    // The rest fills the buffer area (request headers, vsock packets).
    let _ = mem.write_slice(
        &input[..input.len().min(MEM - 0x2_0000)],
        GuestAddress(0x2_0000),
    );
    serve_all(&device);
}

/// The vsock muxer's packet handling: records of a 44-byte header and up to 64 bytes of
/// payload (length from the header, capped), then whatever the muxer wants to send back.
pub fn vsock_packets(data: &[u8]) {
    static MUX: OnceLock<Mutex<Muxer>> = OnceLock::new();
    let mux = MUX.get_or_init(|| {
        let path = scratch_dir().join("mux.sock");
        let _ = std::fs::remove_file(&path);
        Mutex::new(Muxer::new(3, &path).expect("muxer"))
    });
    let mut m = mux.lock().unwrap_or_else(|p| p.into_inner());
    m.reset();
    let mut rest = data;
    let mut buf = [0u8; 256];
    while rest.len() >= 44 {
        let (h, tail) = rest.split_at(44);
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let header = Header {
            // Mostly valid CIDs, so that the interesting paths run.
            src_cid: if h[0] & 1 == 0 {
                3
            } else {
                u64::from(u32_at(0))
            },
            dst_cid: if h[8] & 1 == 0 {
                2
            } else {
                u64::from(u32_at(8))
            },
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30) % 9,
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        };
        let n = (header.len as usize).min(64).min(tail.len());
        m.send_to_host(&header, &tail[..n]);
        rest = &tail[n..];
        m.process_events();
        let mut budget = 64;
        while m.has_rx() && budget > 0 {
            budget -= 1;
            let _ = m.fill_rx(&mut buf[..usize::from(h[1])]);
        }
    }
}
