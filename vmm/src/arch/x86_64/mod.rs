//! x86_64 boot: where things go in guest memory (`layout`), how the kernel and its boot
//! data get there (`boot`, `bootparams`), and the CPU state to enter it with (`gdt`,
//! `regs`, `cpuid`, `msr`). Nothing here issues ioctls: `vstate` applies the results.

pub mod boot;
pub mod bootparams;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;

#[cfg(test)]
mod tests;

use vm_memory::GuestAddress;

/// The boot protocol a kernel is entered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode, paging off, `ebx` = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity-mapped page tables, `rsi` = zero page.
    Linux64,
    /// Real mode at `0000:7c00`, like a BIOS boot sector.
    RealMode,
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    /// Protocol (decides the CPU mode and registers).
    pub protocol: BootProtocol,
    /// First instruction (guest physical).
    pub addr: GuestAddress,
}
