//! `hull install-containerd`: registers hull as a runtime of containerd's CRI plugin
//! (runtime class handler `hull`, runtime `io.containerd.hull.v2`) in containerd's
//! config file, and writes hull's own config file, which that registration names
//! (`ConfigPath`), with every default, commented, unless one is there already.
//! Idempotent: a containerd config that already has the `hull` runtime is left
//! untouched, and an existing hull config is never overwritten. Only version 2
//! containerd configs (containerd 1.5+, the default since) are edited.

use std::path::{Path, PathBuf};

pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The table hull adds.
pub const RUNTIME_TABLE: &str = r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hull]"#;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: a version 1 containerd config; hull edits version 2 configs only (containerd config migrate)")]
    Version1(String),
}

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Added,
    AlreadyThere,
}

/// What was done with hull's config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOutcome {
    /// Written with the defaults, commented.
    Written,
    /// A file was there: left as it was.
    Kept,
}

/// hull's config file as `hull install-containerd` writes it: every key with its
/// default, commented out, so the file changes nothing until a line is uncommented
/// (docs/configuration.md lists the same).
pub const HULL_CONFIG_TEMPLATE: &str = r#"# hull's configuration, written by `hull install-containerd` (containerd's hull
# runtime names this file as its ConfigPath). Every key is optional: what is left out,
# or commented as below, takes the default shown. Unknown keys are refused.

# [hypervisor]
# backend = "auto"                 # auto | qemu | hull-vmm
# qemu = "qemu-system-x86_64"
# vhost_vsock = "vhost-device-vsock"
# virtiofsd = "virtiofsd"
# hull_vmm = "hull-vmm"
# host_overhead_mib = 192          # pod cgroup limit = VM memory + this

# [guest]
# kernel = "/var/cache/hull/vmlinux"          # default: <cache_dir>/vmlinux
# initrd = "/var/cache/hull/initramfs.cpio"   # default: <cache_dir>/initramfs.cpio
# kernel_params = ""
# vcpus = 1
# memory_mib = 256
# agent_log = "info"

# [boot]
# kernel_timeout_secs = 20.0
# init_timeout_secs = 40.0
# agent_timeout_secs = 60.0
# request_timeout_secs = 30.0
# shutdown_timeout_secs = 10.0

# [runtime]
# state_dir = "/run/hull"          # $HULL_STATE_DIR overrides the default
# cache_dir = "/var/cache/hull"    # $HULL_CACHE_DIR overrides the default

# [debug]
# exec = false

# [policy]
# file = "/etc/hull/strict.toml"   # default: none, only the policy baked into the guest

# [jail]
# enabled = true
# uid_start = 1900000000
# uid_count = 65536
# lease_dir = "/run/hull-jail/uids"
# nofile = 4096
# memlock_mib = 64
# nproc = 1024

# [rootfs]
# writable_layer = "guest-disk"    # or "host": containers write containerd's snapshot
# scratch_size_mib = 10240         # a pod's scratch disk (sparse)
# scratch_dir = "/var/lib/hull/scratch"
"#;

/// Writes [`HULL_CONFIG_TEMPLATE`] to `path` (its directory created) unless a file is
/// there; never overwrites, not even one made at the same moment (the file appears
/// whole through a hard link, which fails if the name exists).
pub fn write_hull_config(path: &Path) -> Result<ConfigOutcome, InstallError> {
    let io = |source| InstallError::Io {
        path: path.display().to_string(),
        source,
    };
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(ConfigOutcome::Kept);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".hull-tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, HULL_CONFIG_TEMPLATE).map_err(io)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(ConfigOutcome::Written),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(ConfigOutcome::Kept),
        Err(e) => Err(io(e)),
    }
}

/// The `ConfigPath` of hull's runtime in the containerd config `text`, if it has one.
pub fn registered_config_path(text: &str) -> Option<PathBuf> {
    let v: toml::Value = toml::from_str(text).ok()?;
    let p = v
        .get("plugins")?
        .get("io.containerd.grpc.v1.cri")?
        .get("containerd")?
        .get("runtimes")?
        .get("hull")?
        .get("options")?
        .get("ConfigPath")?
        .as_str()?;
    (!p.is_empty()).then(|| PathBuf::from(p))
}

/// What [`setup`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupReport {
    pub runtime: Outcome,
    /// hull's config file the runtime names, and what was done with it.
    pub hull_config: PathBuf,
    pub config: ConfigOutcome,
}

/// `hull install-containerd`: hull's config file first (at the `ConfigPath` the
/// containerd config already names, if it has hull's runtime, else at
/// `hull_config`), then the runtime in the containerd config at `containerd_config`.
pub fn setup(containerd_config: &Path, hull_config: &Path) -> Result<SetupReport, InstallError> {
    let existing = match std::fs::read_to_string(containerd_config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(InstallError::Io {
                path: containerd_config.display().to_string(),
                source,
            })
        }
    };
    if is_version1(&existing) && add_runtime(&existing, hull_config).is_some() {
        return Err(InstallError::Version1(
            containerd_config.display().to_string(),
        ));
    }
    let target = registered_config_path(&existing).unwrap_or_else(|| hull_config.to_path_buf());
    let config = write_hull_config(&target)?;
    let runtime = install(containerd_config, &target)?;
    Ok(SetupReport {
        runtime,
        hull_config: target,
        config,
    })
}

/// The config text with hull's runtime added, or None if it is already there.
pub fn add_runtime(text: &str, hull_config: &Path) -> Option<String> {
    if text.contains("containerd.runtimes.hull]") || text.contains("containerd.runtimes.hull.") {
        return None;
    }
    let mut out = text.to_string();
    if out.trim().is_empty() {
        out = "version = 2\n".into();
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "\n# hull: containers in microVMs (RuntimeClass handler \"hull\"); added by `hull install-containerd`\n\
         {RUNTIME_TABLE}\n  runtime_type = \"io.containerd.hull.v2\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hull.options]\n  ConfigPath = \"{}\"\n",
        hull_config.display()
    ));
    Some(out)
}

