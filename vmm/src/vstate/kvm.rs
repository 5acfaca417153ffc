//! `/dev/kvm`: opening it, checking the capabilities hull-vmm relies on, and what the
//! host supports (CPUID, MSRs).

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use crate::error::{Error, Result};

/// Capabilities without which hull-vmm does not start.
const REQUIRED_CAPS: [(Cap, &str); 7] = [
    (Cap::Irqchip, "in-kernel irqchip"),
    (Cap::Pit2, "in-kernel PIT"),
    (Cap::Irqfd, "irqfd"),
    (Cap::Ioeventfd, "ioeventfd"),
    (Cap::UserMemory, "user memory slots"),
    (Cap::ImmediateExit, "immediate_exit"),
    (Cap::SetTssAddr, "KVM_SET_TSS_ADDR"),
];

/// An open `/dev/kvm` and what it supports.
pub struct KvmContext {
    pub(crate) kvm: Kvm,
    supported_cpuid: CpuId,
    msr_index: Vec<u32>,
}

impl KvmContext {
    /// Opens `/dev/kvm` and checks the API version and required capabilities.
    pub fn new() -> Result<Self> {
        let kvm = Kvm::new().map_err(|e| Error::KvmUnavailable(format!("open /dev/kvm: {e}")))?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(Error::KvmUnavailable(format!(
                "KVM API version {version}, expected {}",
                kvm_bindings::KVM_API_VERSION
            )));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(Error::KvmUnavailable(format!("missing capability: {name}")));
            }
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let msr_index = kvm
            .get_msr_index_list()
            .map_err(Error::kvm("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        Ok(KvmContext {
            kvm,
            supported_cpuid,
            msr_index,
        })
    }

    /// KVM's supported CPUID entries (a copy to filter per vCPU).
    pub fn supported_cpuid(&self) -> CpuId {
        self.supported_cpuid.clone()
    }

    /// MSR indices KVM can save and restore.
    pub fn msr_index_list(&self) -> &[u32] {
        &self.msr_index
    }
}
