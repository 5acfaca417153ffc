//! `hull install-containerd`: registers hull as a runtime of containerd's CRI plugin
//! (runtime class handler `hull`, runtime `io.containerd.hull.v2`) in containerd's
//! config file, and writes hull's own config file, which that registration names
//! (`ConfigPath`), with every default, commented, unless one is there already.
//! Idempotent: a containerd config that already has the `hull` runtime is left
//! untouched, and an existing hull config is never overwritten.
//!
//! containerd's config is edited as a document, not rewritten: its comments, key
//! order and quoting stay as they were (`toml_edit`). Version 2 configs (containerd
//! 1.5 to 1.7, also read by 2.x) keep CRI's runtimes under
//! `plugins."io.containerd.grpc.v1.cri".containerd.runtimes`; version 3 configs
//! (containerd 2.x) under `plugins."io.containerd.cri.v1.runtime".containerd.runtimes`.
//! A version 1 config (no `version` key) is refused: `containerd config migrate`
//! turns it into a current one.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table};

pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The runtime type containerd resolves to `containerd-shim-hull-v2`.
pub const RUNTIME_TYPE: &str = "io.containerd.hull.v2";
/// The runtime's name in CRI: the RuntimeClass handler.
pub const HANDLER: &str = "hull";

/// The keys from the document root to CRI's runtimes table, in a config of `version`.
pub fn cri_runtimes_path(version: ConfigVersion) -> [&'static str; 4] {
    let plugin = match version {
        ConfigVersion::V2 => "io.containerd.grpc.v1.cri",
        ConfigVersion::V3 => "io.containerd.cri.v1.runtime",
    };
    ["plugins", plugin, "containerd", "runtimes"]
}

/// The containerd config versions hull edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigVersion {
    /// containerd 1.5 to 1.7 (2.x reads it too, migrating it in memory).
    V2,
    /// containerd 2.x.
    V3,
}

impl ConfigVersion {
    /// The version a new config for this containerd gets: 3 for containerd 2.x and
    /// later, 2 before.
    pub fn for_containerd_major(major: u32) -> ConfigVersion {
        if major >= 2 {
            ConfigVersion::V3
        } else {
            ConfigVersion::V2
        }
    }

    fn number(self) -> i64 {
        match self {
            ConfigVersion::V2 => 2,
            ConfigVersion::V3 => 3,
        }
    }
}

/// The major version of the containerd at `binary` (`containerd --version`), or None
/// if it cannot be run or says something unexpected. Waits at most 10 s.
pub fn containerd_major(binary: &Path) -> Option<u32> {
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("--version");
    let out = crate::host::output_within(&mut cmd, std::time::Duration::from_secs(10)).ok()?;
    parse_containerd_major(&String::from_utf8_lossy(&out.stdout))
}

/// `containerd github.com/containerd/containerd/v2 2.1.9+unknown` -> 2.
fn parse_containerd_major(version_output: &str) -> Option<u32> {
    let version = version_output.split_whitespace().nth(2)?;
    let version = version.strip_prefix('v').unwrap_or(version);
    version.split('.').next()?.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {error}")]
    Edit { path: String, error: EditError },
}

/// Why a containerd config text cannot take hull's runtime.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("not TOML: {0}")]
    NotToml(String),
    #[error(
        "a version 1 containerd config (it has no `version = 2` or `version = 3`); \
         hull edits version 2 and 3 configs: run `containerd config migrate` first"
    )]
    Version1,
    #[error("containerd config version {0}: hull edits versions 2 and 3 only")]
    UnknownVersion(String),
    #[error("`{0}` is not a table; hull's runtime goes in a table there")]
    NotATable(String),
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
    let doc: DocumentMut = text.parse().ok()?;
    let version = config_version(&doc, text, ConfigVersion::V2).ok()?;
    let mut item = doc.as_item();
    for key in cri_runtimes_path(version) {
        item = item.get(key)?;
    }
    let p = item
        .get(HANDLER)?
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
/// A missing or empty containerd config is created as version `fresh`.
pub fn setup(
    containerd_config: &Path,
    hull_config: &Path,
    fresh: ConfigVersion,
) -> Result<SetupReport, InstallError> {
    let existing = read_config(containerd_config)?;
    // Refused before anything is written.
    add_runtime(&existing, hull_config, fresh).map_err(|error| InstallError::Edit {
        path: containerd_config.display().to_string(),
        error,
    })?;
    let target = registered_config_path(&existing).unwrap_or_else(|| hull_config.to_path_buf());
    let config = write_hull_config(&target)?;
    let runtime = install(containerd_config, &target, fresh)?;
    Ok(SetupReport {
        runtime,
        hull_config: target,
        config,
    })
}

