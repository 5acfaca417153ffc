//! Which backend runs the VMs: the config's `hypervisor.backend` held against what the
//! host's `/dev/kvm` can do. One decision, used by every command and by `hull check`:
//!
//! | backend | hardware KVM (VMX/SVM) | PVM, unusable or no KVM |
//! |---|---|---|
//! | `auto` | hull-vmm (QEMU + KVM if the hull-vmm binary is missing) | QEMU + TCG |
//! | `hull-vmm` | hull-vmm (error if its binary is missing) | error naming why |
//! | `qemu` | QEMU + KVM | QEMU + TCG |

use std::path::{Path, PathBuf};

use ::hull_vmm::HostSupport;

use super::hull_vmm::{HullVmm, HullVmmConfig};
use super::qemu::{self, Accel};
use super::Hypervisor;
use crate::config::{BackendChoice, Config};
use crate::host::{self, KvmKind};

/// A backend, as `hull check` and the boot report name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Qemu(Accel),
    HullVmm,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Qemu(Accel::Kvm) => "qemu (kvm)",
            BackendKind::Qemu(Accel::Tcg) => "qemu (tcg)",
            BackendKind::HullVmm => "hull-vmm (kvm)",
        }
    }
}

/// The backend that will run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPlan {
    pub kind: BackendKind,
    pub reason: String,
}

/// Why no backend can be built.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(
        "{what} not found (looked for {name} in PATH, cargo's bin dir and beside hull); fix: {fix}"
    )]
    Missing {
        what: &'static str,
        name: PathBuf,
        fix: &'static str,
    },
    #[error("hypervisor.backend = \"hull-vmm\" cannot run here: {reason}; fix: run on a host with hardware KVM (VMX/SVM), or set backend = \"auto\" or \"qemu\" in the config")]
    HullVmmUnsupported { reason: String },
}

/// How to get the hull-vmm binary.
pub const HULL_VMM_FIX: &str =
    "cargo build --release -p hull-vmm and put hull-vmm in PATH (scripts/setup installs it), or set hypervisor.hull_vmm";

/// Decides the backend (pure: the host and the binary lookup are passed in).
/// `hull_vmm` is the configured hull-vmm name and whether it was found.
pub fn plan(
    choice: BackendChoice,
    host: &HostSupport,
    hull_vmm: (&Path, bool),
) -> Result<BackendPlan, SelectError> {
    let kvm = host::from_support(host);
    let (hull_vmm_name, hull_vmm_found) = hull_vmm;
    let qemu_plan = |prefix: &str| {
        if kvm.boots_linux() {
            BackendPlan {
                kind: BackendKind::Qemu(Accel::Kvm),
                reason: format!("{prefix}hardware KVM"),
            }
        } else {
            BackendPlan {
                kind: BackendKind::Qemu(Accel::Tcg),
                reason: format!(
                    "{prefix}no hardware KVM (/dev/kvm: {}): software emulation, slower but complete",
                    kvm.describe()
                ),
            }
        }
    };
    match choice {
        BackendChoice::Qemu => Ok(qemu_plan("the config asks for qemu; ")),
        BackendChoice::HullVmm => {
            if kvm != KvmKind::Hardware {
                return Err(SelectError::HullVmmUnsupported {
                    reason: host.summary(),
                });
            }
            if !hull_vmm_found {
                return Err(SelectError::Missing {
                    what: "hull-vmm",
                    name: hull_vmm_name.to_path_buf(),
                    fix: HULL_VMM_FIX,
                });
            }
            Ok(BackendPlan {
                kind: BackendKind::HullVmm,
                reason: "the config asks for hull-vmm; hardware KVM".into(),
            })
        }
        BackendChoice::Auto => {
            if kvm != KvmKind::Hardware {
                return Ok(qemu_plan("auto: "));
            }
            if hull_vmm_found {
                Ok(BackendPlan {
                    kind: BackendKind::HullVmm,
                    reason: "auto: hardware KVM".into(),
                })
            } else {
                Ok(qemu_plan(&format!(
                    "auto: hull-vmm not found ({}; fix: {HULL_VMM_FIX}), so QEMU with ",
                    hull_vmm_name.display()
                )))
            }
        }
    }
}

/// Builds the backend the config asks for on this host.
pub fn select(config: &Config) -> Result<Box<dyn Hypervisor>, SelectError> {
    select_on(config, &::hull_vmm::host_support())
}

