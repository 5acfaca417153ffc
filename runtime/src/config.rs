//! hull's configuration: `/etc/hull/config.toml`, with every default compiled in.
//!
//! Every field is optional in the file; what is absent takes the default documented
//! here. Unknown keys are refused, so a typo does not silently fall back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where hull looks for its configuration when no path is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hull/config.toml";

/// A config path for every hull process that is given none: the CLI, the shim (when
/// containerd's runtime options name none) and the pool's VMs, which inherit it from
/// containerd's environment.
pub const CONFIG_ENV: &str = "HULL_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config file {path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// Default of `hypervisor.host_overhead_mib`, measured (see
/// docs/containerd-and-kubernetes.md, "Memory accounting on the host"): QEMU under TCG with a 256 MiB guest, virtiofsd, vhost-device-vsock
/// and the shim, with margin.
pub const DEFAULT_HOST_OVERHEAD_MIB: u32 = 192;

/// Which hypervisor backend runs the VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// hull-vmm on hosts with hardware KVM, QEMU otherwise (see `hull check`).
    #[default]
    Auto,
    Qemu,
    HullVmm,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub guest: GuestConfig,
    pub boot: BootConfig,
    pub runtime: RuntimeConfig,
    pub debug: DebugConfig,
    pub policy: PolicyConfig,
    pub jail: JailConfig,
    pub rootfs: RootfsConfig,
    pub pool: PoolConfig,
    pub template: TemplateConfig,
}

/// VM templates (see `crate::template`; hull-vmm only): sandboxes start from a
/// snapshot of a VM booted to "agent ready" instead of booting.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateConfig {
    /// Restore sandboxes from templates (building one on a key's first need).
    pub enabled: bool,
    /// Where templates live; `<runtime.cache_dir>/templates` when unset.
    pub dir: Option<PathBuf>,
}

/// The warm pool (see `crate::pool`): VMs booted ahead of need, taken by new pods.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// How many idle, agent-ready VMs of the default size (`guest.vcpus`,
    /// `guest.memory_mib`) the node keeps for containerd's pods. 0: none of that size.
    pub size: u32,
    /// Other sizes kept ready (`[[pool.class]]`), for pods whose limits give their VM
    /// that size.
    pub class: Vec<PoolClass>,
}

/// One VM size of the pool and how many of it are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolClass {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub size: u32,
}

impl Config {
    /// `[template] dir`, or `<runtime.cache_dir>/templates`.
    pub fn template_dir(&self) -> PathBuf {
        self.template
            .dir
            .clone()
            .unwrap_or_else(|| self.runtime.cache_dir.join("templates"))
    }

    /// Every VM size the pool keeps, with its count (the default size first; sizes of
    /// count 0 left out).
    pub fn pool_classes(&self) -> Vec<PoolClass> {
        let default = PoolClass {
            vcpus: self.guest.vcpus,
            memory_mib: self.guest.memory_mib,
            size: self.pool.size,
        };
        let mut classes: Vec<PoolClass> = Vec::new();
        for c in std::iter::once(default).chain(self.pool.class.iter().copied()) {
            match classes
                .iter_mut()
                .find(|k| (k.vcpus, k.memory_mib) == (c.vcpus, c.memory_mib))
            {
                Some(k) => k.size += c.size,
                None => classes.push(c),
            }
        }
        classes.retain(|c| c.size > 0);
        classes
    }
}

/// The most pool VMs hull keeps (each holds its memory while idle).
pub const MAX_POOL_SIZE: u32 = 64;

/// Where a container's writes to its rootfs go (see docs/configuration.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WritableLayer {
    /// An overlay in the guest: the image (containerd's snapshot, over virtio-fs)
    /// read-only below, the writes on the pod's scratch disk (virtio-blk, ext4).
    #[default]
    GuestDisk,
    /// containerd's snapshot itself, written through virtio-fs on the host.
    Host,
}

/// The containers' root filesystems. Fixed per sandbox when it boots.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RootfsConfig {
    pub writable_layer: WritableLayer,
    /// Size of a pod's scratch disk, MiB: what all its containers may write. The file
    /// is sparse: the host's disk holds only what was written.
    pub scratch_size_mib: u64,
    /// Where scratch disks are made: a host filesystem with room (never a tmpfs,
    /// whose pages would be RAM).
    pub scratch_dir: PathBuf,
}

