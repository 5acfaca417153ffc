//! The agent's policy: which requests the host may make, and with what limits.
//!
//! A policy is a TOML document (`guest-image/policy/default.toml` documents every key).
//! The guest image bakes one in at [`BAKED_PATH`]; the host may send one more, once, in
//! CreateSandbox (`policy`). A request must pass both: a sent policy can only tighten
//! the baked one, never loosen it. After the first CreateSandbox the policies are
//! sealed: a later policy is refused ([`PolicyError::Sealed`]).
//!
//! The checks of each request are in `check.rs` ([`check::admit`]), called by `rpc.rs`
//! before the service acts; a refusal names the rule and the policy that made it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use oci_spec::runtime::Capability;
use serde::Deserialize;

pub mod check;

/// Where the guest image puts its policy.
pub const BAKED_PATH: &str = "/etc/hull/policy.toml";

/// The policy an agent without a baked file uses (development, host-side tests): the
/// default one the guest image ships.
pub const BUILTIN_DEFAULT: &str = include_str!("../../guest-image/policy/default.toml");

/// Largest policy document accepted (a policy is a few hundred bytes).
pub const MAX_DOCUMENT: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy document is not valid: {0}")]
    Parse(String),
    #[error("policy {name:?}: {what}")]
    Invalid { name: String, what: String },
    /// The request breaks a rule: `rule` says which, in words.
    #[error("policy: {rule} (policy {name:?})")]
    Denied { name: String, rule: String },
    #[error("policy: the policy is sealed (policy {name:?}): it was fixed by CreateSandbox and cannot be changed")]
    Sealed { name: String },
}

/// One policy document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Named in every refusal.
    pub name: String,
    #[serde(default)]
    pub exec: ExecRules,
    #[serde(default)]
    pub containers: ContainerRules,
    #[serde(default)]
    pub mounts: MountRules,
    #[serde(default)]
    pub sysctls: SysctlRules,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecRules {
    /// ExecProcess into a container.
    pub allow: bool,
    /// Debug processes (ExecProcess without a container; CreateSandbox's debug_exec).
    pub allow_debug: bool,
}

impl Default for ExecRules {
    fn default() -> Self {
        ExecRules {
            allow: true,
            allow_debug: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerRules {
    /// CAP_SYS_ADMIN, a device cgroup rule allowing every device, or linux.devices.
    pub allow_privileged: bool,
    pub require_seccomp: bool,
    pub require_readonly_rootfs: bool,
    /// Containers at once.
    pub max: Option<u32>,
    /// The capabilities a process may have in any set (None: any).
    pub capabilities: Option<HashSet<Capability>>,
}

impl Default for ContainerRules {
    fn default() -> Self {
        ContainerRules {
            allow_privileged: true,
            require_seccomp: false,
            require_readonly_rootfs: false,
            max: None,
            capabilities: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountRules {
    /// Mount types (`type` of a spec mount; a bind mount is `bind`). None: any.
    pub types: Option<Vec<String>>,
    /// Absolute guest directories bind mounts (spec mounts and `bind` storages) may
    /// come from, themselves or below. None: any.
    pub bind_sources: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysctlRules {
    /// Keys, exact or a prefix ending in `*`. None: any.
    pub allow: Option<Vec<String>>,
}

impl Policy {
    /// Parses and checks a document.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_DOCUMENT {
            return Err(PolicyError::Parse(format!(
                "{} bytes, more than {MAX_DOCUMENT}",
                text.len()
            )));
        }
        let p: Policy = toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        let invalid = |what: String| {
            Err(PolicyError::Invalid {
                name: p.name.clone(),
                what,
            })
        };
        if p.name.is_empty() || p.name.len() > 64 || p.name.chars().any(|c| c.is_control()) {
            return Err(PolicyError::Parse(format!(
                "name {:?} must be 1-64 printable characters",
                p.name.chars().take(80).collect::<String>()
            )));
        }
        for src in p.mounts.bind_sources.iter().flatten() {
            if !src.starts_with('/') || src.split('/').any(|c| c == "..") {
                return invalid(format!(
                    "mounts.bind_sources entry {src:?} is not an absolute path without .."
                ));
            }
        }
        for key in p.sysctls.allow.iter().flatten() {
            if key.is_empty() || key.trim_end_matches('*').contains('*') {
                return invalid(format!(
                    "sysctls.allow entry {key:?}: a key, or a prefix ending in *"
                ));
            }
        }
        Ok(p)
    }

    /// A refusal by this policy.
    pub fn deny(&self, rule: impl Into<String>) -> PolicyError {
        PolicyError::Denied {
            name: self.name.clone(),
            rule: rule.into(),
        }
    }
}

/// The baked policy, the sent one once CreateSandbox brought it, and the seal.
#[derive(Debug)]
pub struct Policies {
    baked: Arc<Policy>,
    sent: Mutex<Option<Arc<Policy>>>,
    sealed: AtomicBool,
}

impl Policies {
    pub fn new(baked: Policy) -> Policies {
        Policies {
            baked: Arc::new(baked),
            sent: Mutex::new(None),
            sealed: AtomicBool::new(false),
        }
    }

    /// The built-in default ([`BUILTIN_DEFAULT`]).
    pub fn builtin() -> Result<Policies, PolicyError> {
        Ok(Policies::new(Policy::parse(BUILTIN_DEFAULT)?))
    }

    /// The baked policy at `path`; the built-in default if there is no such file.
    pub fn load(path: &Path) -> Result<Policies, PolicyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Policy::parse(&text).map(Policies::new),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Policies::builtin(),
            Err(e) => Err(PolicyError::Parse(format!("{}: {e}", path.display()))),
        }
    }

    fn sent_slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Policy>>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policies in force: the baked one, then the sent one.
    pub fn active(&self) -> Vec<Arc<Policy>> {
        let mut all = vec![self.baked.clone()];
        all.extend(self.sent_slot().clone());
        all
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::SeqCst)
    }

    /// The name of the newest policy (for messages).
    pub fn name(&self) -> String {
        self.sent_slot()
            .as_ref()
            .unwrap_or(&self.baked)
            .name
            .clone()
    }

    /// Installs CreateSandbox's policy (None: none sent) and seals; refused once sealed.
    pub fn seal(&self, sent: Option<Policy>) -> Result<(), PolicyError> {
        if self.sealed.swap(true, Ordering::SeqCst) {
            return Err(PolicyError::Sealed { name: self.name() });
        }
        *self.sent_slot() = sent.map(Arc::new);
        Ok(())
    }

    /// Undoes [`Policies::seal`] after a failed CreateSandbox (which may be retried).
    pub fn unseal(&self) {
        *self.sent_slot() = None;
        self.sealed.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests;