/// Builds the backend the config asks for on a host with `host` KVM.
pub fn select_on(config: &Config, host: &HostSupport) -> Result<Box<dyn Hypervisor>, SelectError> {
    let hv = &config.hypervisor;
    let hull_vmm_bin = host::find_binary(&hv.hull_vmm);
    let plan = plan(hv.backend, host, (&hv.hull_vmm, hull_vmm_bin.is_some()))?;
    tracing::debug!(backend = plan.kind.name(), reason = %plan.reason, "backend chosen");
    // virtiofsd is only needed for VMs with a shared dir; `launch` names it if one is
    // asked for and it is missing.
    let virtiofsd = host::find_binary(&hv.virtiofsd);
    match (plan.kind, hull_vmm_bin) {
        (BackendKind::HullVmm, Some(binary)) => {
            Ok(Box::new(HullVmm::new(HullVmmConfig { binary, virtiofsd })))
        }
        (BackendKind::HullVmm, None) => Err(SelectError::Missing {
            what: "hull-vmm",
            name: hv.hull_vmm.clone(),
            fix: HULL_VMM_FIX,
        }),
        (BackendKind::Qemu(accel), _) => {
            let qemu = host::find_binary(&hv.qemu).ok_or(SelectError::Missing {
                what: "QEMU",
                name: hv.qemu.clone(),
                fix: "apt-get install qemu-system-x86",
            })?;
            let vhost_vsock = host::find_binary(&hv.vhost_vsock).ok_or(SelectError::Missing {
                what: "vhost-device-vsock",
                name: hv.vhost_vsock.clone(),
                fix: "scripts/setup (cargo install --locked --root /usr/local/libexec/hull vhost-device-vsock@0.3.0)",
            })?;
            Ok(Box::new(qemu::Qemu::new(qemu::QemuConfig {
                qemu,
                vhost_vsock,
                virtiofsd,
                accel,
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::hull_vmm::KvmKind as V;

    fn host(kind: V) -> HostSupport {
        HostSupport {
            kind,
            kvm_accessible: true,
        }
    }
    const BIN: &str = "hull-vmm";

    #[test]
    fn auto_picks_hull_vmm_only_with_hardware_kvm() {
        let p = |kind, found| {
            plan(BackendChoice::Auto, &host(kind), (Path::new(BIN), found))
                .expect("auto always plans")
        };
        assert_eq!(p(V::Vmx, true).kind, BackendKind::HullVmm);
        assert_eq!(p(V::Svm, true).kind, BackendKind::HullVmm);
        let no_bin = p(V::Vmx, false);
        assert_eq!(no_bin.kind, BackendKind::Qemu(Accel::Kvm));
        assert!(
            no_bin.reason.contains("hull-vmm not found"),
            "{}",
            no_bin.reason
        );
        for kind in [V::Pvm, V::Unknown, V::Absent] {
            let pl = p(kind, true);
            assert_eq!(pl.kind, BackendKind::Qemu(Accel::Tcg), "{kind:?}");
            assert!(pl.reason.contains("no hardware KVM"), "{}", pl.reason);
        }
        let pvm = p(V::Pvm, true);
        assert!(pvm.reason.contains("PVM"), "{}", pvm.reason);
        // Hardware KVM that this user cannot open is no KVM.
        let locked = plan(
            BackendChoice::Auto,
            &HostSupport {
                kind: V::Vmx,
                kvm_accessible: false,
            },
            (Path::new(BIN), true),
        )
        .expect("plan");
        assert_eq!(locked.kind, BackendKind::Qemu(Accel::Tcg));
    }

    #[test]
    fn hull_vmm_on_a_host_that_cannot_run_it_names_the_reason() {
        for kind in [V::Pvm, V::Absent, V::Unknown] {
            let e = plan(BackendChoice::HullVmm, &host(kind), (Path::new(BIN), true))
                .expect_err("must refuse");
            let msg = e.to_string();
            assert!(
                msg.contains("hull-vmm") && msg.contains("cannot run here"),
                "{msg}"
            );
            assert!(msg.contains("hardware KVM"), "{msg}");
        }
        let msg = plan(
            BackendChoice::HullVmm,
            &host(V::Pvm),
            (Path::new(BIN), true),
        )
        .expect_err("pvm")
        .to_string();
        assert!(msg.contains("PVM"), "{msg}");
        let msg = plan(
            BackendChoice::HullVmm,
            &host(V::Absent),
            (Path::new(BIN), true),
        )
        .expect_err("absent")
        .to_string();
        assert!(msg.contains("no /dev/kvm"), "{msg}");
        let msg = plan(
            BackendChoice::HullVmm,
            &HostSupport {
                kind: V::Vmx,
                kvm_accessible: false,
            },
            (Path::new(BIN), true),
        )
        .expect_err("locked")
        .to_string();
        assert!(msg.contains("permissions"), "{msg}");
    }

    #[test]
    fn hull_vmm_without_its_binary_names_the_binary() {
        let e = plan(
            BackendChoice::HullVmm,
            &host(V::Vmx),
            (Path::new("/opt/x/hull-vmm"), false),
        )
        .expect_err("missing binary");
        let msg = e.to_string();
        assert!(
            msg.contains("/opt/x/hull-vmm") && msg.contains("fix:"),
            "{msg}"
        );
        let ok = plan(
            BackendChoice::HullVmm,
            &host(V::Vmx),
            (Path::new(BIN), true),
        )
        .expect("ok");
        assert_eq!(ok.kind, BackendKind::HullVmm);
    }

    #[test]
    fn qemu_follows_the_kvm_kind() {
        let p =
            |kind| plan(BackendChoice::Qemu, &host(kind), (Path::new(BIN), true)).expect("qemu");
        assert_eq!(p(V::Vmx).kind, BackendKind::Qemu(Accel::Kvm));
        assert_eq!(p(V::Pvm).kind, BackendKind::Qemu(Accel::Tcg));
        assert_eq!(p(V::Absent).kind, BackendKind::Qemu(Accel::Tcg));
    }

    #[test]
    fn select_builds_the_planned_backend() {
        let mut config = Config::default();
        config.hypervisor.hull_vmm = "/bin/true".into();
        config.hypervisor.qemu = "/bin/true".into();
        config.hypervisor.vhost_vsock = "/bin/true".into();
        let hv = select_on(&config, &host(V::Vmx)).expect("hull-vmm");
        assert_eq!(hv.name(), "hull-vmm (kvm)");
        let hv = select_on(&config, &host(V::Pvm)).expect("qemu");
        assert_eq!(hv.name(), "qemu (tcg)");
        config.hypervisor.backend = BackendChoice::HullVmm;
        let e = select_on(&config, &host(V::Pvm))
            .err()
            .expect("refused on PVM");
        assert!(e.to_string().contains("PVM"), "{e}");
        config.hypervisor.hull_vmm = "/nonexistent/hull-vmm".into();
        let e = select_on(&config, &host(V::Vmx))
            .err()
            .expect("missing binary");
        assert!(e.to_string().contains("/nonexistent/hull-vmm"), "{e}");
    }
}
