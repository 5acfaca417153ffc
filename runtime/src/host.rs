//! Facts about the host that decide how a VM can run: what kind of KVM there is and
//! where the helper binaries are. Used by `hull check` and by backend selection.

use std::path::{Path, PathBuf};

/// What `/dev/kvm` is on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// VMX or SVM hardware virtualisation (bare metal or nested): boots Linux guests.
    Hardware,
    /// `kvm_pvm` (pagetable-based VM, no VMX/SVM): freestanding guests run, Linux does not.
    Pvm,
    /// /dev/kvm exists but cannot be opened (permissions) or is not usable.
    Unusable,
    /// No /dev/kvm.
    Absent,
}

impl KvmKind {
    pub fn describe(self) -> &'static str {
        match self {
            KvmKind::Hardware => "hardware (VMX/SVM)",
            KvmKind::Pvm => "PVM (kvm_pvm: cannot boot a Linux guest)",
            KvmKind::Unusable => "present but not usable",
            KvmKind::Absent => "absent",
        }
    }

    /// Whether a standard Linux guest kernel boots under this KVM.
    pub fn boots_linux(self) -> bool {
        self == KvmKind::Hardware
    }
}

/// Probes /dev/kvm through hull-vmm's host probe (one probe for the whole project).
pub fn kvm_kind() -> KvmKind {
    from_support(&hull_vmm::host_support())
}

/// The runtime's view of hull-vmm's probe.
pub fn from_support(s: &hull_vmm::HostSupport) -> KvmKind {
    use hull_vmm::KvmKind as V;
    match (s.kind, s.kvm_accessible) {
        (V::Absent, _) => KvmKind::Absent,
        (_, false) => KvmKind::Unusable,
        (V::Vmx | V::Svm, true) => KvmKind::Hardware,
        // Neither VMX/SVM nor PVM recognised: not what a Linux guest needs.
        (V::Pvm | V::Unknown, true) => KvmKind::Pvm,
    }
}

/// Where `scripts/setup` installs the helper binaries it builds (virtiofsd,
/// vhost-device-vsock: `cargo install --root /usr/local/libexec/hull`).
pub const HELPER_DIR: &str = "/usr/local/libexec/hull/bin";

/// The fixed directories a bare binary name is looked up in, in order: hull's helper
/// dir, then the system's. Never PATH or a user's `~/.cargo/bin`: the shim and `hull`
/// run as root, and a binary a user's environment names is not one they should run.
pub const SYSTEM_DIRS: [&str; 8] = [
    HELPER_DIR,
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
    "/usr/libexec",
];

/// Resolves a configured binary: a path with a slash is taken as is; a bare name is
/// looked up in [`SYSTEM_DIRS`], then beside the running executable (hull-vmm next to
/// a `hull` run from the build dir).
pub fn find_binary(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 || name.is_absolute() {
        return is_executable(name).then(|| name.to_path_buf());
    }
    let mut dirs: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether cgroup v2 is mounted, and how: unified, hybrid (v1 controllers with cgroup2
/// at /sys/fs/cgroup/unified) or v1 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    Unified,
    Hybrid,
    Legacy,
}

pub fn cgroup_mode() -> CgroupMode {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    cgroup_mode_from_mounts(&mounts)
}

pub fn cgroup_mode_from_mounts(mounts: &str) -> CgroupMode {
    let mut v2_root = false;
    let mut v2_unified = false;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (_, Some(target), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if fstype == "cgroup2" {
            if target == "/sys/fs/cgroup" {
                v2_root = true;
            } else if target == "/sys/fs/cgroup/unified" {
                v2_unified = true;
            }
        }
    }
    if v2_root {
        CgroupMode::Unified
    } else if v2_unified {
        CgroupMode::Hybrid
    } else {
        CgroupMode::Legacy
    }
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr captured) and waits at most
/// `deadline` for it: its output, or `TimedOut` after killing it. For short outputs
/// (a version line, a tool's error): the pipes are read once the command has exited.
pub fn output_within(
    cmd: &mut std::process::Command,
    deadline: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let until = std::time::Instant::now() + deadline;
    let status = loop {
        match child.try_wait()? {
            Some(status) => break status,
            None if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("did not finish within {deadline:?}"),
                ));
            }
        }
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_end(&mut stdout)?;
    }
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_end(&mut stderr)?;
    }
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_kinds_from_the_vmm_probe() {
        use hull_vmm::{HostSupport, KvmKind as V};
        let k = |kind, kvm_accessible| {
            from_support(&HostSupport {
                kind,
                kvm_accessible,
            })
        };
        assert_eq!(k(V::Vmx, true), KvmKind::Hardware);
        assert_eq!(k(V::Svm, false), KvmKind::Unusable);
        assert_eq!(k(V::Pvm, true), KvmKind::Pvm);
        assert_eq!(k(V::Absent, false), KvmKind::Absent);
        assert!(!k(V::Unknown, true).boots_linux());
    }

    #[test]
    fn cgroup_modes_from_mount_tables() {
        let hybrid = "cgroup /sys/fs/cgroup/memory cgroup rw 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup_mode_from_mounts(hybrid), CgroupMode::Hybrid);
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup_mode_from_mounts(unified), CgroupMode::Unified);
        assert_eq!(
            cgroup_mode_from_mounts("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"),
            CgroupMode::Legacy
        );
    }

    #[test]
    fn find_binary_takes_paths_as_is() {
        assert_eq!(
            find_binary(Path::new("/bin/sh")),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(find_binary(Path::new("/nonexistent/qemu")), None);
        assert!(find_binary(Path::new("sh")).is_some());
    }

    /// Helpers come from fixed system dirs, never from a user's environment (PATH,
    /// `~/.cargo/bin`): a name that is nowhere but in the user's cargo bin is not found.
    #[test]
    fn find_binary_looks_only_in_system_dirs() {
        assert!(SYSTEM_DIRS
            .iter()
            .all(|d| d.starts_with("/usr/") || d.starts_with("/sbin") || d.starts_with("/bin")));
        if let Some(home) = std::env::var_os("HOME") {
            let cargo_bin = PathBuf::from(home).join(".cargo/bin");
            for tool in ["cargo", "rustc"] {
                if cargo_bin.join(tool).exists()
                    && !SYSTEM_DIRS.iter().any(|d| Path::new(d).join(tool).exists())
                {
                    assert_eq!(
                        find_binary(Path::new(tool)),
                        None,
                        "{tool} of ~/.cargo/bin must not be found"
                    );
                }
            }
        }
        assert!(SYSTEM_DIRS.iter().all(|d| !d.contains(".cargo")));
    }
}