impl Default for RootfsConfig {
    fn default() -> Self {
        RootfsConfig {
            writable_layer: WritableLayer::GuestDisk,
            scratch_size_mib: 10 * 1024,
            scratch_dir: default_scratch_dir(),
        }
    }
}

/// The agent policy sent at CreateSandbox (see docs/policy.md). Fixed per
/// sandbox: the agent seals its policy after CreateSandbox.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// A policy document (TOML, e.g. guest-image/policy/strict.toml). It can only
    /// tighten the policy baked into the guest image. None: only the baked one.
    pub file: Option<PathBuf>,
}

/// The jail of a sandbox's host processes (see `crate::jail` and
/// docs/threat-model.md). Fixed per sandbox when it boots.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JailConfig {
    /// Jail the VM's processes (needs root).
    pub enabled: bool,
    /// First uid (and gid) of the range each sandbox takes one from. Pick a range no
    /// user, `/etc/subuid` entry or container manager uses.
    pub uid_start: u32,
    /// Size of that range: how many sandboxes may run at once.
    pub uid_count: u32,
    /// One lock file per leased uid, shared by every hull process on the host.
    pub lease_dir: PathBuf,
    /// RLIMIT_NOFILE of a jailed process.
    pub nofile: u64,
    /// RLIMIT_MEMLOCK of a jailed process, MiB.
    pub memlock_mib: u64,
    /// RLIMIT_NPROC of a jailed process (counts the threads of every process of the
    /// sandbox's uid).
    pub nproc: u64,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            enabled: true,
            uid_start: DEFAULT_JAIL_UID_START,
            uid_count: 65536,
            lease_dir: PathBuf::from("/run/hull-jail/uids"),
            nofile: 4096,
            memlock_mib: 64,
            nproc: 1024,
        }
    }
}

/// Default of `jail.uid_start`: above the 16-bit range, the `/etc/subuid` blocks
/// `useradd` hands out (100000 + 65536 n) for the first few thousand users, and
/// systemd-nspawn's dynamic range (524288..1879048191).
pub const DEFAULT_JAIL_UID_START: u32 = 1_900_000_000;

/// Debugging aids, off by default. Fixed per sandbox when it boots.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Let `hull debug exec` run commands in the guest itself, outside any container
    /// (the agent is told at CreateSandbox and refuses debug processes otherwise).
    pub exec: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    pub backend: BackendChoice,
    /// QEMU binary (a name is looked up in PATH).
    pub qemu: PathBuf,
    /// vhost-user vsock backend (rust-vmm's vhost-device-vsock).
    pub vhost_vsock: PathBuf,
    /// vhost-user-fs backend.
    pub virtiofsd: PathBuf,
    /// hull's own VMM binary (`vmm/src/bin/hull-vmm.rs`).
    pub hull_vmm: PathBuf,
    /// Host memory (MiB) a VM's processes use on top of the guest's memory: the
    /// hypervisor (QEMU's TCG code buffer, its own heap), virtiofsd,
    /// vhost-device-vsock and the shim. A pod's cgroup that hull creates is limited to
    /// guest memory + this; under a limit the host already set, the VM gets at most
    /// limit - this.
    pub host_overhead_mib: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestConfig {
    /// Guest kernel: an ELF vmlinux (PVH entry) or a bzImage.
    pub kernel: PathBuf,
    /// Initramfs whose /init is hull-agent.
    pub initrd: PathBuf,
    /// Extra kernel command-line parameters, appended to hull's own.
    pub kernel_params: String,
    /// vCPUs of a VM when the workload does not ask for more.
    pub vcpus: u32,
    /// Guest memory in MiB when the workload does not ask for more.
    pub memory_mib: u32,
    /// Guest log level of the agent (`hull.log=` on the kernel command line).
    pub agent_log: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootConfig {
    /// Seconds from launch until the kernel must have printed its banner.
    pub kernel_timeout_secs: f64,
    /// Seconds from launch until the agent must have started (its first console line).
    pub init_timeout_secs: f64,
    /// Seconds from launch until the agent must have announced itself over vsock.
    pub agent_timeout_secs: f64,
    /// Seconds an agent request may take before it fails (long-poll requests excepted).
    pub request_timeout_secs: f64,
    /// Seconds the VM gets to power off after DestroySandbox before it is killed.
    pub shutdown_timeout_secs: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Per-VM state (sockets, console log) lives in `<state_dir>/vms/<id>/`.
    pub state_dir: PathBuf,
    /// Guest images built by `guest-image/build`.
    pub cache_dir: PathBuf,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            backend: BackendChoice::Auto,
            qemu: PathBuf::from("qemu-system-x86_64"),
            vhost_vsock: PathBuf::from("vhost-device-vsock"),
            virtiofsd: PathBuf::from("virtiofsd"),
            hull_vmm: PathBuf::from("hull-vmm"),
            host_overhead_mib: DEFAULT_HOST_OVERHEAD_MIB,
        }
    }
}