fn read_config(path: &Path) -> Result<String, InstallError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(InstallError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The version of the config `doc` (parsed from `text`); `fresh` for an empty one.
fn config_version(
    doc: &DocumentMut,
    text: &str,
    fresh: ConfigVersion,
) -> Result<ConfigVersion, EditError> {
    match doc.get("version") {
        None if text.trim().is_empty() => Ok(fresh),
        None => Err(EditError::Version1),
        Some(v) => match v.as_integer() {
            Some(1) => Err(EditError::Version1),
            Some(2) => Ok(ConfigVersion::V2),
            Some(3) => Ok(ConfigVersion::V3),
            _ => Err(EditError::UnknownVersion(v.to_string().trim().to_string())),
        },
    }
}

/// The config text with hull's runtime added (a new config of version `fresh` if
/// `text` is empty), or None if it is already there. Everything else in the text,
/// comments included, stays as it was.
pub fn add_runtime(
    text: &str,
    hull_config: &Path,
    fresh: ConfigVersion,
) -> Result<Option<String>, EditError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::NotToml(e.to_string()))?;
    let version = config_version(&doc, text, fresh)?;
    if text.trim().is_empty() {
        doc.insert("version", toml_edit::value(version.number()));
    }
    let mut table = doc.as_table_mut();
    let mut walked = Vec::new();
    for key in cri_runtimes_path(version) {
        walked.push(key);
        let item = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            // Only the innermost table needs a header of its own.
            t.set_implicit(true);
            Item::Table(t)
        });
        table = item
            .as_table_mut()
            .ok_or_else(|| EditError::NotATable(walked.join(".")))?;
    }
    if table.contains_key(HANDLER) {
        return Ok(None);
    }
    let mut options = Table::new();
    options.insert(
        "ConfigPath",
        toml_edit::value(hull_config.display().to_string()),
    );
    let mut hull = Table::new();
    hull.decor_mut().set_prefix(
        "\n# hull: containers in microVMs (RuntimeClass handler \"hull\"); \
         added by `hull install-containerd`\n",
    );
    hull.insert("runtime_type", toml_edit::value(RUNTIME_TYPE));
    hull.insert("options", Item::Table(options));
    table.insert(HANDLER, Item::Table(hull));
    Ok(Some(doc.to_string()))
}

