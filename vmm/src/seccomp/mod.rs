//! seccomp filters, one per VMM thread kind, compiled with seccompiler and installed by
//! each thread before it serves the guest:
//! - **vCPU** threads: `KVM_RUN` (and `KVM_GET_REGS` for error reports), eventfd and
//!   console writes, memory and thread housekeeping;
//! - the **event loop** thread (`Vmm::run` runs it on a thread of its own): epoll,
//!   socket and file I/O for the devices, vCPU kicks and teardown.
//!
//! A syscall outside the list kills the process (`SIGSYS`); `hull-vmm --no-seccomp` /
//! `VmConfig::seccomp = false` turns filtering off for debugging. The lists are data in
//! `rules.rs`, one commented line per syscall.

mod rules;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Error, Result};

/// The kinds of threads hull-vmm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Vcpu,
    EventLoop,
}

fn seccomp_err(e: impl std::fmt::Display) -> Error {
    Error::Host {
        what: "seccomp filter",
        source: std::io::Error::other(e.to_string()),
    }
}

/// The compiled filter for `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram> {
    let (plain, ioctls): (Vec<i64>, &[u64]) = match kind {
        ThreadKind::Vcpu => (rules::vcpu(), rules::VCPU_IOCTLS),
        ThreadKind::EventLoop => (rules::event_loop(), rules::EVENT_LOOP_IOCTLS),
    };
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = plain.iter().map(|&nr| (nr, vec![])).collect();
    let ioctl_rules = ioctls
        .iter()
        .map(|&request| {
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                .map_err(seccomp_err)?;
            SeccompRule::new(vec![cond]).map_err(seccomp_err)
        })
        .collect::<Result<Vec<_>>>()?;
    map.insert(libc::SYS_ioctl, ioctl_rules);
    let filter = SeccompFilter::new(
        map,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(seccomp_err)?;
    BpfProgram::try_from(filter).map_err(seccomp_err)
}

/// Installs `kind`'s filter on the calling thread (for good).
pub fn install(kind: ThreadKind) -> Result<()> {
    let bpf = filter(kind)?;
    seccompiler::apply_filter(&bpf).map_err(seccomp_err)?;
    tracing::debug!(?kind, "seccomp filter installed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop] {
            assert!(!filter(kind).unwrap().is_empty());
        }
    }

    #[test]
    fn a_filtered_thread_can_do_its_job_and_nothing_else() {
        // In a child process: the filter is permanent and its violation kills.
        // SAFETY: fork in a test; the child only runs async-signal-safe-enough code
        // (no locks are held: the test thread just forked) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = install(ThreadKind::EventLoop).is_ok();
            // Allowed: write to stderr; forbidden: execve.
            // SAFETY: plain syscalls with valid arguments.
            unsafe {
                libc::write(2, b"".as_ptr().cast(), 0);
                if ok {
                    libc::syscall(libc::SYS_execve, c"/bin/true".as_ptr(), 0, 0);
                }
                libc::_exit(if ok { 0 } else { 3 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
