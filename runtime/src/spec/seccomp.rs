//! containerd's default seccomp profile (`contrib/seccomp/seccomp_default.go`) as data:
//! deny by default with EPERM, allow the list in `seccomp_allow.txt`, plus the rules
//! that depend on the arch (x86_64), the bounding capabilities, `personality` values
//! and `clone` flags (no new namespaces without CAP_SYS_ADMIN; `clone3` gets ENOSYS so
//! libcs fall back to `clone`).

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

const ALLOW: &str = include_str!("seccomp_allow.txt");

/// Syscalls allowed when the bounding set has a capability.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// Namespace flags `clone` may not carry without CAP_SYS_ADMIN.
const CLONE_NS_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The unconditional allowlist.
pub fn allowed_names() -> Vec<String> {
    ALLOW
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> Vec<LinuxSeccompArg> {
    let b = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    let b = match value_two {
        Some(v) => b.value_two(v),
        None => b,
    };
    // Every required field is set: the builder cannot fail here.
    b.build().into_iter().collect()
}

/// The profile for a process with this bounding capability set.
pub fn default_profile(bounding: &[Capability]) -> LinuxSeccomp {
    let allow = LinuxSeccompAction::ScmpActAllow;
    let mut rules = Vec::new();
    let mut main = LinuxSyscall::default();
    main.set_names(allowed_names());
    main.set_action(allow);
    rules.push(main);
    // personality(2) only with these personas (PER_LINUX, PER_LINUX32, UNAME26 variants,
    // and the query value 0xffffffff).
    for persona in [0x0u64, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        let mut r = rule(&["personality"], allow);
        r.set_args(Some(arg(0, persona, None, LinuxSeccompOperator::ScmpCmpEq)));
        rules.push(r);
    }
    // Kernel >= 4.8 (ours is 6.1): ptrace can no longer bypass seccomp.
    rules.push(rule(&["ptrace"], allow));
    rules.push(rule(&["arch_prctl", "modify_ldt"], allow));
    for (cap, names) in BY_CAPABILITY {
        if bounding.contains(cap) {
            rules.push(rule(names, allow));
        }
    }
    if !bounding.contains(&Capability::SysAdmin) {
        let mut clone = rule(&["clone"], allow);
        clone.set_args(Some(arg(
            0,
            CLONE_NS_FLAGS,
            Some(0),
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )));
        rules.push(clone);
        let mut clone3 = rule(&["clone3"], LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(libc::ENOSYS as u32));
        rules.push(clone3);
    }
    let mut s = LinuxSeccomp::default();
    s.set_default_action(LinuxSeccompAction::ScmpActErrno);
    s.set_architectures(Some(vec![
        Arch::ScmpArchX86_64,
        Arch::ScmpArchX86,
        Arch::ScmpArchX32,
    ]));
    s.set_syscalls(Some(rules));
    s
}