impl Default for GuestConfig {
    fn default() -> Self {
        let cache = default_cache_dir();
        GuestConfig {
            kernel: cache.join("vmlinux"),
            initrd: cache.join("initramfs.cpio"),
            kernel_params: String::new(),
            vcpus: 1,
            memory_mib: 256,
            agent_log: "info".to_string(),
        }
    }
}

impl Default for BootConfig {
    fn default() -> Self {
        // Generous: under TCG on a loaded 2-core machine a boot that normally takes 1 s
        // can take several. Hardware KVM boots in a fraction of these.
        BootConfig {
            kernel_timeout_secs: 20.0,
            init_timeout_secs: 40.0,
            agent_timeout_secs: 60.0,
            request_timeout_secs: 30.0,
            shutdown_timeout_secs: 10.0,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            state_dir: default_state_dir(),
            cache_dir: default_cache_dir(),
        }
    }
}

impl BootConfig {
    pub fn kernel_timeout(&self) -> Duration {
        secs(self.kernel_timeout_secs)
    }
    pub fn init_timeout(&self) -> Duration {
        secs(self.init_timeout_secs)
    }
    pub fn agent_timeout(&self) -> Duration {
        secs(self.agent_timeout_secs)
    }
    pub fn request_timeout(&self) -> Duration {
        secs(self.request_timeout_secs)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        secs(self.shutdown_timeout_secs)
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

/// The config file [`Config::load`] reads for `path`.
pub fn source_path(path: Option<&Path>) -> PathBuf {
    match (path, std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty())) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

impl Config {
    /// Loads `path`, else `$HULL_CONFIG`, else the default location (its defaults when
    /// that file is absent).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = source_path(path);
        let explicit = path != Path::new(DEFAULT_CONFIG_PATH);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default())
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Config::parse(&text, &path)
    }

