//! Every request the policy has rules for, checked in one place before the service
//! acts ([`admit`]). Pure apart from resolving bind mount sources that exist (so a
//! symlink in the share cannot point a bind mount elsewhere).

use std::path::{Component, Path, PathBuf};

use hull_proto::{
    CreateContainerRequest, CreateSandboxRequest, ExecProcessRequest, Storage,
    UpdateContainerRequest,
};
use oci_spec::runtime::{
    Capability, LinuxDeviceCgroup, LinuxDeviceType, LinuxSeccompAction, Process, Spec,
};

use super::{Policies, Policy, PolicyError};
use crate::container::spec;
use crate::service::ServiceError;

/// A request with policy rules.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    CreateSandbox(&'a CreateSandboxRequest),
    CreateContainer(&'a CreateContainerRequest),
    ExecProcess(&'a ExecProcessRequest),
    UpdateContainer(&'a UpdateContainerRequest),
}

/// What the checks need to know of the sandbox.
#[derive(Debug, Clone, Copy, Default)]
pub struct State {
    /// Containers in the table now.
    pub containers: usize,
}

impl From<PolicyError> for ServiceError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Parse(_) | PolicyError::Invalid { .. } => {
                ServiceError::InvalidArgument(e.to_string())
            }
            PolicyError::Denied { .. } | PolicyError::Sealed { .. } => {
                ServiceError::PermissionDenied(e.to_string())
            }
        }
    }
}

/// Checks `req` against every policy in force (for CreateSandbox also the one it
/// sends). A request the service would refuse as malformed (a spec that does not
/// parse) passes here: the service parses it the same way and names the fault.
pub fn admit(policies: &Policies, req: Request<'_>, state: State) -> Result<(), ServiceError> {
    let mut active = policies.active();
    if let Request::CreateSandbox(r) = req {
        if !r.policy.is_empty() {
            if policies.is_sealed() {
                return Err(PolicyError::Sealed {
                    name: policies.name(),
                }
                .into());
            }
            active.push(std::sync::Arc::new(Policy::parse(&r.policy)?));
        }
    }
    for p in &active {
        check(p, req, state)?;
    }
    Ok(())
}

/// Checks `req` against one policy.
pub fn check(p: &Policy, req: Request<'_>, state: State) -> Result<(), PolicyError> {
    match req {
        Request::CreateSandbox(r) => {
            if r.debug_exec && !p.exec.allow_debug {
                return Err(p.deny("debug processes (CreateSandbox debug_exec) are not allowed"));
            }
            sysctls(
                p,
                r.sysctls.keys().map(String::as_str),
                "CreateSandbox sysctls",
            )?;
            storages(p, &r.storages)
        }
        Request::CreateContainer(r) => {
            if let Some(max) = p.containers.max {
                if state.containers >= max as usize {
                    return Err(p.deny(format!("at most {max} containers are allowed")));
                }
            }
            storages(p, &r.storages)?;
            match spec::parse_spec(&r.oci_spec_json, "policy-check") {
                Ok(s) => container_spec(p, &s),
                Err(_) => Ok(()),
            }
        }
        Request::ExecProcess(r) if r.container_id.is_empty() => match p.exec.allow_debug {
            true => Ok(()),
            false => Err(p.deny("debug processes are not allowed")),
        },
        Request::ExecProcess(r) => {
            if !p.exec.allow {
                return Err(p.deny("exec is not allowed"));
            }
            match spec::parse_process(&r.process_json) {
                Ok(proc) => process(p, &proc, "exec process"),
                Err(_) => Ok(()),
            }
        }
        Request::UpdateContainer(r) => {
            match serde_json::from_slice::<oci_spec::runtime::LinuxResources>(&r.resources_json) {
                Ok(res) => device_rules(
                    p,
                    res.devices().as_deref().unwrap_or_default(),
                    "UpdateContainer resources",
                ),
                Err(_) => Ok(()),
            }
        }
    }
}

