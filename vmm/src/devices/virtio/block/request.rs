//! One virtio-blk request: parsed from a descriptor chain, every descriptor checked
//! (direction, length, address inside guest memory), the sector range checked against
//! the disk, then run against the file.
//!
//! Layout (virtio 1.2, 5.2.6): a device-readable 16-byte header {type u32, reserved u32,
//! sector u64}, data descriptors (device-writable for IN/GET_ID, device-readable for
//! OUT), and a device-writable status byte (the last byte of the last descriptor).

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestMemory, GuestMemoryMmap, Permissions};

pub const SECTOR_SIZE: u64 = 512;
const HEADER_LEN: u32 = 16;
/// Host buffer for one copy step: a request never makes the VMM allocate more.
const CHUNK: usize = 64 << 10;

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("descriptor chain too short (no header or no status)")]
    TooShort,
    #[error("header descriptor is device-writable or shorter than 16 bytes")]
    BadHeader,
    #[error("data descriptor {0} has the wrong direction")]
    WrongDirection(usize),
    #[error("descriptor {0} points outside guest memory")]
    OutsideMemory(usize),
    #[error("data length {0} is not a multiple of the sector size")]
    PartialSector(u64),
    #[error("sectors {sector}+{count} are past the end of the disk ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("host I/O: {0}")]
    Io(String),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// The disk a request runs against.
pub struct Disk<'a> {
    pub file: &'a File,
    pub capacity: u64,
    pub read_only: bool,
    pub id: &'a [u8],
}

/// What to put in the used ring for a chain.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    /// Bytes the device wrote into the chain's writable buffers (data + status).
    pub used_len: u32,
    pub result: Result<(), RequestError>,
}

fn in_memory(mem: &GuestMemoryMmap, d: &Descriptor, access: Permissions) -> bool {
    mem.check_range(d.addr(), d.len() as usize, access)
}

/// Runs the request in `descs` (the chain's descriptors, in order). Returns `None` when
/// the chain has no usable status byte: the request is then dropped (used length 0).
pub fn handle(mem: &GuestMemoryMmap, descs: &[Descriptor], disk: &Disk) -> Option<Completion> {
    let status = descs
        .last()
        .filter(|d| descs.len() >= 2 && d.is_write_only() && d.len() >= 1)?;
    let status_addr = status.addr().checked_add(u64::from(status.len()) - 1)?;
    if !mem.check_range(status_addr, 1, Permissions::Write) {
        return None;
    }
    let (used, result) = match run(mem, descs, disk) {
        Ok(written) => (written, Ok(())),
        Err(e) => (0, Err(e)),
    };
    let code = match &result {
        Ok(()) => VIRTIO_BLK_S_OK as u8,
        Err(e) => e.status(),
    };
    mem.write_obj(code, status_addr).ok()?;
    Some(Completion {
        used_len: used.saturating_add(1),
        result,
    })
}

/// Validates and runs; returns the bytes written to device-writable data buffers.
fn run(mem: &GuestMemoryMmap, descs: &[Descriptor], disk: &Disk) -> Result<u32, RequestError> {
    let header = descs.first().ok_or(RequestError::TooShort)?;
    if header.is_write_only() || header.len() < HEADER_LEN {
        return Err(RequestError::BadHeader);
    }
    if !in_memory(mem, header, Permissions::Read) {
        return Err(RequestError::OutsideMemory(0));
    }
    let kind: u32 = mem
        .read_obj(header.addr())
        .map_err(|_| RequestError::OutsideMemory(0))?;
    let sector: u64 = mem
        .read_obj(header.addr().unchecked_add(8))
        .map_err(|_| RequestError::OutsideMemory(0))?;
    let data = &descs[1..descs.len() - 1];

    let device_writes = match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID => true,
        VIRTIO_BLK_T_OUT => false,
        VIRTIO_BLK_T_FLUSH => {
            disk.file
                .sync_data()
                .map_err(|e| RequestError::Io(e.to_string()))?;
            return Ok(0);
        }
        other => return Err(RequestError::Unsupported(other)),
    };
    let access = if device_writes {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mut total = 0u64;
    for (i, d) in data.iter().enumerate() {
        if d.is_write_only() != device_writes {
            return Err(RequestError::WrongDirection(i + 1));
        }
        if !in_memory(mem, d, access) {
            return Err(RequestError::OutsideMemory(i + 1));
        }
        total += u64::from(d.len());
    }
    if kind == VIRTIO_BLK_T_GET_ID {
        return write_id(mem, data, disk.id);
    }
    if kind == VIRTIO_BLK_T_OUT && disk.read_only {
        return Err(RequestError::ReadOnly);
    }
    if !total.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::PartialSector(total));
    }
    let count = total / SECTOR_SIZE;
    if sector
        .checked_add(count)
        .is_none_or(|end| end > disk.capacity)
    {
        return Err(RequestError::OutOfRange {
            sector,
            count,
            capacity: disk.capacity,
        });
    }
    copy_data(mem, data, disk.file, sector * SECTOR_SIZE, device_writes)?;
    Ok(if device_writes { total as u32 } else { 0 })
}

fn write_id(mem: &GuestMemoryMmap, data: &[Descriptor], id: &[u8]) -> Result<u32, RequestError> {
    let mut buf = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    let n = id.len().min(buf.len());
    buf[..n].copy_from_slice(&id[..n]);
    let d = data.first().ok_or(RequestError::TooShort)?;
    let len = (d.len() as usize).min(buf.len());
    mem.write_slice(&buf[..len], d.addr())
        .map_err(|_| RequestError::OutsideMemory(1))?;
    Ok(len as u32)
}

/// Moves data between the file (from byte `pos`) and the descriptors, in chunks.
fn copy_data(
    mem: &GuestMemoryMmap,
    data: &[Descriptor],
    file: &File,
    mut pos: u64,
    to_guest: bool,
) -> Result<(), RequestError> {
    let io = |e: std::io::Error| RequestError::Io(e.to_string());
    let mut buf = vec![0u8; CHUNK];
    for (i, d) in data.iter().enumerate() {
        let mut done = 0u64;
        let len = u64::from(d.len());
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let addr = d.addr().unchecked_add(done);
            let outside = |_| RequestError::OutsideMemory(i + 1);
            if to_guest {
                file.read_exact_at(&mut buf[..n], pos).map_err(io)?;
                mem.write_slice(&buf[..n], addr).map_err(outside)?;
            } else {
                mem.read_slice(&mut buf[..n], addr).map_err(outside)?;
                file.write_all_at(&buf[..n], pos).map_err(io)?;
            }
            done += n as u64;
            pos += n as u64;
        }
    }
    Ok(())
}
