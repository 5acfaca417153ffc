//! The boot information a kernel reads at entry: the Linux zero page (`boot_params`, with
//! its e820 map) or the PVH `hvm_start_info` (with its memmap and module list).

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::boot::{InitrdPlacement, LoadedKernel, HDRS_MAGIC, LOADER_TYPE_UNDEFINED};
use super::layout::{
    memory_map, CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};
use super::BootProtocol;
use crate::error::{Error, Result};

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Boot sector signature in `setup_header.boot_flag`.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// Alignment a synthesized header (ELF kernels) announces.
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;

/// Writes whatever boot information `kernel`'s protocol needs.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    mem_size: u64,
) -> Result<()> {
    match kernel.entry.protocol {
        BootProtocol::Pvh => write_pvh_start_info(mem, initrd, mem_size),
        BootProtocol::Linux64 => write_zero_page(mem, kernel, cmdline_len, initrd, mem_size),
        BootProtocol::RealMode => Ok(()),
    }
}

fn synthesized_header(cmdline_len: usize) -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG_MAGIC,
        header: HDRS_MAGIC,
        kernel_alignment: KERNEL_ALIGNMENT,
        cmdline_size: cmdline_len as u32,
        ..Default::default()
    }
}

/// The Linux zero page at [`ZERO_PAGE_START`].
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    mem_size: u64,
) -> Result<()> {
    let mut params = boot_params {
        hdr: kernel
            .setup_header
            .unwrap_or_else(|| synthesized_header(cmdline_len)),
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.ext_cmd_line_ptr = 0;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    let map = memory_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err(Error::Memory("too many e820 entries".into()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| Error::Memory(format!("writing the zero page: {e}")))
}

/// The PVH `hvm_start_info` at [`PVH_INFO_START`], the initrd as module 0.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<InitrdPlacement>,
    mem_size: u64,
) -> Result<()> {
    let memmap: Vec<hvm_memmap_table_entry> = memory_map(mem_size)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    if memmap.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(Error::Memory("too many PVH memmap entries".into()));
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some(initrd) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| Error::Memory(format!("writing the PVH start_info: {e}")))
}
