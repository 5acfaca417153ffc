//! The boot GDT and the KVM segment registers that mirror it.
//!
//! Selectors follow the Linux boot protocol (`__BOOT_CS` = 0x10, `__BOOT_DS` = 0x18);
//! PVH only needs a flat 32-bit code segment, which is 0x08.

use kvm_bindings::kvm_segment;

use super::layout::{TSS_LIMIT, TSS_START};

/// Flat 32-bit code (PVH entry).
pub const CODE32_SEL: u16 = 0x08;
/// Flat 64-bit code (Linux 64-bit boot protocol).
pub const CODE64_SEL: u16 = 0x10;
/// Flat data, both modes.
pub const DATA_SEL: u16 = 0x18;
/// The (busy) 32/64-bit TSS.
pub const TSS_SEL: u16 = 0x20;

/// Packs one descriptor: `flags` holds the access byte (bits 0..7) and the G/DB/L/AVL
/// nibble (bits 12..15), as in the Intel SDM figure 3-8.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT: null, code32, code64, data, TSS.
pub fn boot_gdt() -> [u64; 5] {
    [
        0,
        gdt_entry(0xc09b, 0, 0xfffff), // code32: G, D, present, exec/read, accessed
        gdt_entry(0xa09b, 0, 0xfffff), // code64: G, L, present, exec/read, accessed
        gdt_entry(0xc093, 0, 0xfffff), // data: G, B, present, read/write, accessed
        gdt_entry(0x008b, TSS_START as u32, TSS_LIMIT), // busy TSS, byte granular
    ]
}

/// The segment register KVM needs for descriptor `entry` loaded with `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Segment for selector `sel` of the boot GDT.
pub fn boot_segment(sel: u16) -> kvm_segment {
    let gdt = boot_gdt();
    segment_from_gdt(gdt[usize::from(sel >> 3)], sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_decode_as_flat_segments() {
        let cs64 = boot_segment(CODE64_SEL);
        assert_eq!((cs64.base, cs64.limit, cs64.type_), (0, 0xffff_ffff, 0xb));
        assert_eq!(
            (cs64.l, cs64.db, cs64.g, cs64.s, cs64.present),
            (1, 0, 1, 1, 1)
        );
        let cs32 = boot_segment(CODE32_SEL);
        assert_eq!((cs32.l, cs32.db, cs32.limit), (0, 1, 0xffff_ffff));
        let ds = boot_segment(DATA_SEL);
        assert_eq!((ds.type_, ds.db, ds.limit), (3, 1, 0xffff_ffff));
        let tr = boot_segment(TSS_SEL);
        assert_eq!(
            (tr.base, tr.limit, tr.type_, tr.s, tr.g),
            (0x1000, 0x67, 0xb, 0, 0)
        );
        // Known encodings (the same flat descriptors Linux uses).
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }
}
