//! Loader tests: the test guests (always) and the real guest kernel images built by
//! guest-image (`HULL_TEST_KERNEL` / `HULL_TEST_BZIMAGE`, default /var/cache/hull/...;
//! skipped with a printed reason when absent). No KVM needed.

#[path = "../../../tests/common/guests.rs"]
mod guests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kvm_bindings::kvm_sregs;
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::{prepare, read_cstr, InitrdPlacement, LoadedKernel, HDRS_MAGIC};
use super::bootparams::{BOOT_FLAG_MAGIC, XEN_HVM_START_MAGIC};
use super::gdt::{boot_gdt, CODE32_SEL, CODE64_SEL, DATA_SEL};
use super::layout::*;
use super::regs::{boot_regs, boot_sregs, EFER_LMA, EFER_LME, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE};
use super::BootProtocol;
use crate::config::KernelFormat;
use crate::error::Error;
use crate::vstate::memory::{create_guest_memory, MemoryBacking};

fn guest_programs() -> &'static guests::Guests {
    static G: OnceLock<guests::Guests> = OnceLock::new();
    G.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hull-unit-guests-{}", std::process::id()));
        guests::build_guests(&dir).expect("building the test guests")
    })
}

struct Booted {
    mem: GuestMemoryMmap,
    kernel: LoadedKernel,
    initrd: Option<InitrdPlacement>,
    mem_size: u64,
}

fn boot(
    kernel: &Path,
    format: KernelFormat,
    cmdline: &str,
    initrd: Option<&Path>,
    mem_mib: u64,
) -> crate::error::Result<Booted> {
    let mem_size = mem_mib << 20;
    let backing = MemoryBacking {
        shared: false,
        hugepages: false,
    };
    let mem = create_guest_memory(mem_size, backing)?;
    let mut kfile = File::open(kernel).expect("kernel file");
    let mut ifile = initrd.map(|p| File::open(p).expect("initrd file"));
    let (kernel, initrd) = prepare(
        &mem,
        &mut kfile,
        format,
        ifile.as_mut(),
        cmdline,
        mem_size,
        2,
    )?;
    Ok(Booted {
        mem,
        kernel,
        initrd,
        mem_size,
    })
}

/// Walks the 4-level identity page tables the way the CPU would.
fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
    let entry = |table: u64, idx: u64| -> Option<u64> {
        let e: u64 = mem
            .read_obj(GuestAddress((table & 0x000f_ffff_ffff_f000) + idx * 8))
            .ok()?;
        (e & 1 == 1).then_some(e)
    };
    let pml4e = entry(cr3, (va >> 39) & 511)?;
    let pdpte = entry(pml4e, (va >> 30) & 511)?;
    let pde = entry(pdpte, (va >> 21) & 511)?;
    assert_ne!(pde & 0x80, 0, "hull maps with 2 MiB pages");
    Some((pde & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff))
}

fn check_initrd(b: &Booted, expected: &[u8]) -> InitrdPlacement {
    let initrd = b.initrd.expect("initrd placed");
    assert_eq!(initrd.size, expected.len() as u64);
    assert_eq!(initrd.addr % PAGE_SIZE, 0);
    assert!(
        initrd.addr >= b.kernel.kernel_end,
        "initrd overlaps the kernel"
    );
    assert!(initrd.addr + initrd.size <= low_ram_end(b.mem_size));
    let mut buf = vec![0u8; expected.len()];
    b.mem
        .read_slice(&mut buf, GuestAddress(initrd.addr))
        .unwrap();
    assert_eq!(buf, expected);
    initrd
}

