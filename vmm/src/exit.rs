//! How a VM ended, and the process exit status each ending maps to.

use std::fmt;

/// Why the guest asked to be reset. hull guests stop by resetting (`reboot=k` or
/// `reboot=t`), so every reset request ends the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCause {
    /// The guest wrote 0xFE (pulse reset line) to the i8042 command port 0x64.
    I8042,
    /// The vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`); Linux's `reboot=t` does this on
    /// purpose, so it is a reset request, not an error.
    TripleFault,
    /// KVM reported `KVM_SYSTEM_EVENT_RESET` (PSCI-like firmware reset).
    SystemEvent,
}

/// How a VM run ended. Guest failures are exit reasons (the guest did it); failures of
/// the VMM or the host are [`crate::Error`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (`KVM_SYSTEM_EVENT_SHUTDOWN`).
    PowerOff,
    /// The guest asked for a reset; hull treats it as the end of the VM.
    Reset(ResetCause),
    /// The guest halted with no in-kernel irqchip to wake it (not reachable with
    /// hull's always-present irqchip; kept for completeness).
    Halted,
    /// The guest wrote this byte to the debug-exit port ([`crate::DEBUG_EXIT_PORT`]).
    DebugExit(u8),
    /// The host asked the VM to stop ([`crate::VmmHandle::stop`], or SIGTERM/SIGINT to
    /// the binary).
    Stopped,
    /// KVM could not emulate a guest instruction or deliver an event
    /// (`KVM_EXIT_INTERNAL_ERROR`).
    EmulationFailure {
        /// The vCPU that failed.
        vcpu: usize,
        /// KVM's suberror (1 emulation, 2 simultaneous exceptions, 3 delivery...).
        suberror: u32,
        /// Guest instruction pointer at the failure, when it could be read.
        rip: Option<u64>,
    },
    /// VM entry failed (`KVM_EXIT_FAIL_ENTRY`): invalid guest state.
    FailEntry {
        /// The vCPU.
        vcpu: usize,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// The guest reported a crash (`KVM_SYSTEM_EVENT_CRASH`).
    GuestCrash,
    /// KVM returned an exit hull-vmm does not handle.
    UnhandledExit {
        /// The vCPU.
        vcpu: usize,
        /// KVM's exit, as text.
        exit: String,
    },
}

impl ExitReason {
    /// The `hull-vmm` process exit status: 0 for a guest power-off or reset request
    /// (including a triple fault), `(v << 1) | 1` for a debug-exit byte `v`, 10 when the
    /// host stopped the VM, 6 for a guest the CPU/KVM could not run.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::Reset(_) | ExitReason::Halted => 0,
            ExitReason::DebugExit(v) => ((i32::from(*v) << 1) | 1) & 0xff,
            ExitReason::Stopped => 10,
            ExitReason::EmulationFailure { .. }
            | ExitReason::FailEntry { .. }
            | ExitReason::GuestCrash
            | ExitReason::UnhandledExit { .. } => 6,
        }
    }

    /// True when the guest ended itself in an orderly way (power-off or reset request).
    pub fn is_clean_guest_exit(&self) -> bool {
        matches!(
            self,
            ExitReason::PowerOff | ExitReason::Reset(_) | ExitReason::Halted
        )
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset(ResetCause::I8042) => write!(f, "guest reset (i8042 0xFE)"),
            ExitReason::Reset(ResetCause::TripleFault) => write!(f, "guest reset (triple fault)"),
            ExitReason::Reset(ResetCause::SystemEvent) => write!(f, "guest reset (system event)"),
            ExitReason::Halted => write!(f, "guest halted"),
            ExitReason::DebugExit(v) => write!(f, "guest wrote {v:#04x} to the debug-exit port"),
            ExitReason::Stopped => write!(f, "stopped by the host"),
            ExitReason::EmulationFailure {
                vcpu,
                suberror,
                rip,
            } => {
                write!(f, "vCPU {vcpu}: KVM internal error, suberror {suberror}")?;
                match rip {
                    Some(rip) => write!(f, " at rip {rip:#x}"),
                    None => Ok(()),
                }
            }
            ExitReason::FailEntry { vcpu, reason } => {
                write!(f, "vCPU {vcpu}: VM entry failed, reason {reason:#x}")
            }
            ExitReason::GuestCrash => write!(f, "guest crashed"),
            ExitReason::UnhandledExit { vcpu, exit } => {
                write!(f, "vCPU {vcpu}: unhandled KVM exit {exit}")
            }
        }
    }
}
