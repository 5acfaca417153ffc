//! The guest physical memory map hull-vmm uses on x86_64.
//!
//! ```text
//! 0x0000_0500  GDT (5 entries)          0x0000_0540  IDT (empty, limit 0)
//! 0x0000_1000  TSS (0x68 bytes)         0x0000_6000  PVH hvm_start_info, modlist, memmap
//! 0x0000_7000  zero page (boot_params)  0x0000_8ff0  boot stack pointer (grows down)
//! 0x0000_9000  PML4  0xa000 PDPT  0xb000..0xefff four PDs (identity map of 0..4 GiB)
//! 0x0000_7c00  raw16 programs (only with kernel_format raw16: none of the above is written)
//! 0x0002_0000  kernel command line (4 KiB)
//! 0x0009_fc00  EBDA: the MP table (not RAM in the e820 map)
//! 0x0010_0000  kernels are loaded from here (ELF p_paddr, bzImage code32_start)
//! 0xc000_0000  .. 4 GiB: MMIO gap, RAM continues above 4 GiB
//! 0xd000_0000  virtio-mmio devices, 4 KiB apart
//! ```
//! The initrd goes at the top of RAM below the gap, page aligned.

use vm_memory::GuestAddress;

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x540;
pub const TSS_START: u64 = 0x1000;
pub const TSS_LIMIT: u32 = 0x67;
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x6080;
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Page directories mapping 0..4 GiB with 2 MiB pages.
pub const PD_COUNT: u64 = 4;
pub const REAL_MODE_LOAD: u64 = 0x7c00;
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x1000;
pub const EBDA_START: u64 = 0x9fc00;
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
/// virtio-mmio windows: 4 KiB each from here (inside the MMIO gap, below the IOAPIC).
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const PAGE_SIZE: u64 = 0x1000;

/// E820 / PVH memory map entry types.
pub const E820_RAM: u32 = 1;

/// One entry of the memory map handed to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The RAM regions backing `mem_size` bytes of guest memory: below the MMIO gap first,
/// the rest from 4 GiB up.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), low)];
    if mem_size > low {
        regions.push((GuestAddress(MMIO_GAP_END), mem_size - low));
    }
    regions
}

/// End (exclusive) of the RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// The memory map the guest sees (e820 for Linux boot, the PVH memmap for PVH).
/// `mem_size` is at least 2 MiB (validated by the config).
pub fn memory_map(mem_size: u64) -> Vec<MemMapEntry> {
    let low_end = low_ram_end(mem_size);
    let mut map = vec![MemMapEntry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    if low_end > HIMEM_START {
        map.push(MemMapEntry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > low_end {
        map.push(MemMapEntry {
            addr: MMIO_GAP_END,
            size: mem_size - low_end,
            kind: E820_RAM,
        });
    }
    map
}
