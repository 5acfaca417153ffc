//! A pod's cgroup on the host, so the VM's memory is charged where the pod's is.
//!
//! runc puts a container's processes in the cgroup its OCI spec names
//! (`linux.cgroupsPath`); for hull those processes are the VM's: the hypervisor and
//! its helpers, whose memory is the guest's memory plus their own. The shim creates
//! that cgroup (or uses the one that exists), limits it when the workload has a memory
//! limit, and joins it itself before it starts them, so everything it spawns inherits
//! it before touching a byte of guest memory. When it ends it moves itself back and
//! removes the cgroups it created (`delete` does the same from the shim's record).
//!
//! Both layouts: cgroup v2 (one unified hierarchy) and v1 (one hierarchy per
//! controller under `/sys/fs/cgroup/<controller>`; hybrid hosts count as v1). Plain
//! file writes, as the kernel documents them; no systemd D-Bus: a systemd-style path
//! is created as a directory like a cgroupfs one.

pub mod path;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use path::{fit_vm, own_limit_bytes, parse_cgroups_path, parse_limit};

/// Where the hierarchies are mounted.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";
/// v1 hierarchies the pod's processes join: memory is required, the others are used
/// when mounted. cpuset is left alone (a new cpuset cgroup has no CPUs until set).
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
/// v2 controllers enabled down to the pod's cgroup (memory required).
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroupsPath {path:?}: {why}")]
    BadPath { path: String, why: String },
    #[error("no cgroup hierarchy with a memory controller under {0} (neither cgroup v2 with memory nor a v1 memory hierarchy)")]
    NoMemory(PathBuf),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the pod does not fit in cgroup {cgroup}: its memory limit ({limit_mib} MiB) leaves {room_mib} MiB \
         for the VM after hull's host overhead ({overhead_mib} MiB, hypervisor.host_overhead_mib), \
         below the smallest VM hull boots ({min_mib} MiB)"
    )]
    TooSmall {
        cgroup: PathBuf,
        limit_mib: u64,
        room_mib: u64,
        overhead_mib: u32,
        min_mib: u32,
    },
}