/// Adds hull's runtime to the containerd config at `path` (created as version
/// `fresh` if missing). The file is replaced whole (rename), never half-written.
pub fn install(
    path: &Path,
    hull_config: &Path,
    fresh: ConfigVersion,
) -> Result<Outcome, InstallError> {
    let io = |source| InstallError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = read_config(path)?;
    let added = add_runtime(&text, hull_config, fresh).map_err(|error| InstallError::Edit {
        path: path.display().to_string(),
        error,
    })?;
    let Some(new) = added else {
        return Ok(Outcome::AlreadyThere);
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("toml.hull-tmp");
    std::fs::write(&tmp, new).map_err(io)?;
    if let Ok(meta) = std::fs::metadata(path) {
        // The config keeps its mode (it may hold credentials).
        std::fs::set_permissions(&tmp, meta.permissions()).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(Outcome::Added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_versions_are_read_from_its_version_line() {
        for (line, major) in [
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3",
                1,
            ),
            (
                "containerd github.com/containerd/containerd/v2 2.1.9+unknown ",
                2,
            ),
            ("containerd containerd.io v2.0.0 207ad711", 2),
        ] {
            assert_eq!(parse_containerd_major(line), Some(major), "{line}");
        }
        assert_eq!(parse_containerd_major("containerd"), None);
        assert_eq!(containerd_major(Path::new("/nonexistent/containerd")), None);
    }

    fn runtime_at(v: &toml::Value, version: ConfigVersion) -> &toml::Value {
        let mut item = v;
        for key in cri_runtimes_path(version) {
            item = &item[key];
        }
        &item[HANDLER]
    }

    #[test]
    fn idempotent_and_valid_toml() {
        let t = tempfile::tempdir().expect("tmp");
        let hc = Path::new("/etc/hull/config.toml");
        for (fresh, version) in [(ConfigVersion::V2, 2), (ConfigVersion::V3, 3)] {
            let p = t
                .path()
                .join(format!("v{version}/etc/containerd/config.toml"));
            assert_eq!(install(&p, hc, fresh).expect("create"), Outcome::Added);
            assert_eq!(
                install(&p, hc, fresh).expect("again"),
                Outcome::AlreadyThere
            );
            let text = std::fs::read_to_string(&p).expect("read");
            let v: toml::Value = toml::from_str(&text).expect("valid TOML");
            assert_eq!(v["version"].as_integer(), Some(version), "{text}");
            let hull = runtime_at(&v, fresh);
            assert_eq!(hull["runtime_type"].as_str(), Some(RUNTIME_TYPE), "{text}");
            assert_eq!(
                hull["options"]["ConfigPath"].as_str(),
                Some("/etc/hull/config.toml")
            );
            assert_eq!(registered_config_path(&text).as_deref(), Some(hc));
        }
    }

    #[test]
    fn an_existing_config_keeps_its_comments_order_and_quoting() {
        let hc = Path::new("/etc/hull/config.toml");
        // As containerd 2.x's `config default` writes it (single-quoted plugin ids).
        let v3 = "version = 3\n# the socket\n[grpc]\n  address = '/x.sock' # here\n\n\
                  [plugins]\n  [plugins.'io.containerd.cri.v1.runtime']\n    \
                  enable_selinux = false\n    [plugins.'io.containerd.cri.v1.runtime'.containerd]\n      \
                  default_runtime_name = 'runc'\n\n      \
                  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]\n\n        \
                  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n          \
                  runtime_type = 'io.containerd.runc.v2'\n";
        let out = add_runtime(v3, hc, ConfigVersion::V2)
            .expect("edits")
            .expect("added");
        assert!(
            out.starts_with(v3),
            "the text before is kept as it was:\n{out}"
        );
        assert!(out.contains("# hull: containers in microVMs"), "{out}");
        let v: toml::Value = toml::from_str(&out).expect("valid TOML");
        assert_eq!(
            runtime_at(&v, ConfigVersion::V3)["runtime_type"].as_str(),
            Some(RUNTIME_TYPE)
        );
        assert_eq!(v["grpc"]["address"].as_str(), Some("/x.sock"));
        assert_eq!(add_runtime(&out, hc, ConfigVersion::V2), Ok(None));

        // A version 2 config without any CRI table gets the tables it needs.
        let v2 = "version = 2\n[grpc]\n  address = \"/x.sock\"";
        let out = add_runtime(v2, hc, ConfigVersion::V3)
            .expect("edits")
            .expect("added");
        let v: toml::Value = toml::from_str(&out).expect("valid TOML");
        assert_eq!(
            runtime_at(&v, ConfigVersion::V2)["options"]["ConfigPath"].as_str(),
            Some("/etc/hull/config.toml"),
            "{out}"
        );
        assert_eq!(v["grpc"]["address"].as_str(), Some("/x.sock"));
    }

    #[test]
    fn configs_hull_cannot_edit_are_refused_by_what_is_wrong() {
        let hc = Path::new("/etc/hull/config.toml");
        let refused = |text: &str| add_runtime(text, hc, ConfigVersion::V3).expect_err(text);
        assert_eq!(refused("[plugins.cri]\n"), EditError::Version1);
        assert_eq!(refused("version = 1\n"), EditError::Version1);
        assert_eq!(
            refused("version = 4\n"),
            EditError::UnknownVersion("4".into())
        );
        assert!(matches!(refused("version = \n"), EditError::NotToml(_)));
        assert_eq!(
            refused("version = 2\n[plugins]\n\"io.containerd.grpc.v1.cri\" = 1\n"),
            EditError::NotATable("plugins.io.containerd.grpc.v1.cri".into())
        );
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("c.toml");
        std::fs::write(&p, "[plugins.cri]\n").expect("write");
        let e = install(&p, hc, ConfigVersion::V2).expect_err("v1");
        assert!(e.to_string().contains("version 1"), "{e}");
        assert!(e.to_string().contains("c.toml"), "names the file: {e}");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "[plugins.cri]\n",
            "left as it was"
        );
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
        let r = setup(&ctd, &hc, ConfigVersion::V2).expect("setup");
        assert_eq!(
            (r.runtime, r.config, r.hull_config.as_path()),
            (Outcome::Added, ConfigOutcome::Written, hc.as_path())
        );
        let text = std::fs::read_to_string(&ctd).expect("read");
        assert_eq!(registered_config_path(&text).as_deref(), Some(hc.as_path()));
        // Registered already (the config file lost): the file it names is written again.
        std::fs::remove_file(&hc).expect("rm");
        let r = setup(
            &ctd,
            Path::new("/nonexistent/elsewhere.toml"),
            ConfigVersion::V2,
        )
        .expect("again");
        assert_eq!(
            (r.runtime, r.config, r.hull_config.as_path()),
            (Outcome::AlreadyThere, ConfigOutcome::Written, hc.as_path())
        );
        assert!(hc.exists());
        // A version 1 containerd config: refused before anything is written.
        let v1 = t.path().join("v1.toml");
        std::fs::write(&v1, "[plugins.cri]\n").expect("write");
        let hc2 = t.path().join("hull2/config.toml");
        let e = setup(&v1, &hc2, ConfigVersion::V2).expect_err("v1");
        assert!(e.to_string().contains("version 1"), "{e}");
        assert!(!hc2.exists());
    }
}
