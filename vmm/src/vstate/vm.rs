//! The KVM VM: memory slots, in-kernel irqchip (PIC + IOAPIC) and PIT, irqfds.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::kvm::KvmContext;
use crate::error::{Error, Result};

/// Where KVM puts the three-page TSS region VMX needs (just below the BIOS area at the
/// top of the 32-bit space, inside the MMIO gap).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// A VM with its interrupt controllers.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates the VM, maps `mem` and creates the in-kernel irqchip and PIT.
    pub fn new(kvm: &KvmContext, mem: &GuestMemoryMmap) -> Result<Self> {
        let fd = kvm.kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        let vm = Vm { fd };
        vm.map_memory(mem)?;
        vm.fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
        vm.fd
            .create_irq_chip()
            .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.fd
            .create_pit2(pit)
            .map_err(Error::kvm("KVM_CREATE_PIT2"))?;
        Ok(vm)
    }

    fn map_memory(&self, mem: &GuestMemoryMmap) -> Result<()> {
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| Error::Memory(e.to_string()))?;
            let region_desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range [host, host + len) is a live mapping owned by `mem`,
            // which the VMM keeps alive for as long as the VM exists (the Vmm owns both
            // and drops the VM's vCPUs and fd before the memory).
            unsafe { self.fd.set_user_memory_region(region_desc) }
                .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Makes `evt` raise GSI `gsi` (PIC and IOAPIC pin).
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(Error::kvm("KVM_IRQFD"))
    }

    /// Makes a guest write of `datamatch` (4 bytes) at MMIO `addr` signal `evt` without
    /// a VM exit (virtio QueueNotify).
    pub fn register_ioevent(&self, evt: &EventFd, addr: u64, datamatch: u32) -> Result<()> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(Error::kvm("KVM_IOEVENTFD"))
    }

    /// Creates vCPU `index` (its APIC id).
    pub fn create_vcpu(&self, index: u8) -> Result<VcpuFd> {
        self.fd
            .create_vcpu(u64::from(index))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))
    }
}