fn io_failed(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { what, path, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One hierarchy: its controller (v1) or "" (v2), and its root.
#[derive(Debug, Clone)]
struct Hierarchy {
    controller: &'static str,
    root: PathBuf,
}

/// A cgroup path in every hierarchy hull uses, not created yet.
#[derive(Debug, Clone)]
pub struct Target {
    version: Version,
    hierarchies: Vec<Hierarchy>,
    rel: PathBuf,
}

impl Target {
    /// Finds the hierarchies under `root` (normally [`DEFAULT_ROOT`]).
    pub fn detect(root: &Path, rel: PathBuf) -> Result<Target, CgroupError> {
        if let Ok(list) = std::fs::read_to_string(root.join("cgroup.controllers")) {
            if !list.split_whitespace().any(|c| c == "memory") {
                return Err(CgroupError::NoMemory(root.to_path_buf()));
            }
            let hierarchies = vec![Hierarchy {
                controller: "",
                root: root.to_path_buf(),
            }];
            return Ok(Target {
                version: Version::V2,
                hierarchies,
                rel,
            });
        }
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        let mut seen = Vec::new();
        for c in V1_CONTROLLERS {
            let dir = root.join(c);
            if !dir.join("cgroup.procs").exists() {
                continue;
            }
            // cpu and cpuacct are often one hierarchy mounted at cpu,cpuacct.
            let canonical = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            if seen.contains(&canonical) {
                continue;
            }
            seen.push(canonical);
            hierarchies.push(Hierarchy {
                controller: c,
                root: dir,
            });
        }
        if hierarchies.first().map(|h| h.controller) != Some("memory") {
            return Err(CgroupError::NoMemory(root.to_path_buf()));
        }
        Ok(Target {
            version: Version::V1,
            hierarchies,
            rel,
        })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The dirs [`Target::create`] would create now (the cgroup and its missing
    /// parents in every hierarchy), deepest first.
    pub fn missing_dirs(&self) -> Vec<PathBuf> {
        let mut missing = Vec::new();
        for h in &self.hierarchies {
            let mut dir = h.root.clone();
            for c in self.rel.components() {
                dir.push(c);
                if !dir.exists() {
                    missing.push(dir.clone());
                }
            }
        }
        missing.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        missing
    }

    /// The cgroup's directory in every hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.root.join(&self.rel))
            .collect()
    }

    /// The cgroup's directory in the memory hierarchy (the first one).
    pub fn memory_dir(&self) -> PathBuf {
        self.hierarchies[0].root.join(&self.rel)
    }

    fn limit_file(&self) -> &'static str {
        match self.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        }
    }

    /// The memory limit the host already imposes on the cgroup: its own if it exists,
    /// and its ancestors' (the smallest one counts).
    pub fn inherited_memory_limit(&self) -> Option<u64> {
        let root = &self.hierarchies[0].root;
        let mut dir = root.clone();
        let mut limit: Option<u64> = None;
        for c in self.rel.components() {
            dir.push(c);
            let Ok(text) = std::fs::read_to_string(dir.join(self.limit_file())) else {
                break;
            };
            if let Some(l) = parse_limit(&text) {
                limit = Some(limit.map_or(l, |m| m.min(l)));
            }
        }
        limit
    }

    /// Creates the cgroup in every hierarchy (and its missing parents), with the memory
    /// limit `limit` if hull created it. On error nothing it created is left.
    pub fn create(self, limit: Option<u64>) -> Result<HostCgroup, CgroupError> {
        let mut cg = HostCgroup {
            version: self.version,
            leaves: Vec::new(),
            created: Vec::new(),
            joined_from: Vec::new(),
            removed: false,
            limited: false,
        };
        for h in &self.hierarchies {
            let mut dir = h.root.clone();
            let mut leaf_created = false;
            for c in self.rel.components() {
                if self.version == Version::V2 {
                    enable_controllers(&dir)?;
                }
                dir.push(c);
                leaf_created = match std::fs::create_dir(&dir) {
                    Ok(()) => {
                        cg.created.push(dir.clone());
                        true
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                    Err(e) => return Err(io_failed("create the cgroup", &dir)(e)),
                };
            }
            if let (Some(bytes), true, "memory" | "") = (limit, leaf_created, h.controller) {
                let file = dir.join(self.limit_file());
                std::fs::write(&file, bytes.to_string())
                    .map_err(io_failed("set the memory limit in", &file))?;
                cg.limited = true;
                tracing::info!(cgroup = %dir.display(), bytes, "pod cgroup limited");
            }
            cg.leaves.push((h.controller, h.root.clone(), dir));
        }
        // Deepest first, the order they are removed in.
        cg.created
            .sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        Ok(cg)
    }
}

/// v2: the controllers hull uses enabled for `dir`'s children (memory must be).
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for c in V2_CONTROLLERS {
        if enabled.split_whitespace().any(|e| e == c) {
            continue;
        }
        if !available.split_whitespace().any(|a| a == c) && c != "memory" {
            continue;
        }
        let file = dir.join("cgroup.subtree_control");
        if let Err(e) = std::fs::write(&file, format!("+{c}")) {
            if c == "memory" {
                return Err(io_failed("enable the memory controller in", &file)(e));
            }
            tracing::debug!(file = %file.display(), controller = c, error = %e, "controller not enabled");
        }
    }
    Ok(())
}

/// A cgroup hull uses for a pod. Dropping it removes what hull created.
#[derive(Debug)]
pub struct HostCgroup {
    version: Version,
    /// (controller, hierarchy root, the cgroup's dir) per hierarchy.
    leaves: Vec<(&'static str, PathBuf, PathBuf)>,
    /// Dirs hull created, deepest first.
    created: Vec<PathBuf>,
    /// Where this process was before it joined.
    joined_from: Vec<PathBuf>,
    removed: bool,
    /// hull created it with a memory limit.
    limited: bool,
}

impl HostCgroup {
    pub fn version(&self) -> Version {
        self.version
    }

    /// The cgroup's dir in each hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.leaves.iter().map(|(_, _, d)| d.clone()).collect()
    }

    /// The dirs hull created (deepest first): what [`remove_dirs`] takes after a crash.
    pub fn created(&self) -> &[PathBuf] {
        &self.created
    }

    /// Moves this process (all its threads) into the cgroup; what it spawns from now on
    /// starts there.
    pub fn join_self(&mut self) -> Result<(), CgroupError> {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let pid = std::process::id().to_string();
        for (controller, root, dir) in &self.leaves {
            let from =
                current_cgroup(&own, controller).map(|rel| root.join(rel.trim_start_matches('/')));
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, &pid).map_err(io_failed("join", &procs))?;
            self.joined_from.push(from.unwrap_or_else(|| root.clone()));
        }
        Ok(())
    }

    /// Leaves the cgroup in place for good: dropping the value no longer moves this
    /// process back or removes anything (a cgroup other processes share).
    pub fn keep(mut self) {
        self.removed = true;
    }

    /// Memory charged to the cgroup now (v1 `memory.usage_in_bytes`, v2
    /// `memory.current`).
    pub fn memory_usage(&self) -> Option<u64> {
        let file = match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        let dir = self.memory_leaf()?;
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// The processes in the cgroup (its memory hierarchy's leaf).
    pub fn members(&self) -> Vec<u32> {
        self.memory_leaf()
            .map(procs)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| u32::try_from(p).ok())
            .collect()
    }

    fn memory_leaf(&self) -> Option<&Path> {
        self.leaves
            .iter()
            .find(|(c, _, _)| *c == "memory" || c.is_empty())
            .map(|(_, _, d)| d.as_path())
    }

    /// Moves processes started elsewhere (a pool VM's) into the cgroup, each with all
    /// its threads. Memory they used before stays charged where it was (cgroup v2
    /// never moves charges; v1's `memory.move_charge_at_immigrate` is gone from
    /// current kernels), so a limit hull set is lowered by `precharged`, what they
    /// hold there: the limit still bounds everything they use.
    pub fn adopt(&self, pids: &[u32], precharged: u64) -> Result<(), CgroupError> {
        if self.limited && precharged > 0 {
            if let Some(dir) = self.memory_leaf() {
                let file = dir.join(match self.version {
                    Version::V1 => "memory.limit_in_bytes",
                    Version::V2 => "memory.max",
                });
                let limit = std::fs::read_to_string(&file)
                    .ok()
                    .and_then(|t| parse_limit(&t));
                if let Some(limit) = limit {
                    let lowered = limit.saturating_sub(precharged).max(MIN_ADOPTED_LIMIT);
                    std::fs::write(&file, lowered.to_string())
                        .map_err(io_failed("lower the memory limit in", &file))?;
                    tracing::info!(cgroup = %dir.display(), limit, precharged, lowered, "memory limit lowered by what the VM holds outside this cgroup");
                }
            }
        }
        for (_, _, dir) in &self.leaves {
            let procs = dir.join("cgroup.procs");
            for pid in pids {
                std::fs::write(&procs, pid.to_string())
                    .map_err(io_failed("move a VM process into", &procs))?;
            }
        }
        Ok(())
    }

    /// Moves this process back where it was before it joined; the cgroup and its
    /// other members stay.
    pub fn leave_self(&mut self) {
        let pid = std::process::id().to_string();
        for from in self.joined_from.drain(..) {
            let procs = from.join("cgroup.procs");
            if let Err(e) = std::fs::write(&procs, &pid) {
                tracing::warn!(cgroup = %from.display(), error = %e, "cannot move back to the original cgroup");
            }
        }
    }

    /// Removes the cgroups hull created without moving this process back (it has
    /// joined another cgroup since), killing anything still in them.
    pub fn remove_in_place(&mut self) {
        self.joined_from.clear();
        self.remove();
    }

    /// Moves this process back where it was and removes the cgroups hull created,
    /// killing anything still in them (they are the pod's own).
    pub fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        let pid = std::process::id().to_string();
        for from in self.joined_from.drain(..) {
            if !from.exists() {
                // A pool VM's own cgroup, removed when a pod took it.
                continue;
            }
            let procs = from.join("cgroup.procs");
            if let Err(e) = std::fs::write(&procs, &pid) {
                tracing::warn!(cgroup = %from.display(), error = %e, "cannot move the shim back to its cgroup");
            }
        }
        remove_dirs(&self.created, true);
    }
}

