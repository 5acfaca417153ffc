//! What runs on this host, for `hull ps` and `hull logs`: the VM state dirs under
//! `<state_dir>/vms/`, their processes (found by the state dir in their command lines,
//! as every VM process has its sockets there), memory and containers.

use std::path::{Path, PathBuf};

use crate::gc::Status;
use crate::sandbox::leftovers;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no sandbox {0:?} under {1} (see `hull ps`)")]
    NotFound(String, PathBuf),
    #[error("{0:?} matches several sandboxes: {1}")]
    Ambiguous(String, String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One sandbox VM as seen from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    pub id: String,
    pub dir: PathBuf,
    /// The backend its record names (`qemu`, `hull-vmm`), else "qemu" when a QEMU
    /// process runs it, else "-".
    pub backend: String,
    pub pid: Option<u32>,
    /// Whether its owner (the shim or `hull run`) runs (see [`crate::gc`]).
    pub status: Status,
    /// Resident memory of the VM process.
    pub rss_kib: Option<u64>,
    /// Guest memory as configured (`-m`).
    pub guest_mib: Option<u64>,
    pub containers: Vec<String>,
    /// A warm pool VM no pod has taken yet (see `crate::pool`).
    pub pooled: bool,
}

/// Every VM dir under `state_dir`, sorted by id.
pub fn list(state_dir: &Path) -> Vec<SandboxInfo> {
    let dirs = crate::gc::state_dirs(state_dir).unwrap_or_default();
    let procs = processes();
    dirs.into_iter()
        .map(|dir| {
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let record = crate::gc::leftovers_of(&dir);
            let status = crate::gc::status(&dir, record.as_ref());
            let marker = dir.to_string_lossy().into_owned();
            // The recorded VM process while it still names the dir, else a QEMU that does.
            let recorded = record
                .as_ref()
                .and_then(|r| r.pids.first().copied())
                .filter(|p| leftovers::names_dir(*p, &dir));
            let vm = match recorded {
                Some(pid) => procs.iter().find(|(p, _)| *p == pid),
                None => procs.iter().find(|(_, cmd)| {
                    cmd.iter().any(|a| a.contains(&marker))
                        && cmd.first().is_some_and(|a| a.contains("qemu-system"))
                }),
            };
            let backend = record
                .as_ref()
                .and_then(|r| r.backend.split_whitespace().next().map(str::to_string))
                .or_else(|| vm.map(|_| "qemu".to_string()))
                .unwrap_or_else(|| "-".into());
            let mut containers: Vec<String> = std::fs::read_dir(dir.join("share/containers"))
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            containers.sort();
            let pooled = crate::pool::Entry::new(state_dir, &id).record().exists();
            SandboxInfo {
                pooled,
                id,
                backend,
                pid: vm.map(|(p, _)| *p),
                status,
                rss_kib: vm.and_then(|(p, _)| rss_kib(*p)),
                guest_mib: vm.and_then(|(_, cmd)| guest_mib(cmd)),
                containers,
                dir,
            }
        })
        .collect()
}

/// The table `hull ps` prints. OWNER is the pid of the shim or `hull run` that owns
/// the sandbox; STATE says whether it runs (`live`; `pool` for a warm pool VM no pod
/// has taken), is gone (`orphan`: `hull gc` removes it) or is not recorded (`unknown`).
pub fn table(list: &[SandboxInfo]) -> String {
    let mut out = format!(
        "{:<18} {:<8} {:>8} {:>8} {:<7} {:>8} {:>10}  {}\n",
        "SANDBOX", "BACKEND", "PID", "OWNER", "STATE", "RSS(MiB)", "GUEST(MiB)", "CONTAINERS"
    );
    for s in list {
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<18} {:<8} {:>8} {:>8} {:<7} {:>8} {:>10}  {}\n",
            s.id,
            s.backend,
            opt(s.pid.map(u64::from)),
            opt(s.status.owner().map(u64::from)),
            match (s.pooled, s.status.word()) {
                (true, "live") => "pool",
                (_, word) => word,
            },
            opt(s.rss_kib.map(|k| k / 1024)),
            opt(s.guest_mib),
            if s.containers.is_empty() {
                "-".to_string()
            } else {
                s.containers.join(",")
            }
        ));
    }
    out
}

