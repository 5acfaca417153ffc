//! `hull check`: what this host can run, one line per requirement, with the command
//! that fixes what is missing, and which backend hull will use.

use std::fmt;
use std::path::Path;

use crate::config::Config;
use crate::host::{self, CgroupMode, KvmKind};
use crate::hypervisor::boot_files;
use crate::hypervisor::select::{self, BackendKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Missing,
    Unusable,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "OK",
            Status::Missing => "MISSING",
            Status::Unusable => "UNUSABLE",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Line {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub lines: Vec<Line>,
    /// The backend hull will use, or None when none can run.
    pub backend: Option<String>,
    pub backend_reason: String,
    /// Whether hull-vmm (our own VMM) can boot a Linux guest here.
    pub hull_vmm: String,
}

impl Report {
    pub fn can_run(&self) -> bool {
        self.backend.is_some()
    }

    fn status(&self, name: &str) -> Status {
        self.lines
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.status)
            .unwrap_or(Status::Missing)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            write!(f, "{:<20} {:<9} {}", l.name, l.status, l.detail)?;
            if let Some(fix) = &l.fix {
                write!(f, "\n{:<20} {:<9} fix: {}", "", "", fix)?;
            }
            writeln!(f)?;
        }
        writeln!(f, "hull-vmm: {}", self.hull_vmm)?;
        match &self.backend {
            Some(b) => writeln!(f, "backend: {b} ({})", self.backend_reason),
            None => writeln!(f, "backend: none can run here ({})", self.backend_reason),
        }
    }
}

fn binary_line(name: &'static str, configured: &Path, fix: &str) -> Line {
    match host::find_binary(configured) {
        Some(p) => {
            let version = command_version(&p);
            Line {
                name,
                status: Status::Ok,
                detail: format!(
                    "{}{}",
                    p.display(),
                    version.map(|v| format!(" ({v})")).unwrap_or_default()
                ),
                fix: None,
            }
        }
        None => Line {
            name,
            status: Status::Missing,
            detail: format!("{} not found", configured.display()),
            fix: Some(fix.to_string()),
        },
    }
}

/// First line of `<binary> --version`, trimmed to something short.
fn command_version(p: &Path) -> Option<String> {
    let out = std::process::Command::new(p)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    // "QEMU emulator version 7.2.22 (Debian ...)" -> "QEMU emulator version 7.2.22"
    let line = line.split(" (").next().unwrap_or(line);
    (!line.is_empty()).then(|| line.chars().take(60).collect())
}

fn guest_file_line(
    name: &'static str,
    path: &Path,
    check: fn(&Path) -> Result<(), boot_files::BootFileError>,
) -> Line {
    match check(path) {
        Ok(()) => Line {
            name,
            status: Status::Ok,
            detail: path.display().to_string(),
            fix: None,
        },
        Err(e @ boot_files::BootFileError::Missing { .. }) => Line {
            name,
            status: Status::Missing,
            detail: e.to_string(),
            fix: Some("guest-image/build (or scripts/setup)".into()),
        },
        Err(e) => Line {
            name,
            status: Status::Unusable,
            detail: e.to_string(),
            fix: Some("guest-image/build --force".into()),
        },
    }
}

pub fn run(config: &Config) -> Report {
    run_on(config, &hull_vmm::host_support())
}