fn container_spec(p: &Policy, s: &Spec) -> Result<(), PolicyError> {
    if let Some(proc) = s.process() {
        process(p, proc, "process")?;
    }
    let linux = s.linux().as_ref();
    if let Some(l) = linux {
        let rules = l
            .resources()
            .as_ref()
            .and_then(|r| r.devices().as_deref())
            .unwrap_or_default();
        device_rules(p, rules, "linux.resources.devices")?;
        if let (false, Some(dev)) = (
            p.containers.allow_privileged,
            l.devices().as_ref().and_then(|d| d.first()),
        ) {
            return Err(p.deny(format!(
                "privileged containers are not allowed (linux.devices gives the container {})",
                dev.path().display()
            )));
        }
        if let Some(sysctl) = l.sysctl() {
            sysctls(p, sysctl.keys().map(String::as_str), "linux.sysctl")?;
        }
    }
    if p.containers.require_seccomp {
        match linux.and_then(|l| l.seccomp().as_ref()) {
            None => return Err(p.deny("a seccomp profile is required (linux.seccomp is missing)")),
            Some(sc) if sc.default_action() == LinuxSeccompAction::ScmpActAllow => {
                return Err(p.deny(
                    "a seccomp profile is required (linux.seccomp allows every syscall by default)",
                ))
            }
            Some(_) => {}
        }
    }
    if p.containers.require_readonly_rootfs
        && s.root().as_ref().and_then(|r| r.readonly()) != Some(true)
    {
        return Err(p.deny("a read-only rootfs is required (root.readonly is not true)"));
    }
    for m in s.mounts().iter().flatten() {
        let options = m.options().as_deref().unwrap_or_default();
        let bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        let typ = if bind {
            "bind"
        } else {
            m.typ().as_deref().unwrap_or("")
        };
        let dest = m.destination().display();
        if let Some(types) = &p.mounts.types {
            if !types.iter().any(|t| t == typ) {
                return Err(p.deny(format!(
                    "mount type {typ:?} is not allowed (mount on {dest})"
                )));
            }
        }
        if bind {
            let source = m.source().as_deref().unwrap_or(Path::new(""));
            bind_source(p, source, &format!("bind mount on {dest}"))?;
        }
    }
    Ok(())
}

fn process(p: &Policy, proc: &Process, what: &str) -> Result<(), PolicyError> {
    let Some(caps) = proc.capabilities() else {
        return Ok(());
    };
    let sets = [
        ("bounding", caps.bounding()),
        ("effective", caps.effective()),
        ("permitted", caps.permitted()),
        ("inheritable", caps.inheritable()),
        ("ambient", caps.ambient()),
    ];
    for (set, members) in sets {
        let mut members: Vec<&Capability> = members.iter().flatten().collect();
        members.sort_by_key(|c| c.to_string());
        for cap in members {
            if !p.containers.allow_privileged && *cap == Capability::SysAdmin {
                return Err(p.deny(format!(
                    "privileged containers are not allowed (CAP_SYS_ADMIN in {what}.capabilities.{set})"
                )));
            }
            if let Some(allowed) = &p.containers.capabilities {
                if !allowed.contains(cap) {
                    return Err(p.deny(format!(
                        "capability CAP_{cap} is not allowed ({what}.capabilities.{set})"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// A device cgroup rule that allows every device makes the container privileged.
fn device_rules(p: &Policy, rules: &[LinuxDeviceCgroup], what: &str) -> Result<(), PolicyError> {
    if p.containers.allow_privileged {
        return Ok(());
    }
    let all = |r: &&LinuxDeviceCgroup| {
        r.allow()
            && matches!(r.typ(), None | Some(LinuxDeviceType::A))
            && r.major().is_none()
            && r.minor().is_none()
    };
    match rules.iter().find(all) {
        Some(_) => Err(p.deny(format!(
            "privileged containers are not allowed ({what} allows every device)"
        ))),
        None => Ok(()),
    }
}

fn sysctls<'k>(
    p: &Policy,
    keys: impl Iterator<Item = &'k str>,
    what: &str,
) -> Result<(), PolicyError> {
    let Some(allowed) = &p.sysctls.allow else {
        return Ok(());
    };
    let mut keys: Vec<&str> = keys.collect();
    keys.sort_unstable();
    for key in keys {
        let ok = allowed.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => a == key,
        });
        if !ok {
            return Err(p.deny(format!(
                "sysctl {:?} is not allowed ({what})",
                key.chars().take(80).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// A bind storage's source, and an overlay's lower dirs (shown to the container as
/// its image), must come from where the policy lets guest paths be bound from.
fn storages(p: &Policy, storages: &[Storage]) -> Result<(), PolicyError> {
    for s in storages {
        let what = format!("{} storage on {}", s.driver, s.mount_point);
        match s.driver.as_str() {
            "bind" => bind_source(p, Path::new(&s.source), &what)?,
            "overlay" => {
                let lowers = s
                    .options
                    .iter()
                    .filter_map(|o| o.strip_prefix("lowerdir="))
                    .flat_map(|l| l.split(':'));
                for lower in lowers {
                    bind_source(p, Path::new(lower), &what)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// `source` (and, when it exists, what it resolves to) must be under an allowed dir.
fn bind_source(p: &Policy, source: &Path, what: &str) -> Result<(), PolicyError> {
    let Some(allowed) = &p.mounts.bind_sources else {
        return Ok(());
    };
    let under = |path: &Path| allowed.iter().any(|a| path.starts_with(a));
    let lexical = normalize(source);
    let resolved = std::fs::canonicalize(source).ok();
    match (&lexical, &resolved) {
        (Some(l), None) if under(l) => Ok(()),
        (Some(l), Some(r)) if under(l) && under(r) => Ok(()),
        _ => Err(p.deny(format!(
            "bind mount source {:?} is not allowed ({what}; allowed: {})",
            source
                .display()
                .to_string()
                .chars()
                .take(200)
                .collect::<String>(),
            allowed.join(", ")
        ))),
    }
}

/// An absolute path with `.` and `..` resolved lexically; None if it is relative or
/// climbs above `/`.
fn normalize(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}