/// The VM dir whose id is `id` or starts with it.
pub fn find(state_dir: &Path, id: &str) -> Result<PathBuf, InspectError> {
    let all = list(state_dir);
    if let Some(s) = all.iter().find(|s| s.id == id) {
        return Ok(s.dir.clone());
    }
    let found: Vec<&SandboxInfo> = all
        .iter()
        .filter(|s| !id.is_empty() && s.id.starts_with(id))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.dir.clone()),
        [] => Err(InspectError::NotFound(id.into(), state_dir.join("vms"))),
        many => Err(InspectError::Ambiguous(
            id.into(),
            many.iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The guest console log of sandbox `id` (kernel and agent output).
pub fn console_log(state_dir: &Path, id: &str) -> Result<Vec<u8>, InspectError> {
    let path = find(state_dir, id)?.join("console.log");
    std::fs::read(&path).map_err(|source| InspectError::Read { path, source })
}

fn processes() -> Vec<(u32, Vec<String>)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>();
            (!args.is_empty()).then_some((pid, args))
        })
        .collect()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// QEMU's `-m 256M`.
fn guest_mib(cmd: &[String]) -> Option<u64> {
    let i = cmd.iter().position(|a| a == "-m")?;
    let v = cmd.get(i + 1)?;
    v.trim_end_matches(['M', 'm']).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_finds_and_reads_logs() {
        let t = tempfile::tempdir().expect("tmp");
        for id in ["aa11", "aa22", "bb33"] {
            std::fs::create_dir_all(t.path().join("vms").join(id).join("share/containers/c1"))
                .expect("dir");
        }
        std::fs::write(
            t.path().join("vms/bb33/console.log"),
            b"Linux version 6.1\n",
        )
        .expect("log");
        let l = list(t.path());
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].containers, vec!["c1".to_string()]);
        assert_eq!(l[0].backend, "-");
        assert_eq!(l[0].status, Status::Unknown);
        assert!(table(&l).contains("aa11"));
        assert_eq!(
            console_log(t.path(), "bb").expect("log"),
            b"Linux version 6.1\n"
        );
        assert!(matches!(
            find(t.path(), "aa"),
            Err(InspectError::Ambiguous(..))
        ));
        assert!(matches!(
            find(t.path(), "zz"),
            Err(InspectError::NotFound(..))
        ));
        assert!(matches!(
            console_log(t.path(), "aa11"),
            Err(InspectError::Read { .. })
        ));
        assert_eq!(
            guest_mib(&["q".into(), "-m".into(), "256M".into()]),
            Some(256)
        );
    }

    #[test]
    fn backend_and_owner_come_from_the_record() {
        use crate::sandbox::leftovers::{Leftovers, Owner, FILE};
        let t = tempfile::tempdir().expect("tmp");
        let me = Owner::current().expect("own stat");
        let gone = Owner {
            start_time: me.start_time + 1,
            ..me
        };
        for (id, owner, backend) in [("live", me, "hull-vmm (kvm)"), ("dead", gone, "qemu (tcg)")] {
            let dir = t.path().join("vms").join(id);
            std::fs::create_dir_all(&dir).expect("dir");
            Leftovers {
                state_dir: dir.clone(),
                owner: Some(owner),
                backend: backend.into(),
                ..Default::default()
            }
            .write(&dir.join(FILE))
            .expect("record");
        }
        let l = list(t.path());
        assert_eq!(l[0].id, "dead");
        assert_eq!(l[0].backend, "qemu");
        assert_eq!(
            l[0].status,
            Status::Orphan {
                owner: Some(me.pid)
            }
        );
        assert_eq!(l[1].backend, "hull-vmm");
        assert_eq!(l[1].status, Status::Live { owner: me.pid });
        let table = table(&l);
        let dead = table.lines().find(|l| l.starts_with("dead")).expect("row");
        assert!(dead.contains(" orphan "), "{table}");
        assert!(dead.contains(&me.pid.to_string()), "{table}");
        let live = table.lines().find(|l| l.starts_with("live")).expect("row");
        assert!(
            live.contains("hull-vmm") && live.contains(" live "),
            "{table}"
        );
    }
}
