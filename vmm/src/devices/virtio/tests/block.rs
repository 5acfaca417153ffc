//! virtio-blk through the test driver: normal I/O and hostile chains.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use super::driver::{Driver, DATA, MEM_SIZE};
use crate::devices::virtio::block::{Block, BlockOptions};

const HDR: u64 = DATA;
const BUF: u64 = DATA + 0x1000;
const STATUS: u64 = DATA + 0x800;

/// A disk of `sectors` sectors; sector n is filled with byte n.
pub fn test_disk(sectors: u64, read_only: bool) -> (Block, File) {
    let mut f = tempfile();
    for s in 0..sectors {
        f.write_all(&[s as u8; 512]).unwrap();
    }
    let opts = BlockOptions {
        volatile: false,
        read_only,
        id: "hull-disk-0".into(),
    };
    let dev = Block::from_file(f.try_clone().unwrap(), sectors, opts);
    (dev, f)
}

fn tempfile() -> File {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "hull-blk-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

fn started(sectors: u64, read_only: bool) -> (Driver, File) {
    let (dev, f) = test_disk(sectors, read_only);
    let mut d = Driver::new(Arc::new(Mutex::new(dev)));
    let features = d.device_features();
    d.start(features & !(1 << 0x20), 1);
    (d, f)
}

fn header(d: &Driver, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    d.write(HDR, &h);
    d.write(STATUS, &[0xee]);
}

/// Posts header / data / status, notifies, returns (status byte, used len).
fn request(d: &mut Driver, kind: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u8, u32) {
    header(d, kind, sector);
    let mut bufs = vec![(HDR, 16, false)];
    bufs.extend_from_slice(data);
    bufs.push((STATUS, 1, true));
    d.add_chain(0, &bufs);
    d.notify(0);
    let used = d.used(0);
    assert_eq!(used.len(), 1, "one completion");
    (d.read(STATUS, 1)[0], used[0].1)
}

#[test]
fn read_write_flush_get_id() {
    let (mut d, mut f) = started(64, false);
    // Read sectors 2 and 3 into two buffers.
    let (st, len) = request(
        &mut d,
        VIRTIO_BLK_T_IN,
        2,
        &[(BUF, 512, true), (BUF + 0x1000, 512, true)],
    );
    assert_eq!((st, len), (VIRTIO_BLK_S_OK as u8, 1025));
    assert_eq!(d.read(BUF, 512), vec![2u8; 512]);
    assert_eq!(d.read(BUF + 0x1000, 512), vec![3u8; 512]);
    assert!(d.take_irq());
    // Write sector 5.
    d.write(BUF, &[0xab; 1024]);
    let (st, len) = request(&mut d, VIRTIO_BLK_T_OUT, 5, &[(BUF, 1024, false)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK as u8, 1));
    let mut back = vec![0u8; 1024];
    f.seek(SeekFrom::Start(5 * 512)).unwrap();
    f.read_exact(&mut back).unwrap();
    assert_eq!(back, vec![0xab; 1024]);
    let (st, _) = request(&mut d, VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(st, VIRTIO_BLK_S_OK as u8);
    let (st, len) = request(&mut d, VIRTIO_BLK_T_GET_ID, 0, &[(BUF, 20, true)]);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK as u8, 21));
    assert_eq!(&d.read(BUF, 12)[..], b"hull-disk-0\0");
    // A 1 MiB read in one descriptor (chunked on the host side) at the last sectors.
    let (st, _) = request(&mut d, VIRTIO_BLK_T_IN, 0, &[(BUF, 64 * 512, true)]);
    assert_eq!(st, VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.read(BUF + 63 * 512, 512), vec![63u8; 512]);
}