impl Drop for HostCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// This process's cgroup in the hierarchy of `controller` ("" for v2), from
/// `/proc/self/cgroup`'s text.
fn current_cgroup<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        matches.then_some(path)
    })
}

/// The least a lowered limit leaves a pod (the shim and its share of page cache).
const MIN_ADOPTED_LIMIT: u64 = 32 << 20;

/// PIDs in a cgroup (its own members, not its children's).
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Removes cgroup dirs hull created (deepest first). With `kill`, what is still in a
/// pod's own cgroup (never this process) is SIGKILLed first; a dir that keeps members
/// for 5 s, or has children hull did not make (another pod under a shared parent),
/// stays. A parent hull created on the way (a dir of the list with another below it)
/// is only removed when empty, its members never killed: another pod may have joined
/// it as its own cgroup since (a `cgroupsPath` of `/default` beside `/default/<id>`).
pub fn remove_dirs(dirs: &[PathBuf], kill: bool) {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    for dir in dirs {
        if !dir.exists() {
            continue;
        }
        let parent_of_another = dirs.iter().any(|d| d != dir && d.starts_with(dir));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let members: Vec<i32> = procs(dir).into_iter().filter(|p| *p != me).collect();
            if members.is_empty() {
                break;
            }
            if parent_of_another {
                tracing::debug!(cgroup = %dir.display(), ?members, "a parent hull made has members of its own now; left in place");
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(cgroup = %dir.display(), ?members, "processes remain; not removing the cgroup");
                break;
            }
            if kill {
                for p in &members {
                    tracing::info!(pid = p, cgroup = %dir.display(), "killing a process left in the pod's cgroup");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => tracing::debug!(cgroup = %dir.display(), "cgroup removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let has_children = std::fs::read_dir(dir)
                    .map(|rd| rd.flatten().any(|e| e.path().is_dir()))
                    .unwrap_or(false);
                if has_children {
                    tracing::debug!(cgroup = %dir.display(), "cgroup still has children; left in place");
                } else {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove the cgroup");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_per_controller() {
        let text = "12:pids:/p\n4:memory:/process_api/x\n3:cpu,cpuacct:/c\n1:name=systemd:/s\n0::/unified\n";
        assert_eq!(current_cgroup(text, "memory"), Some("/process_api/x"));
        assert_eq!(current_cgroup(text, "cpuacct"), Some("/c"));
        assert_eq!(current_cgroup(text, ""), Some("/unified"));
        assert_eq!(current_cgroup(text, "blkio"), None);
    }

    /// `rel` on the host's real hierarchy, or None when `test` cannot run here (root and
    /// a memory hierarchy needed; a failure under `HULL_REQUIRE_E2E`).
    fn real_target(rel: PathBuf, test: &str) -> Option<Target> {
        match Target::detect(Path::new(DEFAULT_ROOT), rel) {
            Ok(t) if nix::unistd::geteuid().is_root() => Some(t),
            other => {
                let why = format!(
                    "needs root and a memory cgroup hierarchy under {DEFAULT_ROOT}: {other:?}"
                );
                assert!(std::env::var_os("HULL_REQUIRE_E2E").is_none(), "{why}");
                eprintln!("SKIP {test}: {why}");
                None
            }
        }
    }

    /// On the host's real hierarchy: a parent's limit is inherited, hull's limit is set
    /// on what it creates, and removal kills what is inside and leaves nothing.
    #[test]
    fn real_cgroup_created_limited_and_removed() {
        const MIB: u64 = 1 << 20;
        let root = Path::new(DEFAULT_ROOT);
        let name = PathBuf::from(format!("hull-unit-{}", std::process::id()));
        let Some(parent) = real_target(name.clone(), "real_cgroup_created_limited_and_removed")
        else {
            return;
        };
        let parent_dir = parent.memory_dir();
        // What the shim records before creating: exactly what create makes.
        let planned = parent.missing_dirs();
        let mut p = parent.create(Some(512 * MIB)).expect("parent");
        assert_eq!(planned, p.created());
        let leaf = Target::detect(root, name.join("pod")).expect("leaf");
        assert_eq!(leaf.inherited_memory_limit(), Some(512 * MIB));
        let limit_file = leaf.limit_file();
        let planned = leaf.missing_dirs();
        let mut l = leaf.create(Some(256 * MIB)).expect("leaf");
        assert_eq!(planned, l.created());
        let dirs = l.dirs();
        assert_eq!(
            l.created(),
            dirs.as_slice(),
            "only the leaf is new under the parent"
        );
        let set = std::fs::read_to_string(dirs[0].join(limit_file)).expect("limit");
        assert_eq!(parse_limit(&set), Some(256 * MIB));
        // A process put in the leaf is killed when the leaf goes.
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("sleep");
        for d in &dirs {
            std::fs::write(d.join("cgroup.procs"), child.id().to_string()).expect("move the child");
        }
        assert_eq!(procs(&dirs[0]), vec![child.id() as i32]);
        let reaper = std::thread::spawn(move || child.wait());
        l.remove();
        assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?} removed");
        let status = reaper.join().expect("reaper").expect("wait");
        assert!(!status.success(), "the child was killed: {status:?}");
        p.remove();
        assert!(!parent_dir.exists());
    }

    /// A parent hull created for one pod that another pod joined as its own cgroup (a
    /// `cgroupsPath` of `/default` beside `/default/<id>`): removing the first pod's
    /// cgroups removes its own, never kills the other pod's processes, and leaves the
    /// parent to them.
    #[test]
    fn a_created_parent_another_pod_joined_keeps_its_members() {
        let name = PathBuf::from(format!("hull-unit-shared-{}", std::process::id()));
        let Some(pod) = real_target(
            name.join("pod"),
            "a_created_parent_another_pod_joined_keeps_its_members",
        ) else {
            return;
        };
        let mut first = pod.create(None).expect("the first pod's cgroups");
        let created = first.created().to_vec();
        assert_eq!(
            created.len(),
            first.dirs().len() * 2,
            "pod and parent made: {created:?}"
        );
        // The other pod's process joins the parent (its own cgroup).
        let mut other = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("sleep");
        let parents: Vec<PathBuf> = first
            .dirs()
            .iter()
            .filter_map(|d| d.parent().map(Path::to_path_buf))
            .collect();
        for d in &parents {
            std::fs::write(d.join("cgroup.procs"), other.id().to_string()).expect("join");
        }
        first.remove();
        assert!(
            first.dirs().iter().all(|d| !d.exists()),
            "the pod's own cgroups went"
        );
        assert!(
            other.try_wait().expect("try_wait").is_none(),
            "the other pod's process was not killed"
        );
        assert!(
            parents.iter().all(|d| d.exists()),
            "the parent stays with its members"
        );
        let _ = other.kill();
        let _ = other.wait();
        for d in &parents {
            let _ = std::fs::write(
                d.parent().expect("root").join("cgroup.procs"),
                std::process::id().to_string(),
            );
            let _ = std::fs::remove_dir(d);
        }
        assert!(parents.iter().all(|d| !d.exists()), "test cleanup");
    }

    #[test]
    fn detect_refuses_a_root_without_memory() {
        let t = tempfile::tempdir().expect("tmp");
        let e = Target::detect(t.path(), PathBuf::from("a")).expect_err("no hierarchy");
        assert!(matches!(e, CgroupError::NoMemory(_)), "{e}");
        std::fs::write(t.path().join("cgroup.controllers"), "cpu pids\n").expect("v2 file");
        let e = Target::detect(t.path(), PathBuf::from("a")).expect_err("v2 without memory");
        assert!(e.to_string().contains("memory"), "{e}");
    }
}
