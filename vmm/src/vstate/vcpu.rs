//! One vCPU: its boot state (CPUID, MSRs, registers, LAPIC), one `KVM_RUN` with the exit
//! dispatched to the buses, and the kick that forces it out of `KVM_RUN`.
//!
//! Kick protocol (measured on PVM and standard on hardware KVM): the controller sets its
//! request, then sends [`kick_signal`] to the vCPU thread. The handler sets
//! `kvm_run.immediate_exit` on that thread's vCPU, so a signal that lands between the
//! thread's last request check and `KVM_RUN` still makes `KVM_RUN` return `EINTR` at
//! once; a signal during `KVM_RUN` interrupts it the same way.

use std::cell::Cell;
use std::ptr;
use std::sync::{Arc, Once};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_run, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_MAX_MSR_ENTRIES, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::kvm::KvmContext;
use super::vm::Vm;
use crate::arch::x86_64::cpuid::filter_cpuid;
use crate::arch::x86_64::msr::boot_msrs;
use crate::arch::x86_64::regs::{boot_fpu, boot_regs, boot_sregs, set_lint_modes};
use crate::arch::x86_64::EntryPoint;
use crate::bus::Bus;
use crate::error::{Error, Result};
use crate::exit::{ExitReason, ResetCause};

/// What one `KVM_RUN` produced.
#[derive(Debug, PartialEq, Eq)]
pub enum VcpuRun {
    /// An exit the VMM served (I/O); run again.
    Handled,
    /// `KVM_RUN` was interrupted (kick or other signal); check requests, then run again.
    Interrupted,
    /// The guest ended the VM (or can no longer run).
    Exit(ExitReason),
}

pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    /// MSRs KVM lists as saved and restored (what a snapshot records).
    msr_indices: Arc<[u32]>,
    run: *mut kvm_run,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
}

// SAFETY: `run` points into the kvm_run mapping owned by `fd`, which moves with the
// Vcpu; the Vcpu is used by one thread at a time (it is moved into its thread).
unsafe impl Send for Vcpu {}

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs (null when none).
    static THREAD_KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = THREAD_KVM_RUN.try_with(|cell| {
        let run = cell.get();
        if !run.is_null() {
            // SAFETY: a non-null pointer is only stored by `KickGuard` while its vCPU (and
            // so the kvm_run mapping) is alive on this very thread; a volatile byte store
            // is async-signal-safe.
            unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// The real-time signal that kicks vCPU threads.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick).map_err(|e| Error::Host {
            what: "vCPU kick signal handler",
            source: std::io::Error::from_raw_os_error(e.errno()),
        });
    });
    result
}

/// While alive, kicks delivered to this thread hit its vCPU. Create it on the vCPU
/// thread after the Vcpu and drop it before the Vcpu.
pub struct KickGuard(());

impl Drop for KickGuard {
    fn drop(&mut self) {
        THREAD_KVM_RUN.with(|cell| cell.set(ptr::null_mut()));
    }
}

/// Everything KVM holds for one vCPU, in the order [`Vcpu::restore_state`] sets it.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX registers (the legacy 4 KiB KVM_GET_XSAVE area: hull-vmm never
    /// grants a guest the dynamically enabled states, AMX, that would not fit).
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
}

impl Vcpu {
    pub fn new(
        vm: &Vm,
        kvm: &KvmContext,
        index: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
    ) -> Result<Self> {
        let mut fd = vm.create_vcpu(index)?;
        let run = fd.get_kvm_run() as *mut kvm_run;
        Ok(Vcpu {
            index,
            fd,
            msr_indices: kvm.msr_index_list().into(),
            run,
            pio,
            mmio,
        })
    }

    pub fn index(&self) -> usize {
        usize::from(self.index)
    }

