//! A container's cgroup v2 directory: statistics, OOM counter, freezing, updates.
//!
//! The files are parsed here (pure functions, unit tested) rather than through
//! libcgroups' stats so the numbers map one to one onto the API's messages, which
//! follow containerd's cgroups v2 metrics.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use hull_proto::{CpuStats, IoEntry, IoStats, MemoryStats, PidsStats};

use super::spec::CGROUP_PARENT;
use crate::init::CGROUP_ROOT;

#[derive(Debug, thiserror::Error)]
pub enum CgroupFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The cgroup directory of container `id` (see `spec::adapt`).
pub fn dir_of(id: &str) -> PathBuf {
    Path::new(CGROUP_ROOT)
        .join(CGROUP_PARENT.trim_start_matches('/'))
        .join(id)
}

/// Removes cgroup `dir` and every cgroup the workload made below it (Docker-in-Docker,
/// systemd in a container), deepest first. What still runs anywhere in the subtree is
/// killed first (`cgroup.kill`, Linux 5.14+): a cgroup with processes cannot go. Each
/// removal is retried until `deadline` while the kernel finishes reaping.
pub fn remove_tree(dir: &Path, deadline: std::time::Duration) -> io::Result<()> {
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        let _ = std::fs::write(&kill, "1");
    }
    let until = std::time::Instant::now() + deadline;
    remove_below_then(dir, until)
}

fn remove_below_then(dir: &Path, until: std::time::Instant) -> io::Result<()> {
    let children = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for child in children {
        remove_below_then(&child, until)?;
    }
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // EBUSY: processes not reaped yet.
            Err(e) if std::time::Instant::now() < until => {
                tracing::debug!(dir = %dir.display(), error = %e, "cgroup not removable yet");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn read(dir: &Path, file: &str) -> Result<String, CgroupFileError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|source| CgroupFileError::Io { path, source })
}

/// `key value` lines (memory.stat, cpu.stat, memory.events) as a map.
pub fn parse_flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let key = words.next()?;
            let value = words.next()?.parse().ok()?;
            Some((key, value))
        })
        .collect()
}

/// A single-value file: a number, or `max` (as u64::MAX).
pub fn parse_single(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => Some(u64::MAX),
        v => v.parse().ok(),
    }
}

