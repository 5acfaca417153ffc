//! Putting a kernel, its command line and its initrd into guest memory with
//! linux-loader, and deciding how the boot vCPU enters it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::{
    low_ram_end, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, PAGE_SIZE,
    REAL_MODE_LOAD,
};
use super::{BootProtocol, EntryPoint};
use crate::config::KernelFormat;
use crate::error::{Error, Result};

/// bzImage setup header magic "HdrS" at file offset 0x202.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
const HDRS_OFFSET: u64 = 0x202;
/// `xloadflags` bit: the kernel has the 64-bit entry point at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry point from the protected-mode kernel's load address.
pub const STARTUP_64_OFFSET: u64 = 0x200;
/// The loader id the boot protocol reserves for "undefined" boot loaders.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// How to enter it.
    pub entry: EntryPoint,
    /// First byte after the loaded image (where an initrd may start at the earliest).
    pub kernel_end: u64,
    /// bzImage setup header (with `code32_start` set to the load address).
    pub setup_header: Option<setup_header>,
}

/// Where the initrd ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

fn load_err(what: &str) -> impl FnOnce(linux_loader::loader::Error) -> Error + '_ {
    move |e| Error::KernelLoad(format!("{what}: {e}"))
}

/// Decides the format of an `Auto` kernel from its first bytes.
pub fn detect_format(kernel: &mut File) -> Result<KernelFormat> {
    let io = |e: std::io::Error| Error::KernelLoad(format!("reading the kernel: {e}"));
    let mut magic = [0u8; 4];
    kernel.seek(SeekFrom::Start(0)).map_err(io)?;
    if kernel.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    let mut hdrs = [0u8; 4];
    kernel.seek(SeekFrom::Start(HDRS_OFFSET)).map_err(io)?;
    if kernel.read_exact(&mut hdrs).is_ok() && u32::from_le_bytes(hdrs) == HDRS_MAGIC {
        return Ok(KernelFormat::Bzimage);
    }
    Err(Error::KernelLoad(
        "neither an ELF nor a bzImage; set kernel_format to raw16 for a real-mode program".into(),
    ))
}

/// Loads `kernel` into `mem` and returns its entry point.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    format: KernelFormat,
) -> Result<LoadedKernel> {
    let format = match format {
        KernelFormat::Auto => detect_format(kernel)?,
        other => other,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match format {
        KernelFormat::Elf => {
            let res = Elf::load(mem, None, kernel, himem).map_err(load_err("ELF"))?;
            let entry = match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => EntryPoint {
                    protocol: BootProtocol::Pvh,
                    addr,
                },
                _ => EntryPoint {
                    protocol: BootProtocol::Linux64,
                    addr: res.kernel_load,
                },
            };
            if !mem.address_in_range(entry.addr) {
                return Err(Error::KernelLoad(format!(
                    "entry point {:#x} is outside guest memory",
                    entry.addr.0
                )));
            }
            Ok(LoadedKernel {
                entry,
                kernel_end: res.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::Bzimage => {
            let res = BzImage::load(mem, None, kernel, himem).map_err(load_err("bzImage"))?;
            let hdr = res
                .setup_header
                .ok_or_else(|| Error::KernelLoad("bzImage without setup header".into()))?;
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(Error::KernelLoad(
                    "bzImage has no 64-bit entry point (xloadflags.XLF_KERNEL_64)".into(),
                ));
            }
            let addr = res
                .kernel_load
                .checked_add(STARTUP_64_OFFSET)
                .filter(|a| mem.address_in_range(*a))
                .ok_or_else(|| Error::KernelLoad("bzImage entry outside guest memory".into()))?;
            Ok(LoadedKernel {
                entry: EntryPoint {
                    protocol: BootProtocol::Linux64,
                    addr,
                },
                kernel_end: res.kernel_end,
                setup_header: Some(hdr),
            })
        }
        KernelFormat::Raw16 | KernelFormat::Auto => load_raw16(mem, kernel),
    }
}

fn load_raw16(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<LoadedKernel> {
    let io = |e: std::io::Error| Error::KernelLoad(format!("reading the raw16 program: {e}"));
    let size = kernel.seek(SeekFrom::End(0)).map_err(io)?;
    let max = EBDA_START - REAL_MODE_LOAD;
    if size == 0 || size > max {
        return Err(Error::KernelLoad(format!(
            "a raw16 program must be 1..={max} bytes, this one has {size}"
        )));
    }
    kernel.seek(SeekFrom::Start(0)).map_err(io)?;
    let size = size as usize; // <= max, fits
    mem.read_exact_volatile_from(GuestAddress(REAL_MODE_LOAD), kernel, size)
        .map_err(|e| Error::KernelLoad(format!("copying the raw16 program: {e}")))?;
    Ok(LoadedKernel {
        entry: EntryPoint {
            protocol: BootProtocol::RealMode,
            addr: GuestAddress(REAL_MODE_LOAD),
        },
        kernel_end: REAL_MODE_LOAD + size as u64,
        setup_header: None,
    })
}

/// The highest address (inclusive) an initrd may touch for this kernel.
fn initrd_addr_max(kernel: &LoadedKernel, mem_size: u64) -> u64 {
    let mut max = low_ram_end(mem_size) - 1;
    if let Some(hdr) = kernel.setup_header {
        if hdr.version >= 0x0203 && hdr.initrd_addr_max != 0 {
            max = max.min(u64::from(hdr.initrd_addr_max));
        }
    }
    max
}

/// Copies the initrd to the top of low RAM (page aligned, above the kernel).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: &mut File,
    kernel: &LoadedKernel,
    mem_size: u64,
) -> Result<InitrdPlacement> {
    let io = |e: std::io::Error| Error::KernelLoad(format!("reading the initrd: {e}"));
    let size = initrd.seek(SeekFrom::End(0)).map_err(io)?;
    initrd.seek(SeekFrom::Start(0)).map_err(io)?;
    let top = initrd_addr_max(kernel, mem_size) + 1;
    let lowest = kernel.kernel_end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= lowest)
        .ok_or_else(|| {
            Error::KernelLoad(format!(
                "initrd of {size} bytes does not fit between the kernel end {lowest:#x} and {top:#x}"
            ))
        })?;
    let len = usize::try_from(size)
        .map_err(|_| Error::KernelLoad("initrd too large for this host".into()))?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, len)
        .map_err(|e| Error::KernelLoad(format!("copying the initrd: {e}")))?;
    Ok(InitrdPlacement { addr, size })
}

