//! A container's seccomp profile compiled to BPF once, and loaded from the BPF.
//!
//! Turning an OCI profile into BPF through libseccomp is the slowest step of creating a
//! container in the guest: containerd's default profile (~370 syscall names) takes
//! ~150 ms under TCG, and libcontainer did it again for every container and exec. The
//! agent compiles each distinct profile once ([`compiled`]: the same rules libcontainer
//! 0.7 adds, in the same order, so the program is the one libcontainer would load), keeps
//! the program, and each container's init and exec'd process loads it with one
//! `seccomp(2)` call ([`CompiledFilter::load`]). A pod's containers and every
//! `kubectl exec` share the runtime/default profile, so they share one compile.
//!
//! Notify profiles (`SCMP_ACT_NOTIFY`) are not compiled here: they need libseccomp's
//! listener fd, and go through libcontainer as before.

use std::collections::HashMap;
use std::collections::HashSet;
use std::io::{Read, Seek};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

/// Distinct profiles kept at once; more than a pod uses (it is cleared when full).
const MAX_CACHED: usize = 32;

/// `seccomp(2)` filter flags (linux/seccomp.h).
const SECCOMP_FILTER_FLAG_TSYNC: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_LOG: libc::c_ulong = 2;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_ulong = 4;
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;

#[derive(Debug, thiserror::Error)]
pub enum SeccompBpfError {
    #[error("the seccomp profile uses SCMP_ACT_NOTIFY (not compiled by the agent)")]
    Notify,
    #[error("seccomp profile: {what}: {source}")]
    Libseccomp {
        what: String,
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp profile: errno {0} of a trace action does not fit 16 bits")]
    TraceErrno(u32),
    #[error("seccomp profile: {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("seccomp profile: the compiled program is {0} bytes, not whole BPF instructions of at most 65535")]
    BadProgram(usize),
}

/// A profile's BPF program and the `seccomp(2)` flags its profile asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledFilter {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl CompiledFilter {
    /// Instructions in the program.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Installs the filter on the calling thread. Needs no_new_privs or CAP_SYS_ADMIN,
    /// as any seccomp filter does. Allocates nothing (it runs in a forked child).
    pub fn load(&self) -> std::io::Result<()> {
        let prog = libc::sock_fprog {
            // Checked to fit at compile time (BadProgram).
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `self.program`, which lives across the call and holds
        // `len` instructions; the kernel copies the program and keeps no pointer to it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// The compiled program of `profile`, from the agent's cache or compiled now.
pub fn compiled(profile: &LinuxSeccomp) -> Result<Arc<CompiledFilter>, SeccompBpfError> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<CompiledFilter>>>> = OnceLock::new();
    // The whole profile is the key: two profiles share a program only if equal.
    let key = serde_json::to_string(profile).map_err(|e| SeccompBpfError::Io {
        what: "serialize the profile",
        source: e.into(),
    })?;
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(hit.clone());
    }
    let started = std::time::Instant::now();
    let filter = Arc::new(compile(profile)?);
    tracing::info!(
        instructions = filter.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "seccomp profile compiled"
    );
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX_CACHED {
        map.clear();
    }
    map.insert(key, filter.clone());
    Ok(filter)
}

/// The profile compiled through libseccomp, with libcontainer 0.7's rules: redundant
/// rules (the default action) skipped, names the kernel does not know skipped, and
/// comparisons of one argument index twice split into one rule each (as runc does).
pub fn compile(profile: &LinuxSeccomp) -> Result<CompiledFilter, SeccompBpfError> {
    if libcontainer::seccomp::is_notify(profile)
        || profile.default_action() == LinuxSeccompAction::ScmpActNotify
    {
        return Err(SeccompBpfError::Notify);
    }
    let failed = |what: String| move |source| SeccompBpfError::Libseccomp { what, source };
    let default_action = action_of(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default_action).map_err(failed("new filter".into()))?;
    let mut flags = 0;
    for flag in profile.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            // Only meaningful with a notify listener, which these profiles have not.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }
    for &arch in profile.architectures().iter().flatten() {
        ctx.add_arch(arch_of(arch))
            .map_err(failed(format!("architecture {arch:?}")))?;
    }
    for rule in profile.syscalls().iter().flatten() {
        let action = action_of(rule.action(), rule.errno_ret())?;
        if action == default_action {
            continue;
        }
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                tracing::debug!(
                    name,
                    "seccomp: a syscall this kernel does not know is skipped"
                );
                continue;
            };
            let add = |ctx: &mut ScmpFilterContext, compares: &[ScmpArgCompare]| {
                if compares.is_empty() {
                    ctx.add_rule(action, syscall)
                } else {
                    ctx.add_rule_conditional(action, syscall, compares)
                }
                .map(|_| ())
                .map_err(failed(format!("rule for {name}")))
            };
            let compares: Vec<ScmpArgCompare> = rule
                .args()
                .iter()
                .flatten()
                .map(|a| {
                    ScmpArgCompare::new(a.index() as u32, op_of(a.op(), a.value_two()), a.value())
                })
                .collect();
            let mut seen = HashSet::new();
            let repeated = rule
                .args()
                .iter()
                .flatten()
                .any(|a| !seen.insert(a.index()));
            if repeated {
                for compare in &compares {
                    add(&mut ctx, std::slice::from_ref(compare))?;
                }
            } else {
                add(&mut ctx, &compares)?;
            }
        }
    }
    Ok(CompiledFilter {
        program: export(&ctx)?,
        flags,
    })
}