/// io.stat: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...` per device.
pub fn parse_io_stat(text: &str) -> Vec<IoEntry> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (major, minor) = words.next()?.split_once(':')?;
            let mut e = IoEntry::new();
            e.major = major.parse().ok()?;
            e.minor = minor.parse().ok()?;
            for kv in words {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

/// The `oom_kill` count of memory.events (0 if unreadable: no memory controller).
pub fn oom_kills(dir: &Path) -> u64 {
    read(dir, "memory.events")
        .ok()
        .and_then(|t| parse_flat_keyed(&t).get("oom_kill").copied())
        .unwrap_or(0)
}

pub fn cpu_stats(cpu_stat: &str) -> CpuStats {
    let m = parse_flat_keyed(cpu_stat);
    let g = |k: &str| m.get(k).copied().unwrap_or(0);
    let mut s = CpuStats::new();
    s.usage_usec = g("usage_usec");
    s.user_usec = g("user_usec");
    s.system_usec = g("system_usec");
    s.nr_periods = g("nr_periods");
    s.nr_throttled = g("nr_throttled");
    s.throttled_usec = g("throttled_usec");
    s
}

pub fn memory_stats(
    stat: &str,
    events: &str,
    usage: Option<u64>,
    limit: Option<u64>,
) -> MemoryStats {
    let m = parse_flat_keyed(stat);
    let e = parse_flat_keyed(events);
    let g = |k: &str| m.get(k).copied().unwrap_or(0);
    let ge = |k: &str| e.get(k).copied().unwrap_or(0);
    let mut s = MemoryStats::new();
    s.usage = usage.unwrap_or(0);
    s.usage_limit = limit.unwrap_or(u64::MAX);
    s.anon = g("anon");
    s.file = g("file");
    s.kernel_stack = g("kernel_stack");
    s.slab = g("slab");
    s.sock = g("sock");
    s.shmem = g("shmem");
    s.file_mapped = g("file_mapped");
    s.file_dirty = g("file_dirty");
    s.file_writeback = g("file_writeback");
    s.pgfault = g("pgfault");
    s.pgmajfault = g("pgmajfault");
    s.inactive_anon = g("inactive_anon");
    s.active_anon = g("active_anon");
    s.inactive_file = g("inactive_file");
    s.active_file = g("active_file");
    s.unevictable = g("unevictable");
    s.low_events = ge("low");
    s.high_events = ge("high");
    s.max_events = ge("max");
    s.oom_events = ge("oom");
    s.oom_kill_events = ge("oom_kill");
    s
}

/// Everything StatsContainer reports, read from `dir`. Files of controllers that are
/// not enabled are reported as zeros.
pub fn stats(dir: &Path) -> Result<hull_proto::StatsContainerResponse, CgroupFileError> {
    // The directory itself must exist: a missing one means the container is gone.
    read(dir, "cgroup.procs")?;
    let opt = |f: &str| read(dir, f).ok();
    let mut r = hull_proto::StatsContainerResponse::new();
    r.cpu = protobuf::MessageField::some(cpu_stats(&opt("cpu.stat").unwrap_or_default()));
    r.memory = protobuf::MessageField::some(memory_stats(
        &opt("memory.stat").unwrap_or_default(),
        &opt("memory.events").unwrap_or_default(),
        opt("memory.current").and_then(|t| parse_single(&t)),
        opt("memory.max").and_then(|t| parse_single(&t)),
    ));
    let mut pids = PidsStats::new();
    pids.current = opt("pids.current")
        .and_then(|t| parse_single(&t))
        .unwrap_or(0);
    pids.limit = opt("pids.max")
        .and_then(|t| parse_single(&t))
        .unwrap_or(u64::MAX);
    r.pids = protobuf::MessageField::some(pids);
    let mut io = IoStats::new();
    io.usage = parse_io_stat(&opt("io.stat").unwrap_or_default());
    r.io = protobuf::MessageField::some(io);
    Ok(r)
}

/// PIDs (guest root namespace) of every process in the cgroup.
pub fn procs(dir: &Path) -> Result<Vec<i32>, CgroupFileError> {
    Ok(read(dir, "cgroup.procs")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Kills every process in the cgroup at `dir`: `cgroup.kill` (Linux 5.14+), else
/// SIGKILL to each pid in `cgroup.procs`. Best effort: a cgroup already empty or gone
/// has nothing to kill.
pub fn kill_all(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for pid in procs(dir).unwrap_or_default() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_tree_goes_deepest_first_and_a_missing_one_is_fine() {
        let tmp = tempfile::tempdir().expect("tmp");
        let top = tmp.path().join("c1");
        for d in ["docker/abc/init.scope", "docker/def", "leaf"] {
            std::fs::create_dir_all(top.join(d)).expect("mkdir");
        }
        remove_tree(&top, std::time::Duration::from_millis(100)).expect("removed");
        assert!(!top.exists());
        remove_tree(&top, std::time::Duration::from_millis(100)).expect("already gone");
        // A directory that cannot go (a file in it, as a cgroup with processes) is an
        // error once the deadline passed, not a hang.
        std::fs::create_dir_all(top.join("busy")).expect("mkdir");
        std::fs::write(top.join("busy/pinned"), "x").expect("file");
        let start = std::time::Instant::now();
        assert!(remove_tree(&top, std::time::Duration::from_millis(200)).is_err());
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn flat_keyed_and_single() {
        let m = parse_flat_keyed("low 0\nhigh 1\nmax 2\noom 3\noom_kill 4\nbad\nx y\n");
        assert_eq!(m.get("oom_kill"), Some(&4));
        assert_eq!(m.get("bad"), None);
        assert_eq!(m.get("x"), None);
        assert_eq!(parse_single("max\n"), Some(u64::MAX));
        assert_eq!(parse_single("4096\n"), Some(4096));
        assert_eq!(parse_single("junk"), None);
    }

    #[test]
    fn cpu_and_memory() {
        let c = cpu_stats("usage_usec 10\nuser_usec 6\nsystem_usec 4\nnr_periods 2\nnr_throttled 1\nthrottled_usec 9\n");
        assert_eq!((c.usage_usec, c.user_usec, c.system_usec), (10, 6, 4));
        assert_eq!((c.nr_periods, c.nr_throttled, c.throttled_usec), (2, 1, 9));
        let m = memory_stats(
            "anon 100\nfile 200\npgfault 5\n",
            "oom 1\noom_kill 1\n",
            Some(300),
            None,
        );
        assert_eq!((m.anon, m.file, m.pgfault, m.usage), (100, 200, 5, 300));
        assert_eq!(m.usage_limit, u64::MAX);
        assert_eq!((m.oom_events, m.oom_kill_events), (1, 1));
    }

    #[test]
    fn io_stat() {
        let v = parse_io_stat(
            "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\nbad line\n",
        );
        assert_eq!(v.len(), 1);
        assert_eq!(
            (
                v[0].major,
                v[0].minor,
                v[0].rbytes,
                v[0].wbytes,
                v[0].rios,
                v[0].wios
            ),
            (254, 0, 4096, 8192, 1, 2)
        );
    }

    #[test]
    fn missing_cgroup_is_an_error_and_oom_count_defaults_to_zero() {
        let dir = Path::new("/nonexistent/hull-cgroup");
        assert!(stats(dir).is_err());
        assert_eq!(oom_kills(dir), 0);
    }
}