/// The report for a host whose `/dev/kvm` is `support` (passed in so tests can ask
/// about hosts they do not run on).
pub fn run_on(config: &Config, support: &hull_vmm::HostSupport) -> Report {
    let mut lines = Vec::new();
    let kvm = host::from_support(support);
    lines.push(Line {
        name: "KVM",
        status: match kvm {
            KvmKind::Hardware => Status::Ok,
            KvmKind::Absent => Status::Missing,
            KvmKind::Pvm | KvmKind::Unusable => Status::Unusable,
        },
        detail: format!("/dev/kvm: {}", kvm.describe()),
        fix: match kvm {
            KvmKind::Hardware => None,
            KvmKind::Unusable => Some("check permissions on /dev/kvm (group kvm) and that kvm_intel/kvm_amd is loaded".into()),
            KvmKind::Pvm | KvmKind::Absent => Some("run on a host with VMX/SVM (bare metal or nested virtualisation) for KVM speed; until then QEMU uses TCG (software emulation)".into()),
        },
    });
    lines.push(binary_line(
        "QEMU",
        &config.hypervisor.qemu,
        "apt-get install qemu-system-x86",
    ));
    lines.push(binary_line(
        "vhost-device-vsock",
        &config.hypervisor.vhost_vsock,
        "scripts/setup (cargo install --locked --root /usr/local/libexec/hull vhost-device-vsock@0.3.0)",
    ));
    lines.push(binary_line(
        "hull-vmm",
        &config.hypervisor.hull_vmm,
        select::HULL_VMM_FIX,
    ));
    lines.push(binary_line(
        "virtiofsd",
        &config.hypervisor.virtiofsd,
        "apt-get install libseccomp-dev libcap-ng-dev && scripts/setup (cargo install --locked --root /usr/local/libexec/hull virtiofsd@1.14.0)",
    ));
    lines.push(guest_file_line("guest kernel", &config.guest.kernel, |p| {
        boot_files::check_kernel(p).map(|_| ())
    }));
    lines.push(guest_file_line(
        "guest initrd",
        &config.guest.initrd,
        boot_files::check_initrd,
    ));
    let cg = host::cgroup_mode();
    lines.push(Line {
        name: "cgroup v2",
        status: match cg {
            CgroupMode::Unified | CgroupMode::Hybrid => Status::Ok,
            CgroupMode::Legacy => Status::Missing,
        },
        detail: match cg {
            CgroupMode::Unified => "unified (cgroup2 at /sys/fs/cgroup)".into(),
            CgroupMode::Hybrid => "hybrid (v1 controllers; cgroup2 at /sys/fs/cgroup/unified): host-side limits use v1".into(),
            CgroupMode::Legacy => "v1 only: host-side limits use v1".into(),
        },
        fix: (cg == CgroupMode::Legacy).then(|| "boot the host with systemd.unified_cgroup_hierarchy=1".into()),
    });
    lines.push(binary_line(
        "containerd",
        Path::new("containerd"),
        "apt-get install containerd runc",
    ));

    let mut report = Report {
        lines,
        backend: None,
        backend_reason: String::new(),
        hull_vmm: support.summary(),
    };
    let hull_vmm_found = report.status("hull-vmm") == Status::Ok;
    let plan = match select::plan(
        config.hypervisor.backend,
        support,
        (&config.hypervisor.hull_vmm, hull_vmm_found),
    ) {
        Ok(plan) => plan,
        Err(e) => {
            report.backend_reason = e.to_string();
            return report;
        }
    };
    let needed: &[&str] = match plan.kind {
        BackendKind::HullVmm => &["hull-vmm", "guest kernel", "guest initrd"],
        BackendKind::Qemu(_) => &["QEMU", "vhost-device-vsock", "guest kernel", "guest initrd"],
    };
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|n| report.status(n) != Status::Ok)
        .collect();
    if missing.is_empty() {
        report.backend = Some(plan.kind.name().to_string());
        report.backend_reason = plan.reason;
    } else {
        report.backend_reason = format!(
            "{} would run ({}), but missing: {}",
            plan.kind.name(),
            plan.reason,
            missing.join(", ")
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_guest_image_means_no_backend() {
        let mut config = Config::default();
        config.guest.kernel = "/nonexistent/vmlinux".into();
        let r = run(&config);
        assert!(!r.can_run());
        let text = r.to_string();
        assert!(text.contains("guest kernel"), "{text}");
        assert!(text.contains("MISSING"), "{text}");
        assert!(text.contains("fix: guest-image/build"), "{text}");
        assert!(text.contains("backend: none can run here"), "{text}");
    }

    /// A config whose every binary and guest file exists (hermetic: /bin/true stands in
    /// for the binaries, files with the right magic for the guest image).
    fn complete_config(dir: &Path) -> Config {
        let mut config = Config::default();
        let kernel = dir.join("vmlinux");
        let initrd = dir.join("initrd");
        std::fs::write(&kernel, b"\x7fELF\x02\x01\x01").expect("kernel");
        std::fs::write(&initrd, [0x1f, 0x8b, 8, 0]).expect("initrd");
        config.guest.kernel = kernel;
        config.guest.initrd = initrd;
        for b in [
            &mut config.hypervisor.qemu,
            &mut config.hypervisor.vhost_vsock,
            &mut config.hypervisor.hull_vmm,
            &mut config.hypervisor.virtiofsd,
        ] {
            *b = "/bin/true".into();
        }
        config
    }

    fn host(kind: hull_vmm::KvmKind) -> hull_vmm::HostSupport {
        hull_vmm::HostSupport {
            kind,
            kvm_accessible: true,
        }
    }

    #[test]
    fn auto_shows_hull_vmm_on_hardware_kvm_and_qemu_tcg_on_pvm() {
        use crate::config::BackendChoice;
        let d = tempfile::tempdir().expect("tempdir");
        let mut config = complete_config(d.path());
        let r = run_on(&config, &host(hull_vmm::KvmKind::Vmx));
        let text = r.to_string();
        assert!(r.can_run(), "{text}");
        assert!(
            text.contains("backend: hull-vmm (kvm) (auto: hardware KVM)"),
            "{text}"
        );
        assert!(
            text.contains("hull-vmm: /dev/kvm with hardware virtualization"),
            "{text}"
        );

        let r = run_on(&config, &host(hull_vmm::KvmKind::Pvm));
        let text = r.to_string();
        assert!(r.can_run(), "{text}");
        assert!(
            text.contains("backend: qemu (tcg) (auto: no hardware KVM"),
            "{text}"
        );
        assert!(text.contains("PVM"), "{text}");

        // hull-vmm missing on a hardware host: QEMU with KVM, and check says why.
        config.hypervisor.hull_vmm = "/nonexistent/hull-vmm".into();
        let r = run_on(&config, &host(hull_vmm::KvmKind::Vmx));
        let text = r.to_string();
        assert!(r.can_run(), "{text}");
        assert!(
            text.contains("backend: qemu (kvm) (auto: hull-vmm not found"),
            "{text}"
        );

        config.hypervisor.backend = BackendChoice::Qemu;
        let r = run_on(&config, &host(hull_vmm::KvmKind::Vmx));
        assert_eq!(r.backend.as_deref(), Some("qemu (kvm)"), "{r}");
    }

    #[test]
    fn hull_vmm_asked_for_on_a_host_that_cannot_run_it_is_no_backend_with_the_reason() {
        use crate::config::BackendChoice;
        let d = tempfile::tempdir().expect("tempdir");
        let mut config = complete_config(d.path());
        config.hypervisor.backend = BackendChoice::HullVmm;
        let r = run_on(&config, &host(hull_vmm::KvmKind::Pvm));
        let text = r.to_string();
        assert!(!r.can_run(), "{text}");
        assert!(text.contains("backend: none can run here"), "{text}");
        assert!(
            text.contains("cannot run here") && text.contains("PVM"),
            "{text}"
        );

        let r = run_on(&config, &host(hull_vmm::KvmKind::Svm));
        assert_eq!(r.backend.as_deref(), Some("hull-vmm (kvm)"), "{r}");

        // On hardware KVM, hull-vmm needs no QEMU nor vhost-device-vsock...
        config.hypervisor.qemu = "/nonexistent/qemu".into();
        config.hypervisor.vhost_vsock = "/nonexistent/vhost".into();
        let r = run_on(&config, &host(hull_vmm::KvmKind::Svm));
        assert_eq!(r.backend.as_deref(), Some("hull-vmm (kvm)"), "{r}");
        // ...but its own binary.
        config.hypervisor.hull_vmm = "/nonexistent/hull-vmm".into();
        let r = run_on(&config, &host(hull_vmm::KvmKind::Svm));
        let text = r.to_string();
        assert!(!r.can_run(), "{text}");
        assert!(text.contains("/nonexistent/hull-vmm"), "{text}");
    }
}
