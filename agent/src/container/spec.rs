//! What the agent accepts from the host: ids, OCI runtime specs and processes, checked
//! before anything is created, with errors that name the offending field; and the few
//! rewrites a spec needs to mean the same inside the guest.

use std::path::Path;

use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceType, PosixRlimitBuilder, PosixRlimitType, Process, Spec,
};

/// Where container cgroups live, under the guest's cgroup2 root.
pub const CGROUP_PARENT: &str = "/hull";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{what} {id:?} is invalid: {why}")]
    BadId {
        what: &'static str,
        id: String,
        why: &'static str,
    },
    #[error("OCI spec is not valid JSON for the runtime spec: {0}")]
    Json(String),
    #[error("OCI spec: {0}")]
    Invalid(String),
}

/// Container and exec ids: `[A-Za-z0-9_.-]{1,64}`, and not `.` / `..` (ids name
/// directories in the guest).
pub fn validate_id(what: &'static str, id: &str) -> Result<(), SpecError> {
    let bad = |why| {
        Err(SpecError::BadId {
            what,
            id: id.chars().take(80).collect(),
            why,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > 64 {
        return bad("longer than 64 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return bad("only A-Z a-z 0-9 _ . - are allowed");
    }
    if id.contains("..") || id == "." {
        return bad("must not be . or contain ..");
    }
    Ok(())
}

/// Checks an OCI process (the init process's or an exec's).
pub fn validate_process(process: &Process, what: &str) -> Result<(), SpecError> {
    let invalid = |m: String| Err(SpecError::Invalid(m));
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return invalid(format!("{what}.args is empty: there is no command to run")),
    }
    if !process.cwd().is_absolute() {
        return invalid(format!(
            "{what}.cwd {:?} is not an absolute path",
            process.cwd()
        ));
    }
    if let Some(env) = process.env() {
        if let Some(bad) = env.iter().find(|e| !e.contains('=')) {
            return invalid(format!("{what}.env entry {bad:?} is not KEY=VALUE"));
        }
    }
    Ok(())
}

/// Parses a process JSON (ExecProcess) and checks it.
pub fn parse_process(json: &[u8]) -> Result<Process, SpecError> {
    let process: Process =
        serde_json::from_slice(json).map_err(|e| SpecError::Json(format!("process: {e}")))?;
    validate_process(&process, "process")?;
    let mut process = process;
    pin_memlock(&mut process);
    Ok(process)
}

/// Gives a process without an RLIMIT_MEMLOCK of its own the agent's (the guest
/// kernel's default). Left unset, an init would inherit what libcgroups sets in the
/// process that forks it (it raises RLIMIT_MEMLOCK there to load the BPF device
/// filter), and the container's init and its exec'd processes would differ.
pub fn pin_memlock(process: &mut Process) {
    let mut rlimits = process.rlimits().clone().unwrap_or_default();
    if rlimits
        .iter()
        .any(|r| r.typ() == PosixRlimitType::RlimitMemlock)
    {
        return;
    }
    let Ok((soft, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
    else {
        return;
    };
    if let Ok(limit) = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitMemlock)
        .soft(soft)
        .hard(hard)
        .build()
    {
        rlimits.push(limit);
        process.set_rlimits(Some(rlimits));
    }
}

/// Parses and checks a runtime spec, and rewrites it for the guest (see [`adapt`]).
pub fn parse_spec(json: &[u8], container_id: &str) -> Result<Spec, SpecError> {
    let mut spec: Spec =
        serde_json::from_slice(json).map_err(|e| SpecError::Json(e.to_string()))?;
    if !spec.version().starts_with("1.") {
        return Err(SpecError::Invalid(format!(
            "ociVersion {:?} is not 1.x",
            spec.version()
        )));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| SpecError::Invalid("no process".into()))?;
    validate_process(process, "process")?;
    if let Some(p) = spec.process_mut().as_mut() {
        pin_memlock(p);
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| SpecError::Invalid("no root".into()))?;
    if !root.path().is_absolute() {
        return Err(SpecError::Invalid(format!(
            "root.path {:?} must be an absolute guest path",
            root.path()
        )));
    }
    if spec.linux().is_none() {
        return Err(SpecError::Invalid("no linux section".into()));
    }
    if let Some(mounts) = spec.mounts() {
        for m in mounts {
            if !m.destination().is_absolute() {
                return Err(SpecError::Invalid(format!(
                    "mount destination {:?} is not absolute",
                    m.destination()
                )));
            }
        }
    }
    adapt(&mut spec, container_id)?;
    Ok(spec)
}

/// Rewrites the parts of a host-made spec that mean something else in the guest:
/// - `linux.cgroupsPath` becomes `/hull/<id>` (the host's cgroup layout is not the
///   guest's);
/// - a network namespace given by path (the host's pod netns) is dropped: containers of
///   a pod share the VM's network, which is the pod's;
/// - other namespace paths are host paths: refused (a pod's container joins its
///   sandbox container's namespaces through [`join_namespaces`], after this);
/// - hooks are host binaries: dropped (the runtime runs them on the host);
/// - `linux.devices` name the host's devices (containerd gives a privileged container
///   all of them): only those the guest has too, by type, major and minor, are kept
///   (/dev/fuse, /dev/net/tun, ...); a VM never gets a host device.
pub fn adapt(spec: &mut Spec, container_id: &str) -> Result<(), SpecError> {
    spec.set_hooks(None);
    let Some(linux) = spec.linux_mut().as_mut() else {
        return Ok(());
    };
    linux.set_cgroups_path(Some(Path::new(CGROUP_PARENT).join(container_id)));
    if let Some(devices) = linux.devices_mut().as_mut() {
        devices.retain(|d| {
            let kept = guest_has_device(d);
            if !kept {
                tracing::debug!(device = %d.path().display(), "not in the guest: left out");
            }
            kept
        });
    }
    if let Some(namespaces) = linux.namespaces_mut().as_mut() {
        let mut kept = Vec::with_capacity(namespaces.len());
        for ns in namespaces.drain(..) {
            match (ns.typ(), ns.path()) {
                (_, None) => kept.push(ns),
                (LinuxNamespaceType::Network, Some(_)) => {}
                (typ, Some(path)) => {
                    return Err(SpecError::Invalid(format!(
                        "{typ:?} namespace path {path:?}: joining namespaces by path is not supported in the guest"
                    )))
                }
            }
        }
        *namespaces = kept;
    }
    Ok(())
}

/// Whether the guest has a device of `d`'s type, major and minor (a FIFO is made, not
/// passed: always).
fn guest_has_device(d: &oci_spec::runtime::LinuxDevice) -> bool {
    use oci_spec::runtime::LinuxDeviceType;
    let class = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => "char",
        LinuxDeviceType::B => "block",
        LinuxDeviceType::P => return true,
        LinuxDeviceType::A => return false,
    };
    Path::new("/sys/dev")
        .join(class)
        .join(format!("{}:{}", d.major(), d.minor()))
        .exists()
}

/// The namespaces a container of a pod may share with the pod's sandbox container
/// (CreateContainerRequest.sandbox_namespaces): IPC and UTS, and PID when the pod
/// shares its process namespace. Network is the VM's for every container anyway; a
/// shared mount, user or cgroup namespace is not Kubernetes' and is refused.
pub fn sandbox_namespace(name: &str) -> Result<LinuxNamespaceType, SpecError> {
    match name {
        "ipc" => Ok(LinuxNamespaceType::Ipc),
        "uts" => Ok(LinuxNamespaceType::Uts),
        "pid" => Ok(LinuxNamespaceType::Pid),
        other => Err(SpecError::Invalid(format!(
            "sandbox namespace {:?}: only ipc, uts and pid can be shared with the pod's sandbox container",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

/// Points the namespaces `types` of `spec` at those of guest process `pid` (the pod's
/// sandbox container's init): `/proc/<pid>/ns/<type>`, adding the namespace where the
/// spec has none. Runs after [`adapt`], which refused any path the host wrote, so the
/// only paths a guest `setns` sees are these.
pub fn join_namespaces(
    spec: &mut Spec,
    pid: i32,
    types: &[LinuxNamespaceType],
) -> Result<(), SpecError> {
    if pid <= 0 {
        return Err(SpecError::Invalid(format!(
            "sandbox process id {pid} is not a process"
        )));
    }
    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| SpecError::Invalid("no linux section".into()))?;
    let namespaces = linux.namespaces_mut().get_or_insert_with(Vec::new);
    for typ in types {
        let path = Path::new("/proc")
            .join(pid.to_string())
            .join("ns")
            .join(ns_file(*typ));
        match namespaces.iter_mut().find(|ns| ns.typ() == *typ) {
            Some(ns) => {
                ns.set_path(Some(path));
            }
            None => {
                let mut ns = LinuxNamespace::default();
                ns.set_typ(*typ);
                ns.set_path(Some(path));
                namespaces.push(ns);
            }
        }
    }
    Ok(())
}

/// The file of a namespace type under `/proc/<pid>/ns/`.
fn ns_file(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Whether the spec asks for a terminal.
pub fn wants_terminal(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests;