    /// Boot state: filtered CPUID, MSRs, registers for `entry`, FPU, LAPIC LINT0/LINT1.
    pub fn configure(&self, kvm: &KvmContext, count: u8, entry: &EntryPoint) -> Result<()> {
        let mut cpuid = kvm.supported_cpuid();
        filter_cpuid(cpuid.as_mut_slice(), self.index, count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;

        let entries = boot_msrs(kvm.msr_index_list());
        let msrs = Msrs::from_entries(&entries).map_err(|e| Error::Vcpu {
            index: self.index(),
            reason: format!("MSR list: {e:?}"),
        })?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(Error::kvm("KVM_SET_MSRS"))?;
        if set != entries.len() {
            let failed = entries.get(set).map(|m| m.index).unwrap_or_default();
            return Err(Error::Vcpu {
                index: self.index(),
                reason: format!("KVM_SET_MSRS stopped at MSR {failed:#x}"),
            });
        }

        self.fd
            .set_regs(&boot_regs(entry))
            .map_err(Error::kvm("KVM_SET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        self.fd
            .set_sregs(&boot_sregs(entry, sregs))
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        self.fd
            .set_fpu(&boot_fpu())
            .map_err(Error::kvm("KVM_SET_FPU"))?;

        let mut lapic = self.fd.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
        set_lint_modes(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(Error::kvm("KVM_SET_LAPIC"))
    }

    /// Reads the vCPU's whole state. Call it on a vCPU that is out of `KVM_RUN`
    /// (paused): KVM then has nothing in flight for it.
    pub fn save_state(&self) -> Result<VcpuState> {
        let fd = &self.fd;
        // The MP state first: reading it makes KVM complete any pending APIC events,
        // so the registers read after it are the ones that go with it.
        let mp_state = fd.get_mp_state().map_err(Error::kvm("KVM_GET_MP_STATE"))?;
        Ok(VcpuState {
            cpuid: fd
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .map_err(Error::kvm("KVM_GET_CPUID2"))?
                .as_slice()
                .to_vec(),
            mp_state,
            regs: fd.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(Error::kvm("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(Error::kvm("KVM_GET_XCRS"))?,
            debug_regs: fd
                .get_debug_regs()
                .map_err(Error::kvm("KVM_GET_DEBUGREGS"))?,
            lapic: fd.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?,
            msrs: self.save_msrs()?,
            events: fd
                .get_vcpu_events()
                .map_err(Error::kvm("KVM_GET_VCPU_EVENTS"))?,
        })
    }

    /// Reads every MSR KVM lists that this vCPU has. KVM_GET_MSRS stops at the first
    /// MSR it cannot read (the host lists MSRs of features this vCPU lacks): that one
    /// is skipped and the read goes on after it.
    fn save_msrs(&self) -> Result<Vec<kvm_msr_entry>> {
        let mut saved = Vec::with_capacity(self.msr_indices.len());
        let mut rest: &[u32] = &self.msr_indices;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(|e| Error::Vcpu {
                index: self.index(),
                reason: format!("MSR list: {e:?}"),
            })?;
            let read = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(Error::kvm("KVM_GET_MSRS"))?;
            saved.extend_from_slice(&msrs.as_slice()[..read]);
            let skip = if read < chunk.len() {
                tracing::debug!(vcpu = self.index, msr = chunk[read], "MSR not saved");
                read + 1
            } else {
                read
            };
            rest = &rest[skip..];
        }
        Ok(saved)
    }

    /// Sets a state read by [`Vcpu::save_state`] on a new, never run vCPU.
    pub fn restore_state(&self, state: &VcpuState) -> Result<()> {
        let fd = &self.fd;
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|e| Error::Vcpu {
            index: self.index(),
            reason: format!("CPUID of the snapshot: {e:?}"),
        })?;
        fd.set_cpuid2(&cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;
        fd.set_mp_state(state.mp_state)
            .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
        fd.set_regs(&state.regs)
            .map_err(Error::kvm("KVM_SET_REGS"))?;
        fd.set_sregs(&state.sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        // SAFETY: KVM_SET_XSAVE reads a 4 KiB `kvm_xsave`, which `state.xsave` is. The
        // ioctl reads more only when the process enabled dynamic XSTATE features for
        // guests (arch_prctl ARCH_REQ_XCOMP_GUEST_PERM); hull-vmm never does.
        unsafe { fd.set_xsave(&state.xsave) }.map_err(Error::kvm("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&state.xcrs)
            .map_err(Error::kvm("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&state.debug_regs)
            .map_err(Error::kvm("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&state.lapic)
            .map_err(Error::kvm("KVM_SET_LAPIC"))?;
        for chunk in state.msrs.chunks(KVM_MAX_MSR_ENTRIES) {
            let msrs = Msrs::from_entries(chunk).map_err(|e| Error::Vcpu {
                index: self.index(),
                reason: format!("MSR list: {e:?}"),
            })?;
            let set = fd.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
            if set != chunk.len() {
                return Err(Error::Vcpu {
                    index: self.index(),
                    reason: format!(
                        "KVM_SET_MSRS stopped at MSR {:#x} of the snapshot",
                        chunk.get(set).map_or(0, |m| m.index)
                    ),
                });
            }
        }
        fd.set_vcpu_events(&state.events)
            .map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))
    }

    /// Points this thread's kick handler at this vCPU.
    pub fn bind_kick(&self) -> KickGuard {
        THREAD_KVM_RUN.with(|cell| cell.set(self.run));
        KickGuard(())
    }

    /// Clears a pending kick (call before checking requests, then run).
    pub fn clear_kick(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Runs the guest until the next exit and serves it.
    pub fn run_once(&mut self) -> Result<VcpuRun> {
        let (run, vcpu) = (self.run, self.index());
        let outcome = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                let size = io_size(run);
                for chunk in data.chunks(size) {
                    self.pio.write(u64::from(port), chunk);
                }
                VcpuRun::Handled
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                let size = io_size(run);
                for chunk in data.chunks_mut(size) {
                    self.pio.read(u64::from(port), chunk);
                }
                VcpuRun::Handled
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio.read(addr, data);
                VcpuRun::Handled
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                VcpuRun::Handled
            }
            Ok(VcpuExit::Hlt) => VcpuRun::Exit(ExitReason::Halted),
            Ok(VcpuExit::Shutdown) => VcpuRun::Exit(ExitReason::Reset(ResetCause::TripleFault)),
            Ok(VcpuExit::SystemEvent(kind, _)) => VcpuRun::Exit(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET => ExitReason::Reset(ResetCause::SystemEvent),
                KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestCrash,
                other => ExitReason::UnhandledExit {
                    vcpu,
                    exit: format!("SystemEvent({other})"),
                },
            }),
            Ok(VcpuExit::InternalError) => VcpuRun::Exit(ExitReason::EmulationFailure {
                vcpu,
                suberror: internal_suberror(run),
                rip: self.fd.get_regs().ok().map(|r| r.rip),
            }),
            Ok(VcpuExit::FailEntry(reason, _cpu)) => {
                VcpuRun::Exit(ExitReason::FailEntry { vcpu, reason })
            }
            Ok(VcpuExit::Intr) => VcpuRun::Interrupted,
            Ok(other) => VcpuRun::Exit(ExitReason::UnhandledExit {
                vcpu,
                exit: format!("{other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => VcpuRun::Interrupted,
            Err(e) => return Err(Error::kvm("KVM_RUN")(e)),
        };
        Ok(outcome)
    }
}

fn io_size(run: *mut kvm_run) -> usize {
    // SAFETY: `run` is the live kvm_run mapping of the vCPU that just exited with
    // KVM_EXIT_IO, so the `io` member of the union is the active one; these bytes are not
    // the data area the exit's slice borrows.
    let size = unsafe { ptr::addr_of!((*run).__bindgen_anon_1.io.size).read_volatile() };
    usize::from(size).max(1)
}

fn internal_suberror(run: *mut kvm_run) -> u32 {
    // SAFETY: `run` is the live kvm_run mapping of the vCPU that just exited with
    // KVM_EXIT_INTERNAL_ERROR, so the `internal` member of the union is the active one.
    unsafe { ptr::addr_of!((*run).__bindgen_anon_1.internal.suberror).read_volatile() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{PML4_START, ZERO_PAGE_START};
    use crate::arch::x86_64::regs::lint_regs;
    use crate::arch::x86_64::BootProtocol;
    use crate::vstate::memory::{create_guest_memory, MemoryBacking};
    use kvm_bindings::{kvm_msr_entry, KVM_MAX_CPUID_ENTRIES};
    use vm_memory::GuestAddress;

    /// Configures real vCPUs on /dev/kvm and reads the state back.
    #[test]
    fn configure_applies_boot_state() {
        if !crate::host_support().can_run_vms() {
            println!(
                "SKIP configure_applies_boot_state: {}",
                crate::host_support().summary()
            );
            return;
        }
        let kvm = KvmContext::new().unwrap();
        let backing = MemoryBacking {
            shared: true,
            hugepages: false,
        };
        let mem = create_guest_memory(32 << 20, backing).unwrap();
        let vm = Vm::new(&kvm, &mem).unwrap();
        let bus = Arc::new(Bus::new());
        let entry = EntryPoint {
            protocol: BootProtocol::Linux64,
            addr: GuestAddress(0x100200),
        };
        for index in 0..2u8 {
            let vcpu = Vcpu::new(&vm, &kvm, index, bus.clone(), bus.clone()).unwrap();
            vcpu.configure(&kvm, 2, &entry).unwrap();

            let regs = vcpu.fd.get_regs().unwrap();
            assert_eq!(
                (regs.rip, regs.rsi, regs.rflags),
                (0x100200, ZERO_PAGE_START, 2)
            );
            let sregs = vcpu.fd.get_sregs().unwrap();
            assert_eq!(sregs.cr3, PML4_START);
            assert_eq!((sregs.cs.l, sregs.cs.selector), (1, 0x10));
            assert_ne!(sregs.efer & 0x500, 0);

            let cpuid = vcpu.fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
            let leaf1 = cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == 1)
                .copied()
                .unwrap();
            assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit");
            assert_eq!(leaf1.ebx >> 24, u32::from(index), "APIC id");
            assert_eq!((leaf1.ebx >> 16) & 0xff, 2, "logical processors");

            let lapic = vcpu.fd.get_lapic().unwrap();
            let (lint0, lint1) = lint_regs(&lapic);
            assert_eq!((lint0 >> 8) & 7, 7, "LINT0 ExtINT");
            assert_eq!((lint1 >> 8) & 7, 4, "LINT1 NMI");

            if kvm.msr_index_list().contains(&0x1a0) {
                let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
                    index: 0x1a0,
                    ..Default::default()
                }])
                .unwrap();
                assert_eq!(vcpu.fd.get_msrs(&mut msrs).unwrap(), 1);
                assert_eq!(msrs.as_slice()[0].data & 1, 1, "fast strings");
            }
        }
    }
}