fn check_pvh(b: &Booted, cmdline: &str, initrd: Option<&[u8]>) {
    assert_eq!(b.kernel.entry.protocol, BootProtocol::Pvh);
    let info: hvm_start_info = b.mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    assert_eq!(info.magic, XEN_HVM_START_MAGIC);
    assert_eq!(info.version, 1);
    assert_eq!(info.cmdline_paddr, CMDLINE_START);
    assert_eq!(read_cstr(&b.mem, CMDLINE_START, 4096).unwrap(), cmdline);
    let map = memory_map(b.mem_size);
    assert_eq!(info.memmap_paddr, PVH_MEMMAP_START);
    assert_eq!(info.memmap_entries as usize, map.len());
    for (i, want) in map.iter().enumerate() {
        let got: hvm_memmap_table_entry = b
            .mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 24 * i as u64))
            .unwrap();
        assert_eq!(
            (got.addr, got.size, got.type_),
            (want.addr, want.size, E820_RAM)
        );
    }
    match initrd {
        Some(content) => {
            let placed = check_initrd(b, content);
            assert_eq!(info.nr_modules, 1);
            assert_eq!(info.modlist_paddr, PVH_MODLIST_START);
            let m: hvm_modlist_entry = b.mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
            assert_eq!((m.paddr, m.size), (placed.addr, placed.size));
        }
        None => assert_eq!(info.nr_modules, 0),
    }
    // PVH entry state: 32-bit protected mode, paging off, ebx = start_info.
    let regs = boot_regs(&b.kernel.entry);
    assert_eq!(regs.rip, b.kernel.entry.addr.0);
    assert_eq!(regs.rbx, PVH_INFO_START);
    let s = boot_sregs(&b.kernel.entry, kvm_sregs::default());
    assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE);
    assert_eq!((s.efer, s.cr4), (0, 0));
    assert_eq!(
        (s.cs.selector, s.cs.db, s.cs.l, s.cs.base, s.cs.limit),
        (CODE32_SEL, 1, 0, 0, 0xffff_ffff)
    );
    assert_eq!((s.ds.selector, s.ss.selector), (DATA_SEL, DATA_SEL));
    check_gdt(b, &s);
}

/// The MP table (2 vCPUs) sits in the EBDA, outside every RAM range of the memory map.
fn check_mptable(b: &Booted) {
    let mut sig = [0u8; 4];
    b.mem
        .read_slice(&mut sig, GuestAddress(super::mptable::MPTABLE_START))
        .unwrap();
    assert_eq!(&sig, b"_MP_");
    let start = super::mptable::MPTABLE_START;
    assert!(memory_map(b.mem_size)
        .iter()
        .all(|e| start + 1024 <= e.addr || start >= e.addr + e.size));
}

fn check_gdt(b: &Booted, s: &kvm_sregs) {
    check_mptable(b);
    assert_eq!(s.gdt.base, GDT_START);
    let gdt = boot_gdt();
    assert_eq!(usize::from(s.gdt.limit) + 1, gdt.len() * 8);
    for (i, want) in gdt.iter().enumerate() {
        let got: u64 = b
            .mem
            .read_obj(GuestAddress(GDT_START + 8 * i as u64))
            .unwrap();
        assert_eq!(got, *want);
    }
}

