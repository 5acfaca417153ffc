//! The jail of a sandbox's host processes, modelled on Firecracker's jailer: what a
//! guest that takes over its kernel and then its hypervisor can reach on the host.
//!
//! Per sandbox (see docs/threat-model.md):
//! - a uid and gid of its own from `[jail] uid_start/uid_count` ([`ids`]), released
//!   when the sandbox's owner ends;
//! - `<state>/jail/`: `sock/` (owned by the sandbox uid, mode 0700) holds every socket
//!   between the VM's processes and hull; `<name>/` is the root of each jailed process:
//!   empty dirs and files that only serve as mount points, so nothing is ever mounted
//!   on the host and nothing is left when the process is gone;
//! - each jailed process (the hypervisor, vhost-device-vsock) gets, in its own mount
//!   namespace: `/usr` read-only (its shared libraries and QEMU's firmware; `/lib`,
//!   `/bin`... as the host's symlinks), its binary, the kernel and initrd read-only, the
//!   socket dir read-write, a tmpfs `/dev` with null/zero/random/urandom (and `kvm`,
//!   owned by the sandbox uid, for a hypervisor on KVM), `/proc` showing its own
//!   processes only; then `pivot_root`, the root read-only, rlimits, no capabilities
//!   (bounding set empty), the sandbox uid/gid, `no_new_privs` ([`setup`]);
//! - virtiofsd stays root (it serves files of any owner) inside its own namespace
//!   sandbox and seccomp filter, with `no_new_privs` and the rlimits;
//! - the cgroup: the shim's pod cgroup (inherited), or for `hull run` one of its own
//!   ([`run_cgroup`]).

pub mod ids;
pub mod run_cgroup;
mod setup;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use tokio::process::Command;

pub use ids::Lease;
use setup::{BindPlan, DevicePlan, Plan, RootPlan};

use crate::config::JailConfig;

/// Dir of a sandbox's state dir that holds its jail.
pub const JAIL_DIR: &str = "jail";
/// Dir of the jail that holds the VM's sockets.
pub const SOCK_DIR: &str = "sock";
/// Where a binary from outside `/usr` is mounted in its jail.
const EXE_DIR: &str = "/exe";
/// Host dirs that are symlinks into `/usr` on merged-/usr systems (mirrored as such),
/// or mounted read-only like `/usr` where they are real dirs.
const SYSTEM_DIRS: [&str; 5] = ["/usr", "/lib", "/lib64", "/bin", "/sbin"];

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("the jail ([jail] enabled = true, the default) needs root; hull runs as uid {0}. Run as root or set [jail] enabled = false")]
    NotRoot(u32),
    #[error(
        "no free uid for the sandbox's jail: all {count} uids from {start} ([jail] uid_start, uid_count) \
         are leased (leases in {dir}) or still have processes"
    )]
    NoFreeUid {
        start: u32,
        count: u32,
        dir: PathBuf,
    },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the jail cannot hold {0}: it must be an absolute path without `..` or NUL bytes")]
    BadPath(PathBuf),
    #[error("{0}")]
    Cgroup(#[from] crate::cgroup::CgroupError),
}

impl JailError {
    fn io_failed(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JailError {
        let path = path.to_path_buf();
        move |source| JailError::Io { what, path, source }
    }
}

/// Device nodes a jailed process may need besides null/zero/random/urandom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Devices {
    /// No more.
    Basic,
    /// `/dev/kvm`, opened by a hypervisor that uses KVM.
    Kvm,
}

/// A sandbox's jail. Dropping it releases the uid; the dir goes with the state dir.
#[derive(Debug)]
pub struct Jail {
    dir: PathBuf,
    sock_dir: PathBuf,
    lease: Lease,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
}

