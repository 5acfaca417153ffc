//! The Intel MultiProcessor table (MP spec 1.4) a Linux guest without ACPI reads to find
//! its CPUs, the IOAPIC and how ISA IRQs are wired. It lives in the EBDA, which the
//! memory map keeps out of RAM; Linux finds the floating pointer by scanning there.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::EBDA_START;
use crate::error::{Error, Result};

/// Where the floating pointer goes (start of the EBDA); the table follows it.
pub const MPTABLE_START: u64 = EBDA_START;
/// Bytes available for the whole table (the 1 KiB EBDA).
const MPTABLE_MAX_SIZE: usize = 1024;
pub const APIC_DEFAULT_BASE: u32 = 0xfee0_0000;
pub const IOAPIC_DEFAULT_BASE: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_IRQS: u8 = 16;
const SPEC_REV: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature; FPU and on-chip APIC feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// The largest vCPU count whose table fits in the EBDA.
pub const MAX_CPUS: u8 =
    ((MPTABLE_MAX_SIZE - 16 - 44 - 8 - 8 - 8 * (ISA_IRQS as usize) - 16) / 20) as u8;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_sub(*b))
}

/// The floating pointer and the configuration table, as bytes to copy to
/// [`MPTABLE_START`].
pub fn build(cpus: u8) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::Config(format!(
            "the MP table holds 1..={MAX_CPUS} vCPUs, not {cpus}"
        )));
    }
    let table_start = MPTABLE_START + 16;
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION]);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_DEFAULT_BASE.to_le_bytes());
    count += 2;
    for irq in 0..ISA_IRQS {
        // Type, INT, flags 0 (conforms to bus), bus 0, bus IRQ, IOAPIC, pin = IRQ.
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    // LINT0 of every local APIC is the PIC's ExtINT, LINT1 is NMI.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let length = u16::try_from(44 + entries.len())
        .map_err(|_| Error::Config("MP table too large".into()))?;
    let mut table = Vec::with_capacity(usize::from(length));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"HULL    ");
    table.extend_from_slice(b"HULL-VMM    ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_start as u32).to_le_bytes());
    out.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]); // length 1 (x16 bytes), rev
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    if out.len() > MPTABLE_MAX_SIZE {
        return Err(Error::Config("MP table does not fit in the EBDA".into()));
    }
    Ok(out)
}

/// Writes the MP table for `cpus` vCPUs.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<()> {
    let bytes = build(cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|e| Error::Memory(format!("writing the MP table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn table_parses_like_linux_does() {
        assert_eq!(MAX_CPUS, 40);
        for cpus in [1u8, 2, MAX_CPUS] {
            let t = build(cpus).unwrap();
            // Floating pointer: signature, 16 bytes summing to 0, pointer to the table.
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, MPTABLE_START + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = usize::from(u16::from_le_bytes([table[4], table[5]]));
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(
                u32::from_le_bytes(table[36..40].try_into().unwrap()),
                APIC_DEFAULT_BASE
            );
            // Walk the entries: processors (20 bytes), then 8-byte entries.
            let (mut off, mut seen, mut procs, mut bsp) = (44usize, 0u16, 0u8, 0);
            while off < len {
                let kind = table[off];
                if kind == ENTRY_PROCESSOR {
                    assert_eq!(table[off + 1], procs, "APIC ids in order");
                    if table[off + 3] & CPU_BSP != 0 {
                        bsp += 1;
                    }
                    procs += 1;
                    off += 20;
                } else {
                    if kind == ENTRY_IOAPIC {
                        assert_eq!(table[off + 1], cpus);
                    }
                    off += 8;
                }
                seen += 1;
            }
            assert_eq!((off, seen, procs, bsp), (len, count, cpus, 1));
        }
        assert!(build(0).is_err());
        assert!(build(MAX_CPUS + 1).is_err());
    }
}
