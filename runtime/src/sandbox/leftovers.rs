//! What removing a sandbox needs when the process that owns it is gone (a killed shim
//! or `hull run`, containerd restarted): its state dir, owner, VM processes, the host
//! cgroups made for it and the taps wired into the pod's netns.
//!
//! The record is `<vm state dir>/leftovers.json`, written when the state dir is made
//! and rewritten as parts are added (the VM's processes at launch, the pod's cgroups
//! and network by the shim), so a sandbox whose owner died at any point of its boot can
//! be collected by `hull gc` ([`crate::gc`]). The shim keeps a copy in containerd's
//! bundle (`hull-sandbox.json`, `crate::shim::record`) for `containerd-shim-hull-v2
//! delete`. Both end in [`Leftovers::clean`], the one cleanup of a dead sandbox.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record's file name inside a VM state dir.
pub const FILE: &str = "leftovers.json";

/// A process identified robustly against PID reuse: its pid and its start time
/// (`/proc/<pid>/stat` field 22, clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub start_time: u64,
}

/// What `/proc/<pid>/stat` says of a process now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3 (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Field 22.
    pub start_time: u64,
}

impl ProcStat {
    /// Reads `/proc/<pid>/stat`; None when there is no such process.
    pub fn read(pid: u32) -> Option<ProcStat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        ProcStat::parse(&text)
    }

    /// Parses a stat line. The command name (field 2) may hold spaces and parentheses:
    /// the fields after it start after its last `)`.
    pub fn parse(text: &str) -> Option<ProcStat> {
        let rest = &text[text.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        // `rest` starts at field 3: field 22 is the 20th from there.
        let start_time = fields.nth(18)?.parse().ok()?;
        Some(ProcStat { state, start_time })
    }
}

impl Owner {
    /// This process.
    pub fn current() -> Option<Owner> {
        let pid = std::process::id();
        ProcStat::read(pid).map(|s| Owner {
            pid,
            start_time: s.start_time,
        })
    }

    /// Whether the owner still runs.
    pub fn is_alive(&self) -> bool {
        self.alive_given(ProcStat::read(self.pid))
    }

    /// The decision, given what `/proc/<pid>/stat` says now: the pid must exist, not be
    /// a zombie and have started when the owner did (the same pid with another start
    /// time is another process: the owner is gone).
    pub fn alive_given(&self, now: Option<ProcStat>) -> bool {
        now.is_some_and(|s| s.state != 'Z' && s.start_time == self.start_time)
    }
}

/// The pod network's wiring in its netns, to unwire when its owner is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkLeftovers {
    pub netns: PathBuf,
    /// (veth interface index, tap name) per wired veth.
    pub links: Vec<(u32, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leftovers {
    /// The VM's state dir; empty in the shim's record before the sandbox exists.
    pub state_dir: PathBuf,
    /// The process that owns the sandbox (the shim or `hull run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// The backend's name (`qemu (tcg)`, `hull-vmm (kvm)`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// Host PIDs of the VM's processes, once launched.
    #[serde(default)]
    pub pids: Vec<u32>,
    /// Host cgroups made for the sandbox, deepest first.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkLeftovers>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeftoversError {
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Remove(#[from] super::state_dir::RemoveError),
}

/// What [`Leftovers::clean`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub killed: usize,
    pub unmounted: usize,
    pub taps: usize,
    pub cgroups: usize,
}

impl std::fmt::Display for Cleaned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} processes killed, {} mounts, {} taps, {} cgroups removed",
            self.killed, self.unmounted, self.taps, self.cgroups
        )
    }
}

