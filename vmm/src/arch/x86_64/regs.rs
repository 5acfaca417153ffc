//! CPU state for each entry mode: GDT/IDT/page tables written to guest memory, and the
//! register values the boot vCPU starts with.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{boot_gdt, boot_segment, CODE32_SEL, CODE64_SEL, DATA_SEL, TSS_SEL};
use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDPT_START, PD_COUNT, PD_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};
use super::{BootProtocol, EntryPoint};
use crate::error::{Error, Result};

pub const X86_CR0_PE: u64 = 1 << 0;
pub const X86_CR0_ET: u64 = 1 << 4;
pub const X86_CR0_PG: u64 = 1 << 31;
pub const X86_CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
/// Page present, writable, 2 MiB page (PDE) / present, writable (upper levels).
const PTE_P_RW: u64 = 0x3;
const PDE_PS: u64 = 0x80;

fn write<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, val: T, addr: u64) -> Result<()> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|e| Error::Memory(format!("writing boot tables at {addr:#x}: {e}")))
}

/// Writes the GDT, an empty IDT and (for long-mode entry) the identity-mapped page
/// tables covering 0..4 GiB with 2 MiB pages.
pub fn write_boot_tables(mem: &GuestMemoryMmap, protocol: BootProtocol) -> Result<()> {
    if protocol == BootProtocol::RealMode {
        return Ok(());
    }
    for (i, entry) in boot_gdt().iter().enumerate() {
        write(mem, *entry, GDT_START + 8 * i as u64)?;
    }
    write(mem, 0u64, IDT_START)?;
    if protocol == BootProtocol::Linux64 {
        write(mem, PDPT_START | PTE_P_RW, PML4_START)?;
        for pd in 0..PD_COUNT {
            let pd_addr = PD_START + pd * 0x1000;
            write(mem, pd_addr | PTE_P_RW, PDPT_START + pd * 8)?;
            for i in 0..512u64 {
                let page = ((pd << 9) + i) << 21;
                write(mem, page | PTE_P_RW | PDE_PS, pd_addr + i * 8)?;
            }
        }
    }
    Ok(())
}

/// General registers at entry.
pub fn boot_regs(entry: &EntryPoint) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.addr.0,
        ..Default::default()
    };
    match entry.protocol {
        BootProtocol::Pvh => regs.rbx = PVH_INFO_START,
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootProtocol::RealMode => regs.rsp = entry.addr.0,
    }
    regs
}

/// Special registers at entry, starting from the vCPU's reset state `sregs`.
pub fn boot_sregs(entry: &EntryPoint, mut sregs: kvm_sregs) -> kvm_sregs {
    if entry.protocol == BootProtocol::RealMode {
        for seg in [
            &mut sregs.cs,
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.fs,
            &mut sregs.gs,
            &mut sregs.ss,
        ] {
            seg.base = 0;
            seg.selector = 0;
        }
        return sregs;
    }
    let gdt_len = std::mem::size_of_val(&boot_gdt()) as u16;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = gdt_len - 1;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 0;
    let data = boot_segment(DATA_SEL);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = boot_segment(TSS_SEL);
    match entry.protocol {
        BootProtocol::Pvh => {
            sregs.cs = boot_segment(CODE32_SEL);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 => {
            sregs.cs = boot_segment(CODE64_SEL);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootProtocol::RealMode => {}
    }
    sregs
}

/// x87/SSE state at reset (FCW 0x37f, MXCSR 0x1f80).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = lapic.regs[offset + i] as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 to ExtINT (the PIC) and LINT1 to NMI, as a PC BIOS leaves them.
pub fn set_lint_modes(lapic: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Reads LVT LINT0 and LINT1 (for tests and diagnostics).
#[cfg(test)]
pub fn lint_regs(lapic: &kvm_lapic_state) -> (u32, u32) {
    (lapic_reg(lapic, APIC_LVT0), lapic_reg(lapic, APIC_LVT1))
}
