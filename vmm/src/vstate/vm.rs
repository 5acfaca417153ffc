//! The KVM VM: memory slots, in-kernel irqchip (PIC + IOAPIC) and PIT, irqfds.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::kvm::KvmContext;
use crate::error::{Error, Result};

/// Where KVM puts the three-page TSS region VMX needs (just below the BIOS area at the
/// top of the 32-bit space, inside the MMIO gap).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// The VM-wide state KVM holds: both PICs, the IOAPIC, the PIT and the KVM clock.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

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

    /// Reads the interrupt controllers, the PIT and the clock (vCPUs paused).
    pub fn save_state(&self) -> Result<VmState> {
        let chip = |chip_id| -> Result<kvm_irqchip> {
            let mut c = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut c)
                .map_err(Error::kvm("KVM_GET_IRQCHIP"))?;
            Ok(c)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(Error::kvm("KVM_GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(Error::kvm("KVM_GET_CLOCK"))?,
        })
    }

    /// Sets a state read by [`Vm::save_state`] on a new VM, before its vCPUs run. The
    /// guest's clock goes on from the snapshot's value: the time between the snapshot
    /// and the restore does not pass for it (the agent is told the wall clock).
    pub fn restore_state(&self, state: &VmState) -> Result<()> {
        self.fd
            .set_pit2(&state.pit)
            .map_err(Error::kvm("KVM_SET_PIT2"))?;
        // Only the value: the flags KVM_GET_CLOCK reports (TSC stable, ...) describe
        // the old host's clock and are not inputs here.
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(Error::kvm("KVM_SET_CLOCK"))?;
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd
                .set_irqchip(chip)
                .map_err(Error::kvm("KVM_SET_IRQCHIP"))?;
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
