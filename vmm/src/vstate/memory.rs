//! Guest RAM: one memfd (shared, so a vhost-user backend can map it too) or anonymous
//! private memory, optionally on 2 MiB huge pages, split around the MMIO gap.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
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