#[test]
fn read_only_disk_refuses_writes() {
    let (mut d, _f) = started(8, true);
    assert_ne!(d.device_features() & 1 << VIRTIO_BLK_F_RO, 0);
    let (st, _) = request(&mut d, VIRTIO_BLK_T_OUT, 0, &[(BUF, 512, false)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR as u8);
    let (st, _) = request(&mut d, VIRTIO_BLK_T_IN, 0, &[(BUF, 512, true)]);
    assert_eq!(st, VIRTIO_BLK_S_OK as u8);
}

#[test]
fn invalid_requests_get_an_error_status() {
    let (mut d, _f) = started(8, false);
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    // Past the end, and overflowing sector arithmetic.
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 8, &[(BUF, 512, true)]).0,
        ioerr
    );
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 7, &[(BUF, 1024, true)]).0,
        ioerr
    );
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, u64::MAX, &[(BUF, 512, true)]).0,
        ioerr
    );
    // Data in the wrong direction, both ways.
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(BUF, 512, false)]).0,
        ioerr
    );
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_OUT, 0, &[(BUF, 512, true)]).0,
        ioerr
    );
    // Partial sector.
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(BUF, 100, true)]).0,
        ioerr
    );
    // Data outside guest memory, straddling its end, huge lengths.
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(MEM_SIZE, 512, true)]).0,
        ioerr
    );
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(MEM_SIZE - 256, 512, true)]).0,
        ioerr
    );
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_IN, 0, &[(u64::MAX - 10, 512, true)]).0,
        ioerr
    );
    assert_eq!(
        request(&mut d, VIRTIO_BLK_T_OUT, 0, &[(BUF, 0xffff_fe00, false)]).0,
        ioerr
    );
    // Unknown type.
    assert_eq!(request(&mut d, 99, 0, &[]).0, VIRTIO_BLK_S_UNSUPP as u8);
    // Header written by the device side, or too short.
    header(&d, VIRTIO_BLK_T_IN, 0);
    d.add_chain(0, &[(HDR, 16, true), (BUF, 512, true), (STATUS, 1, true)]);
    d.add_chain(0, &[(HDR, 8, false), (BUF, 512, true), (STATUS, 1, true)]);
    d.notify(0);
    assert_eq!(d.used(0).len(), 2);
    assert_eq!(d.read(STATUS, 1)[0], ioerr);
}

#[test]
fn chains_without_status_are_dropped() {
    let (mut d, _f) = started(8, false);
    header(&d, VIRTIO_BLK_T_IN, 0);
    // Status read-only; status outside memory; a lone header.
    d.add_chain(0, &[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, false)]);
    d.add_chain(
        0,
        &[(HDR, 16, false), (BUF, 512, true), (MEM_SIZE + 8, 1, true)],
    );
    d.add_chain(0, &[(HDR, 16, false)]);
    d.notify(0);
    assert_eq!(d.used(0), vec![(0, 0), (3, 0), (6, 0)]);
    assert_eq!(d.read(STATUS, 1)[0], 0xee, "nothing written");
}

#[test]
fn looping_and_wild_chains_terminate() {
    let (mut d, _f) = started(8, false);
    header(&d, VIRTIO_BLK_T_IN, 0);
    let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
    // 0 -> 1 -> 0 -> ...: the walk stops after queue-size descriptors.
    d.raw_desc(0, 0, HDR, 16, next, 1);
    d.raw_desc(0, 1, BUF, 512, next | write, 0);
    d.push_avail(0, 0);
    // Self loop.
    d.raw_desc(0, 2, STATUS, 1, next | write, 2);
    d.push_avail(0, 2);
    // next index outside the table.
    d.raw_desc(0, 3, HDR, 16, next, 200);
    d.push_avail(0, 3);
    // Head outside the table.
    d.push_avail(0, 40000);
    d.notify(0);
    let used = d.used(0);
    assert!(used.len() >= 3, "{used:?}");
    assert!(used.iter().all(|&(_, len)| len <= 1), "{used:?}");

    // The available index runs more than a queue ahead: nothing is processed.
    let (mut d, _f) = started(8, false);
    d.set_avail_idx(0, 1000);
    d.notify(0);
    assert!(d.used(0).is_empty());
    // An indirect table outside memory.
    let (mut d, _f) = started(8, false);
    d.raw_desc(
        0,
        0,
        MEM_SIZE - 8,
        64,
        virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16,
        0,
    );
    d.push_avail(0, 0);
    d.notify(0);
    assert_eq!(d.used(0), vec![(0, 0)]);
}
