//! containerd's defaults for a Linux container (`oci/spec.go` and the CRI plugin):
//! capabilities, masked and read-only paths, the standard mounts, rlimits, devices.

use oci_spec::runtime::{
    Capability, LinuxDeviceCgroup, LinuxDeviceType, Mount, PosixRlimit, PosixRlimitBuilder,
    PosixRlimitType,
};

/// containerd's default capability set (bounding, effective, permitted).
pub const CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Default PATH when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub const NOFILE: u64 = 1024;

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dest.into());
    m.set_typ(Some(typ.into()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// proc, dev, devpts, shm, mqueue, sysfs, cgroup (read-only; the container's own
/// cgroup namespace makes it show only its subtree).
pub fn mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

pub fn rlimits() -> Vec<PosixRlimit> {
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(NOFILE)
        .soft(NOFILE)
        .build();
    // The builder fails only on a missing required field; all are set.
    nofile.into_iter().collect()
}

fn dev(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(allow);
    d.set_typ(Some(typ));
    d.set_major(major);
    d.set_minor(minor);
    d.set_access(Some(access.into()));
    d
}

/// Device cgroup rules: deny everything, then allow the standard character devices
/// (null, zero, full, random, urandom, tty, console, ptmx, pts, tun).
pub fn device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, C};
    vec![
        dev(false, A, None, None, "rwm"),
        dev(true, C, Some(1), Some(3), "rwm"),
        dev(true, C, Some(1), Some(5), "rwm"),
        dev(true, C, Some(1), Some(7), "rwm"),
        dev(true, C, Some(1), Some(8), "rwm"),
        dev(true, C, Some(1), Some(9), "rwm"),
        dev(true, C, Some(5), Some(0), "rwm"),
        dev(true, C, Some(5), Some(1), "rwm"),
        dev(true, C, Some(5), Some(2), "rwm"),
        dev(true, C, Some(136), None, "rwm"),
        dev(true, C, Some(10), Some(200), "rwm"),
    ]
}