fn is_version1(text: &str) -> bool {
    let has_v2 = text.lines().any(|l| {
        let l = l.trim();
        l.starts_with("version") && l.split('=').nth(1).map(str::trim) == Some("2")
    });
    !text.trim().is_empty() && !has_v2
}

/// Adds hull's runtime to the containerd config at `path` (created if missing).
pub fn install(path: &Path, hull_config: &Path) -> Result<Outcome, InstallError> {
    let io = |source| InstallError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let Some(new) = add_runtime(&text, hull_config) else {
        return Ok(Outcome::AlreadyThere);
    };
    if is_version1(&text) {
        return Err(InstallError::Version1(path.display().to_string()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("toml.hull-tmp");
    std::fs::write(&tmp, new).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(Outcome::Added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_and_valid_toml() {
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("etc/containerd/config.toml");
        let hc = Path::new("/etc/hull/config.toml");
        assert_eq!(install(&p, hc).expect("create"), Outcome::Added);
        assert_eq!(install(&p, hc).expect("again"), Outcome::AlreadyThere);
        let text = std::fs::read_to_string(&p).expect("read");
        let v: toml::Value = toml::from_str(&text).expect("valid TOML");
        let hull = &v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["hull"];
        assert_eq!(hull["runtime_type"].as_str(), Some("io.containerd.hull.v2"));
        assert_eq!(
            hull["options"]["ConfigPath"].as_str(),
            Some("/etc/hull/config.toml")
        );
        // An existing v2 config keeps its content.
        let p2 = t.path().join("c2.toml");
        std::fs::write(&p2, "version = 2\n[grpc]\n  address = \"/x.sock\"").expect("write");
        assert_eq!(install(&p2, hc).expect("add"), Outcome::Added);
        let v: toml::Value =
            toml::from_str(&std::fs::read_to_string(&p2).expect("read")).expect("toml");
        assert_eq!(v["grpc"]["address"].as_str(), Some("/x.sock"));
        // A version 1 config is refused by name.
        let p3 = t.path().join("c3.toml");
        std::fs::write(&p3, "[plugins.cri]\n").expect("write");
        let e = install(&p3, hc).expect_err("v1");
        assert!(e.to_string().contains("version 1"), "{e}");
    }

    #[test]
    fn the_hull_config_is_the_defaults_commented_and_never_overwritten() {
        use crate::config::Config;
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("etc/hull/config.toml");
        assert_eq!(
            write_hull_config(&p).expect("write"),
            ConfigOutcome::Written
        );
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(text, HULL_CONFIG_TEMPLATE);
        // As written it changes nothing.
        let c = Config::load(Some(&p)).expect("loads");
        let d = Config::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
        // Uncommented, every key is one hull knows, with its default value.
        let uncommented: String = text
            .lines()
            .filter(|l| l.starts_with("# ") && (l.contains('=') || l.starts_with("# [")))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let u = Config::parse(&uncommented, Path::new("uncommented")).expect("every key known");
        assert_eq!(format!("{:?}", u.hypervisor), format!("{:?}", d.hypervisor));
        assert_eq!(format!("{:?}", u.boot), format!("{:?}", d.boot));
        assert_eq!(format!("{:?}", u.jail), format!("{:?}", d.jail));
        assert_eq!(format!("{:?}", u.debug), format!("{:?}", d.debug));
        assert_eq!(
            (
                u.guest.vcpus,
                u.guest.memory_mib,
                &u.guest.agent_log,
                &u.guest.kernel_params
            ),
            (
                d.guest.vcpus,
                d.guest.memory_mib,
                &d.guest.agent_log,
                &d.guest.kernel_params
            )
        );
        // An existing file stays as it is.
        std::fs::write(&p, "[guest]\nmemory_mib = 512\n").expect("edit");
        assert_eq!(write_hull_config(&p).expect("again"), ConfigOutcome::Kept);
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "[guest]\nmemory_mib = 512\n"
        );
        assert_eq!(
            std::fs::read_dir(p.parent().expect("dir"))
                .expect("ls")
                .count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn setup_writes_the_config_the_runtime_names() {
        let t = tempfile::tempdir().expect("tmp");
        let ctd = t.path().join("containerd.toml");
        let hc = t.path().join("hull/config.toml");
        let r = setup(&ctd, &hc).expect("setup");
        assert_eq!(
            (r.runtime, r.config, r.hull_config.as_path()),
            (Outcome::Added, ConfigOutcome::Written, hc.as_path())
        );
        let text = std::fs::read_to_string(&ctd).expect("read");
        assert_eq!(registered_config_path(&text).as_deref(), Some(hc.as_path()));
        // Registered already (the config file lost): the file it names is written again.
        std::fs::remove_file(&hc).expect("rm");
        let r = setup(&ctd, Path::new("/nonexistent/elsewhere.toml")).expect("again");
        assert_eq!(
            (r.runtime, r.config, r.hull_config.as_path()),
            (Outcome::AlreadyThere, ConfigOutcome::Written, hc.as_path())
        );
        assert!(hc.exists());
        // A version 1 containerd config: refused before anything is written.
        let v1 = t.path().join("v1.toml");
        std::fs::write(&v1, "[plugins.cri]\n").expect("write");
        let hc2 = t.path().join("hull2/config.toml");
        let e = setup(&v1, &hc2).expect_err("v1");
        assert!(e.to_string().contains("version 1"), "{e}");
        assert!(!hc2.exists());
    }
}