impl Jail {
    /// Leases a uid and creates `<state_dir>/jail/` with its socket dir.
    pub fn create(config: &JailConfig, state_dir: &Path, id: &str) -> Result<Jail, JailError> {
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            return Err(JailError::NotRoot(euid.as_raw()));
        }
        let lease = Lease::take(&config.lease_dir, config.uid_start, config.uid_count, id)?;
        let dir = state_dir.join(JAIL_DIR);
        mkdir(&dir, 0o711)?;
        let sock_dir = dir.join(SOCK_DIR);
        mkdir(&sock_dir, 0o700)?;
        let uid = lease.uid();
        std::os::unix::fs::chown(&sock_dir, Some(uid), Some(uid)).map_err(JailError::io_failed(
            "give the jail's socket dir to its uid:",
            &sock_dir,
        ))?;
        // Never above this process's own hard limit (raising it needs CAP_SYS_RESOURCE,
        // which a containerised "root" may lack).
        let rlimits = [
            (libc::RLIMIT_NOFILE, config.nofile),
            (
                libc::RLIMIT_MEMLOCK,
                config.memlock_mib.saturating_mul(1 << 20),
            ),
            (libc::RLIMIT_NPROC, config.nproc),
            // No core dump: it would hold guest memory.
            (libc::RLIMIT_CORE, 0),
        ]
        .into_iter()
        .map(|(r, v)| (r, v.min(hard_limit(r))))
        .collect();
        tracing::info!(uid, dir = %dir.display(), "sandbox jail created");
        Ok(Jail {
            dir,
            sock_dir,
            lease,
            rlimits,
        })
    }

    /// The sandbox's uid (also its gid).
    pub fn uid(&self) -> u32 {
        self.lease.uid()
    }

    /// Where the VM's sockets live (reachable by the jailed processes and by hull).
    pub fn sock_dir(&self) -> &Path {
        &self.sock_dir
    }

    /// Hands a socket hull created (or a root helper created) to the sandbox uid, so the
    /// jailed processes can connect to it.
    pub fn give(&self, path: &Path) -> Result<(), JailError> {
        std::os::unix::fs::chown(path, Some(self.uid()), Some(self.uid())).map_err(
            JailError::io_failed("give to the sandbox uid the socket", path),
        )
    }

    /// A command that runs `program` jailed, as the sandbox uid: `ro_files` (kernel,
    /// initrd) are readable at their own paths, the socket dir is writable, and nothing
    /// else of the host is there but `/usr`. `name` names its root dir.
    pub fn command(
        &self,
        name: &str,
        program: &Path,
        ro_files: &[&Path],
        devices: Devices,
    ) -> Result<Command, JailError> {
        // A missing binary is named by its host path (inside the jail it would be
        // /exe/<name>).
        let program = crate::host::find_binary(program).ok_or_else(|| JailError::Io {
            what: "run the binary",
            path: program.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let root = self.dir.join(name);
        mkdir(&root, 0o755)?;
        let mut binds = Vec::new();
        for sys in SYSTEM_DIRS {
            let host = Path::new(sys);
            match std::fs::symlink_metadata(host) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(host)
                        .map_err(JailError::io_failed("read the symlink", host))?;
                    let link = inside(&root, host)?;
                    // A second command for the same helper (a VM started again after
                    // a failed restore) finds the link made by the first.
                    let made = std::fs::read_link(&link).is_ok_and(|t| t == target);
                    if !made {
                        std::os::unix::fs::symlink(&target, &link)
                            .map_err(JailError::io_failed("create the symlink", &link))?;
                    }
                }
                Ok(m) if m.is_dir() => binds.push(bind(&root, host, host, true, false)?),
                _ => {}
            }
        }
        // The binary: where it is when it is under /usr, else at /exe/<name>.
        let exe_in_jail = if program.starts_with("/usr") {
            program.clone()
        } else {
            let file_name = program
                .file_name()
                .ok_or_else(|| JailError::BadPath(program.clone()))?;
            let at = Path::new(EXE_DIR).join(file_name);
            binds.push(bind(&root, &program, &at, false, false)?);
            at
        };
        for f in ro_files {
            binds.push(bind(&root, f, f, false, false)?);
        }
        binds.push(bind(&root, &self.sock_dir, &self.sock_dir, true, true)?);
        let dev_dir = inside(&root, Path::new("/dev"))?;
        mkdir(&dev_dir, 0o755)?;
        let proc_dir = inside(&root, Path::new("/proc"))?;
        mkdir(&proc_dir, 0o555)?;
        let mut nodes = vec![
            ("null", 1, 3, false),
            ("zero", 1, 5, false),
            ("random", 1, 8, false),
            ("urandom", 1, 9, false),
        ];
        if devices == Devices::Kvm {
            nodes.push(("kvm", 10, 232, true));
        }
        let devices = nodes
            .into_iter()
            .map(|(n, major, minor, owned)| {
                Ok(DevicePlan {
                    path: cstring(&dev_dir.join(n))?,
                    mode: if owned { 0o600 } else { 0o666 },
                    dev: libc::makedev(major, minor),
                    owned,
                })
            })
            .collect::<Result<Vec<_>, JailError>>()?;
        let plan = Plan {
            root: Some(RootPlan {
                root: cstring(&root)?,
                binds,
                dev_dir: cstring(&dev_dir)?,
                dev_opts: c"mode=755,size=64k,nr_inodes=32".to_owned(),
                devices,
                proc_dir: cstring(&proc_dir)?,
                proc_opts: c"hidepid=invisible,subset=pid".to_owned(),
                uid: self.uid(),
                gid: self.uid(),
                cwd: cstring(&self.sock_dir)?,
            }),
            rlimits: self.rlimits.clone(),
        };
        let mut cmd = Command::new(&exe_in_jail);
        cmd.arg0(&program);
        register(&mut cmd, plan);
        Ok(cmd)
    }

    /// A command for a helper that must stay root (virtiofsd): no jail root nor uid,
    /// only `no_new_privs` and the rlimits (except NOFILE and NPROC, which it sets or
    /// needs for itself).
    pub fn privileged_command(&self, program: &Path) -> Command {
        let plan = Plan {
            root: None,
            rlimits: self
                .rlimits
                .iter()
                .copied()
                .filter(|(r, _)| *r != libc::RLIMIT_NOFILE && *r != libc::RLIMIT_NPROC)
                .collect(),
        };
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.sock_dir);
        register(&mut cmd, plan);
        cmd
    }
}