impl Leftovers {
    /// Writes the record to `path` (atomically: see [`crate::atomic_write`]).
    pub fn write(&self, path: &Path) -> Result<(), LeftoversError> {
        let write_failed = |source| LeftoversError::Write {
            path: path.to_path_buf(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| write_failed(e.into()))?;
        crate::atomic_write::write_atomically(path, &json, 0o666).map_err(write_failed)
    }

    /// Reads the record at `path`; None when there is none.
    pub fn read(path: &Path) -> Result<Option<Leftovers>, LeftoversError> {
        let failed = |why: String| LeftoversError::Read {
            path: path.to_path_buf(),
            why,
        };
        match std::fs::read(path) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(|e| failed(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(failed(e.to_string())),
        }
    }

    /// Whether the owner is known and alive.
    pub fn owner_alive(&self) -> bool {
        self.owner.is_some_and(|o| o.is_alive())
    }

    /// Removes what is left of a sandbox whose owner is gone, in order: the VM's
    /// processes (the recorded ones and any other still naming the state dir; a
    /// recorded PID that names it no more was reused and is left alone), the pod's
    /// taps and tc filters in its netns if that still exists, the cgroups made for it
    /// (killing what is left in them), then the state dir (mounts under it detached
    /// first, its scratch disk with it). Idempotent.
    pub fn clean(&self) -> Result<Cleaned, LeftoversError> {
        let mut done = Cleaned::default();
        // Only ever a VM state dir: `<base>/vms/<id>`.
        let in_vms = self.state_dir.parent().and_then(|p| p.file_name())
            == Some(std::ffi::OsStr::new(super::state_dir::VMS_DIR));
        let dir = (self.state_dir.is_absolute() && in_vms).then_some(self.state_dir.as_path());
        if let Some(dir) = dir {
            done.killed = kill_naming(dir, &self.pids);
        }
        if let Some(net) = &self.network {
            if net.netns.exists() {
                match crate::network::unwire_path(&net.netns, &net.links) {
                    Ok(()) => done.taps = net.links.len(),
                    Err(e) => tracing::warn!(error = %e, "removing the pod's taps and tc filters"),
                }
            }
        }
        done.cgroups = self.cgroups.iter().filter(|c| c.exists()).count();
        crate::cgroup::remove_dirs(&self.cgroups, true);
        if let Some(dir) = dir {
            done.unmounted = super::state_dir::remove(dir)?;
        }
        Ok(done)
    }
}

/// Whether live process `pid` belongs to the VM of state dir `dir`: an argument names
/// the dir or a path in it, or it runs in it (a helper of a state dir too deep for
/// socket addresses is handed bare socket names, see `uds_path`).
pub fn names_dir(pid: u32, dir: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    args_name_dir(&cmdline, dir)
        || std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
}

/// Whether a NUL-separated command line names `dir` or a path in it (not merely a
/// sibling whose name starts with the same characters).
pub fn args_name_dir(cmdline: &[u8], dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    let inside = format!("{dir}/");
    cmdline
        .split(|b| *b == 0)
        .map(String::from_utf8_lossy)
        .any(|a| a.contains(&inside) || a.ends_with(&*dir))
}

/// Every process (but this one) naming `dir`.
pub fn processes_naming(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && names_dir(pid, dir))
        .collect()
}

/// SIGKILLs the processes of `recorded` and any other naming `dir`, and waits up to
/// 2 s for them to go (their sockets and mounts with them). Returns how many it killed.
fn kill_naming(dir: &Path, recorded: &[u32]) -> usize {
    let mut victims: Vec<u32> = recorded
        .iter()
        .copied()
        .filter(|&p| p != std::process::id() && names_dir(p, dir))
        .collect();
    for p in processes_naming(dir) {
        if !victims.contains(&p) {
            victims.push(p);
        }
    }
    for &pid in &victims {
        if let Ok(p) = i32::try_from(pid) {
            tracing::info!(pid, dir = %dir.display(), "killing a process left by a sandbox's owner");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while victims
        .iter()
        .any(|&p| ProcStat::read(p).is_some_and(|s| s.state != 'Z') && names_dir(p, dir))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    victims.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (containerd-shim) (x) S 1 4242 4242 0 -1 4194560 1 0 0 0 \
                        3 1 0 0 20 0 9 0 987654 123456 789 18446744073709551615";

    #[test]
    fn stat_fields_after_a_name_with_parens() {
        assert_eq!(
            ProcStat::parse(STAT),
            Some(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(ProcStat::parse("1 (x) S 1"), None);
        let me = Owner::current().expect("own stat");
        assert_eq!(me.pid, std::process::id());
        assert!(me.is_alive());
    }

    #[test]
    fn owner_liveness_survives_pid_reuse() {
        let owner = Owner {
            pid: 4242,
            start_time: 987654,
        };
        let now = |state, start_time| Some(ProcStat { state, start_time });
        assert!(owner.alive_given(now('S', 987654)));
        // The same pid, started later: another process reused it.
        assert!(!owner.alive_given(now('S', 987655)));
        assert!(!owner.alive_given(now('Z', 987654)), "a zombie is gone");
        assert!(!owner.alive_given(None), "no such pid");
        let gone = Owner {
            pid: 0x7fff_fff0,
            ..owner
        };
        assert!(!gone.is_alive());
        let reused = Owner {
            start_time: owner.start_time + 1,
            ..Owner::current().expect("own stat")
        };
        assert!(!reused.is_alive(), "this pid, another start time");
    }

    #[test]
    fn command_lines_name_the_dir_not_its_siblings() {
        let dir = Path::new("/run/hull/vms/ab");
        assert!(args_name_dir(
            b"qemu\0-chardev\0path=/run/hull/vms/ab/v.sock",
            dir
        ));
        assert!(args_name_dir(
            b"virtiofsd\0--shared-dir=/run/hull/vms/ab",
            dir
        ));
        assert!(!args_name_dir(b"qemu\0path=/run/hull/vms/abc/v.sock", dir));
        assert!(!args_name_dir(b"", dir));
    }

    #[test]
    fn written_read_back_and_cleaned_twice() {
        let t = tempfile::tempdir().expect("tmp");
        let state = t.path().join("vms/abc");
        std::fs::create_dir_all(state.join("share")).expect("state");
        let r = Leftovers {
            state_dir: state.clone(),
            owner: Owner::current(),
            backend: "qemu (tcg)".into(),
            pids: vec![u32::MAX],
            cgroups: Vec::new(),
            network: None,
        };
        let path = state.join(FILE);
        r.write(&path).expect("write");
        assert_eq!(Leftovers::read(&path).expect("read"), Some(r.clone()));
        assert!(r.owner_alive());
        let done = r.clean().expect("clean");
        assert_eq!(done.killed, 0);
        assert!(!state.exists());
        assert_eq!(r.clean().expect("again"), Cleaned::default());
        assert_eq!(Leftovers::read(&path).expect("read"), None);
        std::fs::write(t.path().join("bad.json"), "{").expect("write");
        assert!(matches!(
            Leftovers::read(&t.path().join("bad.json")),
            Err(LeftoversError::Read { .. })
        ));
    }

    #[test]
    fn the_shims_old_record_still_reads() {
        let t = tempfile::tempdir().expect("tmp");
        let path = t.path().join("hull-sandbox.json");
        std::fs::write(&path, r#"{"state_dir":"/x","pids":[1],"cgroups":["/c"]}"#).expect("write");
        let r = Leftovers::read(&path).expect("read").expect("some");
        assert_eq!(r.pids, vec![1]);
        assert_eq!(r.owner, None);
        assert!(!r.owner_alive());
    }
}