fn check_zero_page(b: &Booted, cmdline: &str, initrd: Option<&[u8]>) -> boot_params {
    assert_eq!(b.kernel.entry.protocol, BootProtocol::Linux64);
    let zp: boot_params = b.mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    let hdr = zp.hdr;
    assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
    assert_eq!({ hdr.header }, HDRS_MAGIC);
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_eq!({ hdr.cmd_line_ptr } as u64, CMDLINE_START);
    assert_eq!(read_cstr(&b.mem, CMDLINE_START, 4096).unwrap(), cmdline);
    let map = memory_map(b.mem_size);
    assert_eq!(zp.e820_entries as usize, map.len());
    for (got, want) in zp.e820_table.iter().zip(&map) {
        assert_eq!(
            ({ got.addr }, { got.size }, { got.r#type }),
            (want.addr, want.size, E820_RAM)
        );
    }
    match initrd {
        Some(content) => {
            let placed = check_initrd(b, content);
            assert_eq!({ hdr.ramdisk_image } as u64, placed.addr);
            assert_eq!({ hdr.ramdisk_size } as u64, placed.size);
        }
        None => assert_eq!(({ hdr.ramdisk_image }, { hdr.ramdisk_size }), (0, 0)),
    }
    // 64-bit entry state: long mode, flat __BOOT_CS/__BOOT_DS, rsi = zero page,
    // identity-mapped page tables covering the kernel, zero page and command line.
    let regs = boot_regs(&b.kernel.entry);
    assert_eq!(
        (regs.rip, regs.rsi),
        (b.kernel.entry.addr.0, ZERO_PAGE_START)
    );
    let s = boot_sregs(&b.kernel.entry, kvm_sregs::default());
    assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
    assert_eq!(s.cr4 & X86_CR4_PAE, X86_CR4_PAE);
    assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
    assert_eq!(
        (s.cs.selector, s.cs.l, s.cs.db, s.cs.base),
        (CODE64_SEL, 1, 0, 0)
    );
    assert_eq!(
        (s.ds.selector, s.ds.base, s.ds.limit),
        (DATA_SEL, 0, 0xffff_ffff)
    );
    assert_eq!(s.cr3, PML4_START);
    check_gdt(b, &s);
    for va in [
        0,
        ZERO_PAGE_START,
        CMDLINE_START,
        b.kernel.entry.addr.0,
        b.kernel.kernel_end - 1,
        low_ram_end(b.mem_size) - 1,
        (4 << 30) - 1,
    ] {
        assert_eq!(translate(&b.mem, s.cr3, va), Some(va), "va {va:#x}");
    }
    zp
}

#[test]
fn pvh_test_guest() {
    let g = guest_programs();
    let cmdline = "console=ttyS0 act=x";
    let b = boot(&g.pvh_elf, KernelFormat::Auto, cmdline, Some(&g.initrd), 64).unwrap();
    check_pvh(&b, cmdline, Some(guests::INITRD_TEXT));
    // The entry is the note's address, which the linker script makes e_entry too.
    let elf = std::fs::read(&g.pvh_elf).unwrap();
    let e_entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
    assert_eq!(b.kernel.entry.addr.0, e_entry);
}

#[test]
fn pvh_memmap_above_the_gap() {
    let g = guest_programs();
    let b = boot(&g.pvh_elf, KernelFormat::Elf, "", None, 4096).unwrap();
    check_pvh(&b, "", None);
    assert_eq!(memory_map(b.mem_size).len(), 3);
}

#[test]
fn bzimage_test_guest() {
    let g = guest_programs();
    let cmdline = "act=r root=/dev/vda";
    let b = boot(&g.bzimage, KernelFormat::Auto, cmdline, Some(&g.initrd), 64).unwrap();
    let zp = check_zero_page(&b, cmdline, Some(guests::INITRD_TEXT));
    assert_eq!(b.kernel.entry.addr.0, 0x100200);
    assert_eq!({ zp.hdr.version }, 0x020f);
    assert_eq!({ zp.hdr.code32_start }, 0x100000);
    assert_eq!({ zp.hdr.loadflags } & 1, 1);
}

#[test]
fn elf_without_pvh_note_gets_a_zero_page() {
    let g = guest_programs();
    let b = boot(&g.elf64, KernelFormat::Auto, "act=r", None, 32).unwrap();
    check_zero_page(&b, "act=r", None);
    assert_eq!(b.kernel.entry.addr.0, 0x100200);
}

#[test]
fn raw16_program() {
    let g = guest_programs();
    let b = boot(&g.real16_exit, KernelFormat::Raw16, "", None, 16).unwrap();
    assert_eq!(b.kernel.entry.protocol, BootProtocol::RealMode);
    assert_eq!(b.kernel.entry.addr.0, REAL_MODE_LOAD);
    let prog = std::fs::read(&g.real16_exit).unwrap();
    let mut buf = vec![0u8; prog.len()];
    b.mem
        .read_slice(&mut buf, GuestAddress(REAL_MODE_LOAD))
        .unwrap();
    assert_eq!(buf, prog);
    let s = boot_sregs(&b.kernel.entry, kvm_sregs::default());
    assert_eq!((s.cs.base, s.cs.selector, s.cr0 & X86_CR0_PE), (0, 0, 0));
    assert_eq!(boot_regs(&b.kernel.entry).rip, REAL_MODE_LOAD);
    // Nothing else is written: no GDT, no zero page.
    assert_eq!(
        b.mem.read_obj::<u64>(GuestAddress(GDT_START + 8)).unwrap(),
        0
    );
    // raw16 takes neither an initrd nor a command line.
    assert!(boot(&g.real16_exit, KernelFormat::Raw16, "x", None, 16).is_err());
}

#[test]
fn hostile_or_oversized_inputs_are_rejected() {
    let g = guest_programs();
    // The bzImage guest's header allows 255 bytes of command line.
    let long = "x".repeat(256);
    assert!(matches!(
        boot(&g.bzimage, KernelFormat::Auto, &long, None, 32),
        Err(Error::Config(_))
    ));
    // An initrd larger than RAM.
    let dir = std::env::temp_dir().join(format!("hull-unit-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.img");
    std::fs::write(&big, vec![0u8; 5 << 20]).unwrap();
    assert!(matches!(
        boot(&g.pvh_elf, KernelFormat::Auto, "", Some(&big), 4),
        Err(Error::KernelLoad(_))
    ));
    // A kernel that does not fit in memory (loaded at 1 MiB, RAM is 1 MiB... plus).
    assert!(boot(&g.pvh_elf, KernelFormat::Auto, "", None, 1).is_err());
    // Not a kernel; a bzImage read as ELF; truncated images.
    assert!(matches!(
        boot(&g.initrd, KernelFormat::Auto, "", None, 16),
        Err(Error::KernelLoad(_))
    ));
    assert!(boot(&g.bzimage, KernelFormat::Elf, "", None, 16).is_err());
    let bz = std::fs::read(&g.bzimage).unwrap();
    let cut = dir.join("cut.bin");
    std::fs::write(&cut, &bz[..0x300]).unwrap();
    assert!(boot(&cut, KernelFormat::Bzimage, "", None, 16).is_err());
    let elf = std::fs::read(&g.pvh_elf).unwrap();
    std::fs::write(&cut, &elf[..100]).unwrap();
    assert!(boot(&cut, KernelFormat::Elf, "", None, 16).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

fn real_image(var: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    if path.exists() {
        Some(path)
    } else {
        println!(
            "SKIP: no guest kernel at {} (set {var}, or build guest-image)",
            path.display()
        );
        None
    }
}

const LINUX_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

/// A 1 MiB + 123 byte initrd in a temp dir of its own (removed with the returned
/// guard; tests run in parallel, and a shared file could be read half rewritten).
fn fake_initrd() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..(1u32 << 20) + 123).map(|i| (i % 251) as u8).collect();
    let path = dir.path().join("initrd.img");
    std::fs::write(&path, &content).unwrap();
    (dir, path, content)
}

#[test]
fn real_vmlinux_boots_through_pvh() {
    let Some(vmlinux) = real_image("HULL_TEST_KERNEL", "/var/cache/hull/vmlinux") else {
        return;
    };
    let (_dir, initrd, content) = fake_initrd();
    let b = boot(
        &vmlinux,
        KernelFormat::Auto,
        LINUX_CMDLINE,
        Some(&initrd),
        256,
    )
    .unwrap();
    check_pvh(&b, LINUX_CMDLINE, Some(&content));
    // The PVH entry lies inside the loaded image, above 1 MiB (CONFIG_PHYSICAL_START).
    let entry = b.kernel.entry.addr.0;
    assert!(
        entry >= HIMEM_START && entry < b.kernel.kernel_end,
        "entry {entry:#x}"
    );
    let first: u8 = b.mem.read_obj(GuestAddress(entry)).unwrap();
    assert_ne!(first, 0, "no code at the PVH entry");
    println!(
        "vmlinux: PVH entry {entry:#x}, kernel end {:#x}, initrd at {:#x}",
        b.kernel.kernel_end,
        b.initrd.unwrap().addr
    );
}

#[test]
fn real_bzimage_boots_through_the_64bit_protocol() {
    let Some(bzimage) = real_image("HULL_TEST_BZIMAGE", "/var/cache/hull/bzImage") else {
        return;
    };
    let (_dir, initrd, content) = fake_initrd();
    let b = boot(
        &bzimage,
        KernelFormat::Auto,
        LINUX_CMDLINE,
        Some(&initrd),
        256,
    )
    .unwrap();
    let zp = check_zero_page(&b, LINUX_CMDLINE, Some(&content));
    let hdr = zp.hdr;
    assert!({ hdr.version } >= 0x020c, "boot protocol {:#x}", {
        hdr.version
    });
    assert_ne!({ hdr.xloadflags } & 1, 0, "XLF_KERNEL_64");
    assert_ne!({ hdr.loadflags } & 1, 0, "LOADED_HIGH");
    assert_eq!(b.kernel.entry.addr.0, u64::from(hdr.code32_start) + 0x200);
    assert!(b.initrd.unwrap().addr + content.len() as u64 <= u64::from(hdr.initrd_addr_max) + 1);
    // The protected-mode payload is what follows the setup sectors in the file.
    let file = std::fs::read(&bzimage).unwrap();
    let setup = (usize::from(if hdr.setup_sects == 0 {
        4
    } else {
        hdr.setup_sects
    }) + 1)
        * 512;
    let mut buf = vec![0u8; 4096];
    b.mem
        .read_slice(&mut buf, GuestAddress(u64::from(hdr.code32_start)))
        .unwrap();
    assert_eq!(buf, file[setup..setup + 4096]);
    println!(
        "bzImage: protocol {:#x}, entry {:#x}",
        { hdr.version },
        b.kernel.entry.addr.0
    );
}
