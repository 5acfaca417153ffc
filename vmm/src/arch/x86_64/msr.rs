//! The MSRs a vCPU starts with (those KVM lists as supported; the rest are skipped).

use kvm_bindings::kvm_msr_entry;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Fast string operations enabled.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs on, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// Boot MSR values, keeping only indices in `supported` (KVM's MSR index list).
pub fn boot_msrs(supported: &[u32]) -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .filter(|(index, _)| supported.contains(index))
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_supported_msrs() {
        let msrs = boot_msrs(&[MSR_IA32_MISC_ENABLE, MSR_LSTAR, 0x1234]);
        let idx: Vec<u32> = msrs.iter().map(|m| m.index).collect();
        assert_eq!(idx, vec![MSR_LSTAR, MSR_IA32_MISC_ENABLE]);
        assert_eq!(msrs[1].data, 1);
    }
}
