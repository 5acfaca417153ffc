//! PID 1 bring-up: the guest's base filesystems and cgroup v2 controllers.
//!
//! The mounts are data ([`early_mounts`], [`base_mounts`]) applied through the small
//! [`MountOps`] trait, so their order and options are unit tested with a recording fake
//! (see `tests.rs`) and only [`HostOps`] touches the real system.

mod cgroup;

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use tracing::{debug, info, info_span, warn};

pub use cgroup::{enable_controllers, CgroupError, CGROUP_ROOT};

/// One filesystem to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
    /// Mode of the target directory if it has to be created.
    pub dir_mode: u32,
    /// Whether a failure stops the agent (else it is logged and bring-up goes on).
    pub required: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("create mount point {path}: {source}")]
    Mkdir { path: PathBuf, source: io::Error },
    #[error("mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: io::Error,
    },
}

/// The system calls bring-up needs; the real ones are [`HostOps`].
pub trait MountOps {
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Whether something is already mounted on `path`.
    fn is_mountpoint(&self, path: &Path) -> io::Result<bool>;
    fn mount(&self, spec: &MountSpec) -> io::Result<()>;
}

/// [`MountOps`] on the running system.
pub struct HostOps;

impl MountOps for HostOps {
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
    }

    fn is_mountpoint(&self, path: &Path) -> io::Result<bool> {
        // A mount point sits on a different device than its parent directory. (The mount
        // table cannot be read yet: /proc may not be mounted.)
        let parent = path.parent().unwrap_or(Path::new("/"));
        Ok(std::fs::metadata(path)?.dev() != std::fs::metadata(parent)?.dev())
    }

    fn mount(&self, spec: &MountSpec) -> io::Result<()> {
        nix::mount::mount(
            Some(spec.source),
            spec.target,
            Some(spec.fstype),
            spec.flags,
            spec.data,
        )
        .map_err(io::Error::from)
    }
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// What the agent needs before anything else: /dev for the console, /proc for the
/// kernel command line (which sets the log level).
pub fn early_mounts() -> Vec<MountSpec> {
    vec![
        MountSpec {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
            dir_mode: 0o755,
            required: true,
        },
        MountSpec {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: NOSUID_NODEV_NOEXEC,
            data: None,
            dir_mode: 0o555,
            required: true,
        },
    ]
}

/// The rest of the guest's base filesystems, in mount order.
pub fn base_mounts() -> Vec<MountSpec> {
    let m = |source, target, fstype, flags, data, dir_mode, required| MountSpec {
        source,
        target,
        fstype,
        flags,
        data,
        dir_mode,
        required,
    };
    vec![
        m(
            "sysfs",
            "/sys",
            "sysfs",
            NOSUID_NODEV_NOEXEC,
            None,
            0o555,
            true,
        ),
        m(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
            0o755,
            true,
        ),
        m(
            "shm",
            "/dev/shm",
            "tmpfs",
            NOSUID_NODEV,
            Some("mode=1777"),
            0o1777,
            true,
        ),
        m(
            "tmpfs",
            "/run",
            "tmpfs",
            NOSUID_NODEV,
            Some("mode=0755"),
            0o755,
            true,
        ),
        m(
            "tmpfs",
            "/tmp",
            "tmpfs",
            NOSUID_NODEV,
            Some("mode=1777"),
            0o1777,
            true,
        ),
        // Without cgroups the agent still answers (health, version) but containers fail
        // later with a clear error, so this one is not fatal.
        m(
            "cgroup2",
            CGROUP_ROOT,
            "cgroup2",
            NOSUID_NODEV_NOEXEC,
            None,
            0o555,
            false,
        ),
    ]
}

/// Mounts `specs` in order. Targets that are already mount points are left alone (the
/// kernel may have mounted devtmpfs itself). Failures of optional mounts are logged.
pub fn mount_all(ops: &dyn MountOps, specs: &[MountSpec]) -> Result<(), InitError> {
    for spec in specs {
        let _span = info_span!("mount", target = spec.target).entered();
        match mount_one(ops, spec) {
            Ok(()) => {}
            Err(e) if !spec.required => warn!(error = %e, "optional mount failed"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn mount_one(ops: &dyn MountOps, spec: &MountSpec) -> Result<(), InitError> {
    let target = Path::new(spec.target);
    ops.mkdir_all(target, spec.dir_mode)
        .map_err(|source| InitError::Mkdir {
            path: target.to_path_buf(),
            source,
        })?;
    if ops.is_mountpoint(target).unwrap_or(false) {
        debug!("already mounted");
        return Ok(());
    }
    ops.mount(spec).map_err(|source| InitError::Mount {
        fstype: spec.fstype,
        target: spec.target,
        source,
    })
}

/// Conventional /dev symlinks that devtmpfs does not create. Best effort.
const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("/proc/kcore", "/dev/core"),
];

/// Everything PID 1 sets up after [`early_mounts`] and the console: base mounts, /dev links, cgroup
/// controllers. Only required mounts are fatal.
pub fn bring_up(ops: &dyn MountOps) -> Result<(), InitError> {
    mount_all(ops, &base_mounts())?;
    for (target, link) in DEV_LINKS {
        if let Err(e) = std::os::unix::fs::symlink(target, link) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                debug!(link, error = %e, "could not create /dev link");
            }
        }
    }
    raise_limits();
    let _span = info_span!("cgroup_controllers").entered();
    match enable_controllers(Path::new(CGROUP_ROOT)) {
        Ok(enabled) => info!(controllers = %enabled.join(" "), "cgroup v2 controllers enabled"),
        Err(e) => warn!(error = %e, "cgroup v2 controllers not enabled"),
    }
    Ok(())
}

/// The resource limits every container starts from, as under containerd on a host
/// (systemd's `LimitNOFILE=infinity`, `LimitNPROC=infinity`): the kernel gives PID 1 a
/// process limit of half its thread maximum (910 in a 256 MiB guest) and 4096 files,
/// and a container in a user namespace cannot raise a hard limit above what it
/// inherits, so a spec's higher `rlimits` would fail there with EPERM where runc runs it.
fn raise_limits() {
    use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    for (resource, name, limit) in [
        (Resource::RLIMIT_NPROC, "RLIMIT_NPROC", RLIM_INFINITY),
        (Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE", nr_open),
    ] {
        if let Err(e) = setrlimit(resource, limit, limit) {
            warn!(limit = name, error = %e, "could not raise the limit");
        }
    }
}

#[cfg(test)]
mod tests;