/// A command for `program`: jailed as [`Jail::command`] when there is a jail, plain
/// otherwise; either way it runs in the socket dir `sock_dir` (the jail's own when
/// jailed), where it finds its sockets by bare name (see `uds_path`).
pub fn command(
    jail: Option<&Jail>,
    sock_dir: &Path,
    name: &str,
    program: &Path,
    ro_files: &[&Path],
    devices: Devices,
) -> Result<Command, JailError> {
    let mut cmd = match jail {
        Some(j) => j.command(name, program, ro_files, devices)?,
        None => Command::new(program),
    };
    // (Jailed, this chdir happens before the jail's pivot_root; the jail then enters
    // the same dir inside.)
    cmd.current_dir(sock_dir);
    Ok(cmd)
}

/// Runs `plan` in the child. Registered before the helper's own pre_exec (parent-death
/// signal, process group), which must come after the uid change that would clear it.
fn register(cmd: &mut Command, plan: Plan) {
    // SAFETY: `Plan::apply` runs in the forked child before exec and makes only
    // system calls on data prepared here; it does not allocate.
    unsafe {
        cmd.pre_exec(move || plan.apply());
    }
}

/// This process's hard limit of `resource`.
fn hard_limit(resource: libc::__rlimit_resource_t) -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: getrlimit writes into the struct on our stack.
    if unsafe { libc::getrlimit(resource, &mut lim) } == -1 {
        return libc::RLIM_INFINITY;
    }
    lim.rlim_max
}

/// A bind of host `src` at `at` inside `root`, with its mount point created.
fn bind(
    root: &Path,
    src: &Path,
    at: &Path,
    dir: bool,
    writable: bool,
) -> Result<BindPlan, JailError> {
    let dst = inside(root, at)?;
    if let Some(parent) = dst.parent() {
        mkdir_all(parent)?;
    }
    if dir {
        mkdir(&dst, 0o755)?;
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&dst)
            .map_err(JailError::io_failed("create the mount point", &dst))?;
    }
    Ok(BindPlan {
        src: cstring(src)?,
        dst: cstring(&dst)?,
        writable,
    })
}

/// `root` + the absolute `path`, refusing `..` and relative paths.
fn inside(root: &Path, path: &Path) -> Result<PathBuf, JailError> {
    let mut out = root.to_path_buf();
    let mut comps = path.components();
    if comps.next() != Some(Component::RootDir) {
        return Err(JailError::BadPath(path.to_path_buf()));
    }
    for c in comps {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(JailError::BadPath(path.to_path_buf())),
        }
    }
    Ok(out)
}

fn cstring(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::BadPath(p.to_path_buf()))
}

fn mkdir(p: &Path, mode: u32) -> Result<(), JailError> {
    match std::fs::DirBuilder::new().mode(mode).create(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        Err(e) => Err(JailError::io_failed("create the jail dir", p)(e)),
    }
}

fn mkdir_all(p: &Path) -> Result<(), JailError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .map_err(JailError::io_failed("create the jail dir", p))
}

#[cfg(test)]
mod tests;
