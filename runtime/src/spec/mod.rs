//! The OCI runtime spec (runc's config.json) of a container, with containerd's
//! defaults: capabilities, masked/read-only paths, standard mounts, NOFILE rlimit,
//! default seccomp profile, device rules, namespaces (pid, ipc, uts, mount, network,
//! cgroup). Every path in the spec is a guest path.

pub mod defaults;
pub mod seccomp;
pub mod units;

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilities, LinuxCpu, LinuxMemory, LinuxNamespace,
    LinuxNamespaceType, LinuxPids, LinuxResources, Mount, Process, Root, Spec, User,
};

use crate::image::ImageConfig;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid {option} value {value:?}: {why}")]
    BadValue {
        option: &'static str,
        value: String,
        why: String,
    },
    #[error("no command to run: the image has no Entrypoint or Cmd and none was given after --")]
    NoArgs,
    #[error("cannot build the runtime spec: {0}")]
    Build(String),
}

/// A bind mount of a guest path into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Guest path (under the sandbox share).
    pub source: String,
    /// Path inside the container.
    pub destination: String,
    pub readonly: bool,
}

/// What the user asked for, on top of the image's config.
#[derive(Debug, Clone, Default)]
pub struct ContainerOptions {
    /// The command after `--`; replaces the image's Cmd (the Entrypoint stays).
    pub args: Vec<String>,
    /// `--env K=V`, overriding the image's Env.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `UID[:GID]` (or a name found in the image's /etc/passwd).
    pub user: Option<String>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub read_only: bool,
    pub terminal: bool,
    pub hostname: String,
    pub mounts: Vec<BindMount>,
}

/// Entrypoint + (the given command, else Cmd), as docker and containerd do.
pub fn process_args(image: &ImageConfig, command: &[String]) -> Result<Vec<String>, SpecError> {
    let mut args = image.entrypoint.clone().unwrap_or_default();
    if command.is_empty() {
        args.extend(image.cmd.clone().unwrap_or_default());
    } else {
        args.extend(command.iter().cloned());
    }
    if args.is_empty() || args[0].is_empty() {
        return Err(SpecError::NoArgs);
    }
    Ok(args)
}

/// Builds the spec. `rootfs_guest` is the rootfs path in the guest; `rootfs_host`
/// (when given) is read for user and group names.
pub fn generate(
    opts: &ContainerOptions,
    image: &ImageConfig,
    rootfs_guest: &str,
    rootfs_host: Option<&Path>,
) -> Result<Spec, SpecError> {
    let _s = tracing::info_span!("spec_generate").entered();
    let args = process_args(image, &opts.args)?;
    for e in &opts.env {
        units::check_env(e)?;
    }
    let mut env = units::merge_env(&image.env.clone().unwrap_or_default(), &opts.env);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={}", defaults::DEFAULT_PATH));
    }
    if opts.terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let cwd = opts
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(SpecError::BadValue {
            option: "--workdir",
            value: cwd,
            why: "must be an absolute path".into(),
        });
    }
    let user_spec = opts
        .user
        .clone()
        .or_else(|| image.user.clone().filter(|u| !u.is_empty()));
    let (uid, gid) = match &user_spec {
        Some(u) => units::resolve_user(u, rootfs_host)?,
        None => (0, 0),
    };
    let mut user = User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    if gid != 0 {
        user.set_additional_gids(Some(vec![gid]));
    }

    let caps: HashSet<Capability> = defaults::CAPABILITIES.iter().copied().collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);

    let mut process = Process::default();
    process.set_terminal(Some(opts.terminal));
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    process.set_user(user);
    process.set_capabilities(Some(capabilities));
    process.set_rlimits(Some(defaults::rlimits()));
    process.set_no_new_privileges(Some(true));

    let mut root = Root::default();
    root.set_path(rootfs_guest.into());
    root.set_readonly(Some(opts.read_only));

    let mut mounts = defaults::mounts();
    for m in &opts.mounts {
        if !m.destination.starts_with('/') {
            return Err(SpecError::BadValue {
                option: "-v",
                value: m.destination.clone(),
                why: "the container path must be absolute".into(),
            });
        }
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        options.push(if m.readonly { "ro" } else { "rw" }.to_string());
        let mut mount = Mount::default();
        mount.set_destination(m.destination.clone().into());
        mount.set_typ(Some("bind".into()));
        mount.set_source(Some(m.source.clone().into()));
        mount.set_options(Some(options));
        mounts.push(mount);
    }

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|t| {
        let mut n = LinuxNamespace::default();
        n.set_typ(t);
        n
    })
    .collect::<Vec<_>>();

    let mut resources = LinuxResources::default();
    resources.set_devices(Some(defaults::device_rules()));
    if let Some(bytes) = opts.memory {
        let mut m = LinuxMemory::default();
        m.set_limit(Some(bytes as i64));
        // No swap beyond the limit (the guest has no swap anyway).
        m.set_swap(Some(bytes as i64));
        resources.set_memory(Some(m));
    }
    if let Some(cpus) = opts.cpus {
        let mut c = LinuxCpu::default();
        c.set_quota(Some(units::cpu_quota(cpus)));
        c.set_period(Some(units::CPU_PERIOD));
        resources.set_cpu(Some(c));
    }
    if let Some(limit) = opts.pids_limit {
        let mut p = LinuxPids::default();
        p.set_limit(limit);
        resources.set_pids(Some(p));
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(
            defaults::MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            defaults::READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .resources(resources)
        .seccomp(seccomp::default_profile(defaults::CAPABILITIES))
        .build()
        .map_err(|e| SpecError::Build(e.to_string()))?;

    let mut spec = Spec::default();
    spec.set_version("1.1.0".into());
    spec.set_hostname(Some(opts.hostname.clone()));
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    spec.set_hooks(None);
    spec.set_annotations(None);
    Ok(spec)
}

/// The spec as runc reads it.
/// containerd's default seccomp profile with hull's default capabilities, as the
/// `linux.seccomp` JSON of the specs hull generates (what a guest may compile ahead).
pub fn default_seccomp_json() -> String {
    serde_json::to_string(&seccomp::default_profile(defaults::CAPABILITIES)).unwrap_or_default()
}

pub fn to_json(spec: &Spec) -> Result<Vec<u8>, SpecError> {
    serde_json::to_vec_pretty(spec).map_err(|e| SpecError::Build(e.to_string()))
}

#[cfg(test)]
mod tests;