/// The context's BPF program, through a memfd (libseccomp 2.5 exports to an fd only).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>, SeccompBpfError> {
    let io = |what| move |source| SeccompBpfError::Io { what, source };
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the fd it returns is
    // new and owned by nothing else.
    let raw = unsafe { libc::memfd_create(c"hull-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(io("memfd_create")(std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a valid fd just returned to us and owned by nothing else.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    ctx.export_bpf(&file)
        .map_err(|source| SeccompBpfError::Libseccomp {
            what: "export the program".into(),
            source,
        })?;
    file.rewind().map_err(io("rewind the program"))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(io("read the program"))?;
    let size = std::mem::size_of::<libc::sock_filter>();
    let count = bytes.len() / size;
    if bytes.is_empty() || bytes.len() % size != 0 || count > usize::from(u16::MAX) {
        return Err(SeccompBpfError::BadProgram(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(size)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

fn action_of(
    action: LinuxSeccompAction,
    errno: Option<u32>,
) -> Result<ScmpAction, SeccompBpfError> {
    let errno_value = errno.map(|e| e as i32).unwrap_or(libc::EPERM);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno_value),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(
            u16::try_from(errno_value)
                .map_err(|_| SeccompBpfError::TraceErrno(errno.unwrap_or_default()))?,
        ),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => return Err(SeccompBpfError::Notify),
    })
}

fn op_of(op: LinuxSeccompOperator, second: Option<u64>) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(second.unwrap_or(0)),
    }
}

fn arch_of(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompBuilder, LinuxSyscallBuilder};

    /// Default allow; mkdirat and mkdir fail with errno 38 (ENOSYS), chmod needs mode 0o700.
    fn profile() -> LinuxSeccomp {
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .architectures(vec![Arch::ScmpArchX86_64])
            .syscalls(vec![LinuxSyscallBuilder::default()
                .names(vec![
                    "mkdir".to_string(),
                    "mkdirat".to_string(),
                    "no_such_call".to_string(),
                ])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(38u32)
                .build()
                .unwrap()])
            .build()
            .unwrap()
    }

    #[test]
    fn a_profile_is_compiled_once_and_shared() {
        let a = compiled(&profile()).unwrap();
        let b = compiled(&profile()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!a.is_empty());
        let mut other = profile();
        other.set_default_action(LinuxSeccompAction::ScmpActLog);
        assert!(!Arc::ptr_eq(&a, &compiled(&other).unwrap()));
    }

    #[test]
    fn notify_and_bad_trace_errnos_are_refused() {
        let mut p = profile();
        p.set_default_action(LinuxSeccompAction::ScmpActNotify);
        assert!(matches!(compile(&p), Err(SeccompBpfError::Notify)));
        let mut p = profile();
        p.set_syscalls(Some(vec![LinuxSyscallBuilder::default()
            .names(vec!["mkdir".to_string()])
            .action(LinuxSeccompAction::ScmpActTrace)
            .errno_ret(70_000u32)
            .build()
            .unwrap()]));
        assert!(matches!(
            compile(&p),
            Err(SeccompBpfError::TraceErrno(70_000))
        ));
    }

    /// The loaded program does what the profile says, in a forked child (a filter
    /// cannot be removed from a process).
    #[test]
    fn the_loaded_program_enforces_the_profile() {
        let filter = compiled(&profile()).unwrap();
        let dir = std::env::temp_dir().join(format!("hull-seccomp-test-{}", std::process::id()));
        let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        // SAFETY: the child only makes raw syscalls and exits; it touches no lock or
        // allocation of the parent's other threads.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: plain syscalls on valid arguments; _exit never returns.
                unsafe {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    if filter.load().is_err() {
                        libc::_exit(10);
                    }
                    let rc = libc::mkdir(path.as_ptr(), 0o700);
                    let errno = *libc::__errno_location();
                    let pid_ok = libc::getpid() > 0;
                    libc::_exit(if rc == -1 && errno == 38 && pid_ok {
                        0
                    } else {
                        11
                    });
                }
            }
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: waiting for our own child with a valid status pointer.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status), "status {status:#x}");
                assert_eq!(
                    libc::WEXITSTATUS(status),
                    0,
                    "the filter did not deny mkdir with ENOSYS"
                );
                assert!(!dir.exists());
            }
            _ => panic!("fork: {}", std::io::Error::last_os_error()),
        }
    }
}
