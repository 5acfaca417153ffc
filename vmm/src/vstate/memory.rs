//! Guest RAM: one memfd (shared, so a vhost-user backend can map it too) or anonymous
//! private memory, optionally on 2 MiB huge pages, split around the MMIO gap.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::x86_64::layout::ram_regions;
use crate::error::{Error, Result};

/// How guest RAM is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBacking {
    /// memfd + MAP_SHARED (else anonymous MAP_PRIVATE).
    pub shared: bool,
    /// 2 MiB huge pages.
    pub hugepages: bool,
}

fn create_memfd(size: u64, hugepages: bool) -> Result<File> {
    let name = CString::new("hull-guest-ram").map_err(|e| Error::Memory(e.to_string()))?;
    let mut flags = libc::MFD_CLOEXEC;
    if hugepages {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the flags
    // are valid memfd_create flags. The return value is checked below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::Memory(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| Error::Memory(format!("sizing the memfd to {size} bytes: {e}")))?;
    Ok(file)
}

/// Creates guest RAM of `size` bytes laid out by [`ram_regions`].
pub fn create_guest_memory(size: u64, backing: MemoryBacking) -> Result<GuestMemoryMmap> {
    let memfd = if backing.shared {
        Some(Arc::new(create_memfd(size, backing.hugepages)?))
    } else {
        None
    };
    map_guest_memory(size, backing, memfd)
}

/// Maps guest RAM: `memfd` (shared backing) or anonymous memory.
fn map_guest_memory(
    size: u64,
    backing: MemoryBacking,
    memfd: Option<Arc<File>>,
) -> Result<GuestMemoryMmap> {
    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (base, len) in ram_regions(size) {
        let len_usize = usize::try_from(len)
            .map_err(|_| Error::Memory(format!("region of {len} bytes too large")))?;
        let mut builder = MmapRegionBuilder::new(len_usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_hugetlbfs(backing.hugepages);
        // Huge pages are reserved at mmap time (no MAP_NORESERVE) so that a shortage is
        // an error now rather than a SIGBUS when the guest touches the page.
        let noreserve = if backing.hugepages {
            0
        } else {
            libc::MAP_NORESERVE
        };
        builder = match &memfd {
            Some(file) => builder
                .with_file_offset(FileOffset::from_arc(file.clone(), file_offset))
                .with_mmap_flags(libc::MAP_SHARED | noreserve),
            None => {
                let huge = if backing.hugepages {
                    libc::MAP_HUGETLB
                } else {
                    0
                };
                builder.with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | noreserve | huge)
            }
        };
        let mapping = builder.build().map_err(|e| {
            Error::Memory(format!(
                "mapping {len} bytes at {:#x}{}: {e}",
                base.0,
                if backing.hugepages {
                    " (huge pages: are enough free in /proc/sys/vm/nr_hugepages?)"
                } else {
                    ""
                }
            ))
        })?;
        let region = GuestRegionMmap::new(mapping, base)
            .ok_or_else(|| Error::Memory(format!("region at {:#x} overflows", base.0)))?;
        regions.push(region);
        file_offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| Error::Memory(e.to_string()))
}

/// Guest RAM of `size` bytes with the content of a snapshot's memory `file` (laid out
/// as [`create_guest_memory`]'s memfd: regions back to back).
///
/// - Private memory maps the file copy-on-write (`MAP_PRIVATE`): nothing is read up
///   front, and every VM restored from the same file shares the pages it has not
///   written (the page cache holds one copy).
/// - Shared memory (a vhost-user backend must map it) cannot share the file: a page
///   the guest writes must be seen by the backend, which a private mapping hides. It is
///   a new memfd that gets a copy of the file's data; the file's holes (zero pages)
///   are not read.
pub fn restore_guest_memory(
    size: u64,
    backing: MemoryBacking,
    file: &File,
) -> Result<GuestMemoryMmap> {
    if backing.shared && !backing.hugepages {
        // The kernel copies page cache to the memfd's pages: no page faults here (the
        // guest faults in what it touches, as after a boot).
        let memfd = create_memfd(size, false)?;
        copy_data_extents(file, &memfd)?;
        return map_guest_memory(size, backing, Some(Arc::new(memfd)));
    }
    if backing.shared {
        // hugetlbfs takes no write(2): copy through the mapping.
        let mem = create_guest_memory(size, backing)?;
        copy_file_into(&mem, file)?;
        return Ok(mem);
    }
    if backing.hugepages {
        return Err(Error::Memory(
            "huge pages cannot map a snapshot's memory file; restore with shared memory".into(),
        ));
    }
    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (base, len) in ram_regions(size) {
        let len_usize = usize::try_from(len)
            .map_err(|_| Error::Memory(format!("region of {len} bytes too large")))?;
        let clone = file
            .try_clone()
            .map_err(|e| Error::Memory(format!("memory file: {e}")))?;
        let mapping = MmapRegionBuilder::new(len_usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_file_offset(FileOffset::new(clone, file_offset))
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| Error::Memory(format!("mapping the memory file at {file_offset}: {e}")))?;
        let region = GuestRegionMmap::new(mapping, base)
            .ok_or_else(|| Error::Memory(format!("region at {:#x} overflows", base.0)))?;
        regions.push(region);
        file_offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| Error::Memory(e.to_string()))
}

/// The next data byte at or after `offset` (`SEEK_DATA`) or the next hole
/// (`SEEK_HOLE`); `None` past the end.
fn seek(file: &File, offset: u64, whence: libc::c_int) -> Option<u64> {
    let offset = libc::off_t::try_from(offset).ok()?;
    // SAFETY: lseek on an fd this File owns; it only moves the file offset, which
    // nothing else here relies on (reads use pread).
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    u64::try_from(at).ok()
}

/// Copies the data extents of `from` into `to` at the same offsets (sendfile(2): in
/// the kernel, holes skipped).
fn copy_data_extents(from: &File, to: &File) -> Result<()> {
    let len = from
        .metadata()
        .map_err(|e| Error::Memory(format!("memory file: {e}")))?
        .len();
    let mut at = 0u64;
    while let Some(data) = seek(from, at, libc::SEEK_DATA).filter(|&d| d < len) {
        let hole = seek(from, data, libc::SEEK_HOLE).unwrap_or(len).min(len);
        let mut pos = data;
        while pos < hole {
            let copied = send_file(from, to, pos, hole - pos)
                .map_err(|e| Error::Memory(format!("copying the memory file at {pos}: {e}")))?;
            if copied == 0 {
                return Err(Error::Memory(format!(
                    "the memory file ended at {pos}, before {hole}"
                )));
            }
            pos += copied;
        }
        at = hole;
    }
    Ok(())
}

/// One sendfile(2) of up to `count` bytes from `from` at `offset` to `to` at the same
/// offset; returns how many were copied.
fn send_file(from: &File, to: &File, offset: u64, count: u64) -> std::io::Result<u64> {
    let bad = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let start = libc::off_t::try_from(offset).map_err(|_| bad())?;
    // SAFETY: lseek on an fd `to` owns (its offset is where sendfile writes).
    if unsafe { libc::lseek(to.as_raw_fd(), start, libc::SEEK_SET) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut in_offset = start;
    let count = usize::try_from(count.min(1 << 30)).map_err(|_| bad())?;
    // SAFETY: both fds are open (owned by `from` and `to`); `in_offset` is a valid
    // off_t the call reads and updates; no memory of ours is written.
    let n = unsafe { libc::sendfile(to.as_raw_fd(), from.as_raw_fd(), &mut in_offset, count) };
    u64::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// Copies the data extents of `file` into `mem` (file offsets map to the regions back
/// to back).
fn copy_file_into(mem: &GuestMemoryMmap, file: &File) -> Result<()> {
    use std::os::unix::fs::FileExt;
    use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion};
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut region_start = 0u64;
    for region in mem.iter() {
        let region_end = region_start + region.len();
        let mut at = region_start;
        while let Some(data) = seek(file, at, libc::SEEK_DATA).filter(|&d| d < region_end) {
            let hole = seek(file, data, libc::SEEK_HOLE)
                .unwrap_or(region_end)
                .min(region_end);
            let mut pos = data;
            while pos < hole {
                let n = CHUNK.min((hole - pos) as usize);
                file.read_exact_at(&mut buf[..n], pos)
                    .map_err(|e| Error::Memory(format!("reading the memory file at {pos}: {e}")))?;
                let gpa = region.start_addr().unchecked_add(pos - region_start);
                mem.write_slice(&buf[..n], gpa)
                    .map_err(|e| Error::Memory(format!("restoring memory at {:#x}: {e}", gpa.0)))?;
                pos += n as u64;
            }
            at = hole;
        }
        region_start = region_end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn shared_memory_is_one_memfd_split_around_the_gap() {
        let size = (3u64 << 30) + (64 << 20); // crosses the MMIO gap
        let backing = MemoryBacking {
            shared: true,
            hugepages: false,
        };
        let mem = create_guest_memory(size, backing).unwrap();
        assert_eq!(mem.num_regions(), 2);
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions[1].start_addr(), GuestAddress(1 << 32));
        let fo0 = regions[0].file_offset().unwrap();
        let fo1 = regions[1].file_offset().unwrap();
        assert_eq!(fo0.file().as_raw_fd(), fo1.file().as_raw_fd());
        assert_eq!(fo1.start(), 3 << 30);
        mem.write_obj(0x1234_5678u32, GuestAddress((1 << 32) + 8))
            .unwrap();
        // A second mapping of the memfd (what a vhost-user backend does) sees the write.
        let other = MmapRegionBuilder::<()>::new(4096)
            .with_file_offset(FileOffset::new(fo1.file().try_clone().unwrap(), 3 << 30))
            .with_mmap_prot(libc::PROT_READ)
            .with_mmap_flags(libc::MAP_SHARED)
            .build()
            .unwrap();
        // SAFETY: the mapping is 4096 bytes long and readable; offset 8 is in bounds.
        let seen = unsafe { std::ptr::read_volatile(other.as_ptr().add(8) as *const u32) };
        assert_eq!(seen, 0x1234_5678);
    }

    #[test]
    fn private_memory_has_no_file() {
        let backing = MemoryBacking {
            shared: false,
            hugepages: false,
        };
        let mem = create_guest_memory(16 << 20, backing).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert!(mem.iter().next().unwrap().file_offset().is_none());
    }
}
