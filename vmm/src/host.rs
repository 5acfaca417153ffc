//! What this host's `/dev/kvm` is, for `hull check`: hardware virtualization (VMX/SVM),
//! PVM (`kvm_pvm`, which runs freestanding guests but not a stock Linux guest), or none.

use std::fs::OpenOptions;
use std::path::Path;

/// The kind of KVM this host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// No `/dev/kvm`.
    Absent,
    /// KVM on Intel VT-x (`vmx`).
    Vmx,
    /// KVM on AMD-V (`svm`).
    Svm,
    /// KVM over PVM (`kvm_pvm` module): software-assisted, no VMX/SVM.
    Pvm,
    /// `/dev/kvm` exists but neither VMX/SVM nor PVM was recognised.
    Unknown,
}

/// The answer of [`host_support`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSupport {
    /// What backs `/dev/kvm`.
    pub kind: KvmKind,
    /// `/dev/kvm` opened read-write (permissions allow this user).
    pub kvm_accessible: bool,
}

impl HostSupport {
    /// hull-vmm can create and run VMs (freestanding guests at least).
    pub fn can_run_vms(&self) -> bool {
        self.kind != KvmKind::Absent && self.kvm_accessible
    }

    /// hull-vmm can boot a standard Linux guest (needs hardware virtualization).
    pub fn can_boot_linux(&self) -> bool {
        self.can_run_vms() && matches!(self.kind, KvmKind::Vmx | KvmKind::Svm)
    }

    /// One line for `hull check`.
    pub fn summary(&self) -> String {
        let access = if self.kvm_accessible {
            ""
        } else {
            " but not accessible to this user (check /dev/kvm permissions)"
        };
        match self.kind {
            KvmKind::Absent => "no /dev/kvm: hull-vmm cannot run; use the QEMU/TCG backend".into(),
            KvmKind::Vmx | KvmKind::Svm => format!(
                "/dev/kvm with hardware virtualization ({:?}){access}: hull-vmm can boot Linux",
                self.kind
            ),
            KvmKind::Pvm => format!(
                "/dev/kvm is PVM (kvm_pvm){access}: hull-vmm runs freestanding guests only, \
                 a Linux guest does not boot; use the QEMU/TCG backend for Linux"
            ),
            KvmKind::Unknown => format!(
                "/dev/kvm present{access}, but neither vmx/svm nor kvm_pvm was found: \
                 Linux guests may not boot"
            ),
        }
    }
}

/// Classifies from the raw facts (kept pure for tests).
pub fn classify(dev_kvm: bool, cpuinfo: &str, modules: &str, pvm_sysfs: bool) -> KvmKind {
    if !dev_kvm {
        return KvmKind::Absent;
    }
    let pvm_loaded = pvm_sysfs
        || modules
            .lines()
            .any(|l| l.split_whitespace().next() == Some("kvm_pvm"));
    if pvm_loaded {
        return KvmKind::Pvm;
    }
    let has_flag = |flag: &str| {
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|w| w == flag))
    };
    if has_flag("vmx") {
        KvmKind::Vmx
    } else if has_flag("svm") {
        KvmKind::Svm
    } else {
        KvmKind::Unknown
    }
}

/// Probes this host (reads /dev/kvm, /proc/cpuinfo, /proc/modules, /sys/module/kvm_pvm).
pub fn host_support() -> HostSupport {
    let dev = Path::new("/dev/kvm");
    let exists = dev.exists();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let kind = classify(
        exists,
        &read("/proc/cpuinfo"),
        &read("/proc/modules"),
        Path::new("/sys/module/kvm_pvm").exists(),
    );
    let kvm_accessible = exists && OpenOptions::new().read(true).write(true).open(dev).is_ok();
    HostSupport {
        kind,
        kvm_accessible,
    }
}

/// A duplicate of `fd`, a file the process inherited from its parent (a disk, a
/// snapshot's files); the inherited fd itself is left alone. `what` names it in errors.
pub fn inherited_file(fd: i32, what: &str) -> crate::Result<std::fs::File> {
    let named = std::path::Path::new(what);
    if fd < 3 {
        return Err(crate::Error::Config(format!(
            "{what}: fd {fd} is not an inherited file"
        )));
    }
    // SAFETY: `fd` is only borrowed for the duplication below, which fails cleanly
    // (EBADF) when it is not open; the duplicate is owned by the returned File.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let owned = borrowed
        .try_clone_to_owned()
        .map_err(crate::Error::file(named))?;
    Ok(std::fs::File::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let vmx = "processor : 0\nflags : fpu vme vmx sse\n";
        let svm = "flags\t\t: fpu svm lm\n";
        let none = "flags : fpu lm\n";
        let pvm = "kvm_pvm 90112 0 - Live 0x0\nkvm 1200000 1 kvm_pvm, Live 0x0\n";
        assert_eq!(classify(false, vmx, "", false), KvmKind::Absent);
        assert_eq!(classify(true, vmx, "", false), KvmKind::Vmx);
        assert_eq!(classify(true, svm, "", false), KvmKind::Svm);
        assert_eq!(classify(true, none, pvm, false), KvmKind::Pvm);
        assert_eq!(classify(true, none, "", true), KvmKind::Pvm);
        assert_eq!(
            classify(true, none, "kvm 1 0 - Live\n", false),
            KvmKind::Unknown
        );
        let h = HostSupport {
            kind: KvmKind::Pvm,
            kvm_accessible: true,
        };
        assert!(h.can_run_vms() && !h.can_boot_linux());
        assert!(h.summary().contains("PVM"));
    }

    #[test]
    fn this_host_is_classified() {
        let h = host_support();
        println!("host_support: {h:?}: {}", h.summary());
    }
}