/// The longest command line this kernel accepts (without the NUL).
pub fn cmdline_limit(kernel: &LoadedKernel) -> usize {
    let ours = CMDLINE_MAX_SIZE - 1;
    match kernel.setup_header {
        Some(hdr) if hdr.version >= 0x0206 => ours.min(hdr.cmdline_size as usize),
        Some(_) => ours.min(255),
        None => ours,
    }
}

/// Writes the NUL-terminated command line at [`CMDLINE_START`]; returns its length
/// including the NUL.
pub fn write_cmdline(mem: &GuestMemoryMmap, kernel: &LoadedKernel, text: &str) -> Result<usize> {
    let limit = cmdline_limit(kernel);
    if text.len() > limit {
        return Err(Error::Config(format!(
            "the command line has {} bytes, this kernel takes at most {limit}",
            text.len()
        )));
    }
    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| Error::Config(format!("cmdline: {e}")))?;
    if !text.trim().is_empty() {
        cmdline
            .insert_str(text)
            .map_err(|e| Error::Config(format!("cmdline: {e}")))?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| Error::Memory(format!("writing the command line: {e}")))?;
    let written = cmdline
        .as_cstring()
        .map_err(|e| Error::Config(format!("cmdline: {e}")))?;
    Ok(written.as_bytes_with_nul().len())
}

/// Everything the boot vCPU needs from memory, written: kernel, initrd, command line,
/// zero page or PVH start_info, GDT, page tables and the MP table for `vcpus`. Returns the loaded kernel (with its
/// entry point) and where the initrd went.
pub fn prepare(
    mem: &GuestMemoryMmap,
    kernel_file: &mut File,
    format: KernelFormat,
    initrd_file: Option<&mut File>,
    cmdline: &str,
    mem_size: u64,
    vcpus: u8,
) -> Result<(LoadedKernel, Option<InitrdPlacement>)> {
    let kernel = load_kernel(mem, kernel_file, format)?;
    let real_mode = kernel.entry.protocol == BootProtocol::RealMode;
    if real_mode && (initrd_file.is_some() || !cmdline.is_empty()) {
        return Err(Error::Config(
            "a real-mode program takes no initrd and no command line".into(),
        ));
    }
    let initrd = initrd_file
        .map(|f| load_initrd(mem, f, &kernel, mem_size))
        .transpose()?;
    let cmdline_len = if real_mode {
        0
    } else {
        write_cmdline(mem, &kernel, cmdline)?
    };
    super::bootparams::write_boot_info(mem, &kernel, cmdline_len, initrd, mem_size)?;
    super::regs::write_boot_tables(mem, kernel.entry.protocol)?;
    if !real_mode {
        super::mptable::write(mem, vcpus)?;
    }
    Ok((kernel, initrd))
}

/// Reads a NUL-terminated string from guest memory (tests and diagnostics).
#[cfg(test)]
pub fn read_cstr(mem: &GuestMemoryMmap, addr: u64, max: usize) -> Option<String> {
    let mut buf = vec![0u8; max];
    let mut len = 0;
    while len < max {
        let b: u8 = mem
            .read_obj(GuestAddress(addr.checked_add(len as u64)?))
            .ok()?;
        if b == 0 {
            break;
        }
        buf[len] = b;
        len += 1;
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}