    /// Parses a config file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |what: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        if self.guest.vcpus == 0 || self.guest.vcpus > 255 {
            return Err(invalid(format!(
                "guest.vcpus = {} is out of range (1..=255)",
                self.guest.vcpus
            )));
        }
        if self.guest.memory_mib < 64 {
            return Err(invalid(format!(
                "guest.memory_mib = {} is too small (at least 64)",
                self.guest.memory_mib
            )));
        }
        let b = &self.boot;
        for (name, v) in [
            ("boot.kernel_timeout_secs", b.kernel_timeout_secs),
            ("boot.init_timeout_secs", b.init_timeout_secs),
            ("boot.agent_timeout_secs", b.agent_timeout_secs),
            ("boot.request_timeout_secs", b.request_timeout_secs),
            ("boot.shutdown_timeout_secs", b.shutdown_timeout_secs),
        ] {
            if !(v.is_finite() && v > 0.0 && v < 3600.0) {
                return Err(invalid(format!(
                    "{name} = {v} must be between 0 and 3600 seconds"
                )));
            }
        }
        if let Some(f) = &self.policy.file {
            if f.as_os_str().is_empty() {
                return Err(invalid(
                    "policy.file is empty (leave it out for the baked policy only)".into(),
                ));
            }
        }
        let r = &self.rootfs;
        if r.scratch_size_mib < 64 || r.scratch_size_mib > 16 * 1024 * 1024 {
            return Err(invalid(format!(
                "rootfs.scratch_size_mib = {} is out of range (64 MiB to 16 TiB)",
                r.scratch_size_mib
            )));
        }
        let pooled: u32 = self.pool_classes().iter().map(|c| c.size).sum();
        if pooled > MAX_POOL_SIZE {
            return Err(invalid(format!(
                "the pool's sizes add up to {pooled} VMs (pool.size and every [[pool.class]] size): at most {MAX_POOL_SIZE}"
            )));
        }
        for c in &self.pool.class {
            if c.vcpus == 0 || c.vcpus > 255 || c.memory_mib < 64 {
                return Err(invalid(format!(
                    "[[pool.class]] vcpus = {}, memory_mib = {}: vcpus must be 1-255 and memory_mib at least 64",
                    c.vcpus, c.memory_mib
                )));
            }
        }
        if !r.scratch_dir.is_absolute() {
            return Err(invalid(format!(
                "rootfs.scratch_dir = {:?} must be an absolute path",
                r.scratch_dir
            )));
        }
        let j = &self.jail;
        if j.enabled {
            if j.uid_count == 0 {
                return Err(invalid(
                    "jail.uid_count = 0: the jail has no uid range to give sandboxes (set jail.uid_start and jail.uid_count, or jail.enabled = false)".into(),
                ));
            }
            if j.uid_start == 0 || j.uid_start.checked_add(j.uid_count).is_none() {
                return Err(invalid(format!(
                    "jail uid range {} + {} must start above 0 (root) and end below 2^32",
                    j.uid_start, j.uid_count
                )));
            }
            if j.nofile < 64 || j.nproc < 16 {
                return Err(invalid(format!(
                    "jail.nofile = {} (at least 64) and jail.nproc = {} (at least 16) are too small for a VM",
                    j.nofile, j.nproc
                )));
            }
        }
        Ok(())
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `$HULL_CACHE_DIR`, else `/var/cache/hull` for root, else `$XDG_CACHE_HOME/hull`.
/// guest-image/build uses the same rule.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HULL_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if is_root() {
        return PathBuf::from("/var/cache/hull");
    }
    xdg_dir("XDG_CACHE_HOME", ".cache").join("hull")
}

/// `/var/lib/hull/scratch` for root, else `scratch` in the cache dir (on disk, where
/// the state dir is often a tmpfs).
pub fn default_scratch_dir() -> PathBuf {
    if is_root() {
        PathBuf::from("/var/lib/hull/scratch")
    } else {
        default_cache_dir().join("scratch")
    }
}

/// `$HULL_STATE_DIR`, else `/run/hull` for root, else `$XDG_RUNTIME_DIR/hull`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HULL_STATE_DIR") {
        return PathBuf::from(d);
    }
    if is_root() {
        return PathBuf::from("/run/hull");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("hull"),
        None => std::env::temp_dir().join(format!("hull-{}", nix::unistd::geteuid())),
    }
}

fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
            PathBuf::from(home).join(fallback)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("x.toml")).expect("empty config parses");
        assert_eq!(c.guest.vcpus, 1);
        assert_eq!(c.hypervisor.backend, BackendChoice::Auto);
    }

    #[test]
    fn pool_classes_default_size_first_merged_and_bounded() {
        let c = Config::parse("", Path::new("x.toml")).expect("empty");
        assert!(c.pool_classes().is_empty(), "no pool by default");
        let c = Config::parse(
            "[pool]\nsize = 2\n[[pool.class]]\nvcpus = 2\nmemory_mib = 512\nsize = 1\n[[pool.class]]\nvcpus = 1\nmemory_mib = 256\nsize = 1\n[[pool.class]]\nvcpus = 4\nmemory_mib = 1024\nsize = 0\n",
            Path::new("x.toml"),
        )
        .expect("classes");
        let got: Vec<(u32, u32, u32)> = c
            .pool_classes()
            .iter()
            .map(|k| (k.vcpus, k.memory_mib, k.size))
            .collect();
        assert_eq!(got, vec![(1, 256, 3), (2, 512, 1)]);
        let e = Config::parse("[pool]\nsize = 65\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("at most 64"), "{e}");
        let e = Config::parse(
            "[[pool.class]]\nvcpus = 0\nmemory_mib = 512\nsize = 1\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("[[pool.class]]"), "{e}");
        assert!(Config::parse("[pool]\nsizes = 1\n", Path::new("x.toml")).is_err());
    }

    #[test]
    fn policy_file_is_optional_and_not_empty() {
        let c = Config::parse("", Path::new("x.toml")).expect("empty");
        assert!(c.policy.file.is_none());
        let c = Config::parse(
            "[policy]\nfile = \"/etc/hull/strict.toml\"\n",
            Path::new("x.toml"),
        )
        .expect("policy");
        assert_eq!(
            c.policy.file.as_deref(),
            Some(Path::new("/etc/hull/strict.toml"))
        );
        let e = Config::parse("[policy]\nfile = \"\"\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("policy.file is empty"), "{e}");
        assert!(Config::parse("[policy]\nfiles = \"x\"\n", Path::new("x.toml")).is_err());
    }

    #[test]
    fn jail_is_on_by_default_and_a_missing_uid_range_is_named() {
        let c = Config::parse("", Path::new("x.toml")).expect("empty");
        assert!(c.jail.enabled);
        assert_eq!(c.jail.uid_start, DEFAULT_JAIL_UID_START);
        let e =
            Config::parse("[jail]\nuid_count = 0\n", Path::new("x.toml")).expect_err("no range");
        assert!(e.to_string().contains("jail.uid_count = 0"), "{e}");
        let e = Config::parse("[jail]\nuid_start = 0\n", Path::new("x.toml")).expect_err("root");
        assert!(e.to_string().contains("above 0"), "{e}");
        let c = Config::parse(
            "[jail]\nenabled = false\nuid_count = 0\n",
            Path::new("x.toml"),
        )
        .expect("off");
        assert!(!c.jail.enabled);
    }

    #[test]
    fn debug_exec_is_off_unless_enabled() {
        let c = Config::parse("", Path::new("x.toml")).expect("empty");
        assert!(!c.debug.exec);
        let c = Config::parse("[debug]\nexec = true\n", Path::new("x.toml")).expect("debug");
        assert!(c.debug.exec);
        let e =
            Config::parse("[debug]\nshell = true\n", Path::new("x.toml")).expect_err("unknown key");
        assert!(e.to_string().contains("shell"), "{e}");
    }

    #[test]
    fn partial_file_overrides_only_what_it_names() {
        let c = Config::parse(
            "[guest]\nmemory_mib = 512\n[hypervisor]\nbackend = \"qemu\"\n",
            Path::new("x.toml"),
        )
        .expect("config parses");
        assert_eq!(c.guest.memory_mib, 512);
        assert_eq!(c.guest.vcpus, 1);
        assert_eq!(c.hypervisor.backend, BackendChoice::Qemu);
    }

    #[test]
    fn backend_choices_parse_and_unknown_ones_are_refused() {
        for (text, want) in [
            ("auto", BackendChoice::Auto),
            ("qemu", BackendChoice::Qemu),
            ("hull-vmm", BackendChoice::HullVmm),
        ] {
            let c = Config::parse(
                &format!("[hypervisor]\nbackend = \"{text}\"\nhull_vmm = \"/opt/hull-vmm\"\n"),
                Path::new("x.toml"),
            )
            .expect("config parses");
            assert_eq!(c.hypervisor.backend, want);
            assert_eq!(c.hypervisor.hull_vmm, PathBuf::from("/opt/hull-vmm"));
        }
        let e = Config::parse(
            "[hypervisor]\nbackend = \"firecracker\"\n",
            Path::new("x.toml"),
        )
        .expect_err("unknown backend");
        assert!(e.to_string().contains("firecracker"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let e = Config::parse("[guest]\nmemroy_mib = 512\n", Path::new("/etc/x.toml"))
            .expect_err("typo must be refused");
        let msg = e.to_string();
        assert!(msg.contains("memroy_mib"), "{msg}");
        assert!(msg.contains("/etc/x.toml"), "{msg}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for text in [
            "[guest]\nvcpus = 0\n",
            "[guest]\nmemory_mib = 8\n",
            "[boot]\nagent_timeout_secs = -1.0\n",
        ] {
            assert!(Config::parse(text, Path::new("x")).is_err(), "{text}");
        }
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/hull.toml"))).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/hull.toml"));
    }
}
