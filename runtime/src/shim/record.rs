//! What `containerd-shim-hull-v2 delete` needs when the shim itself is gone (killed,
//! crashed): the VM's state dir and the host PIDs of its processes, written next to
//! the bundle as `hull-sandbox.json` once they are known and removed on a clean end.
//! The helpers die with the shim (parent-death signal); the record covers the mounts
//! and the state dir they leave, and a helper that somehow survived.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FILE: &str = "hull-sandbox.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub state_dir: PathBuf,
    pub pids: Vec<u32>,
    /// Host cgroups the shim created for the pod, deepest first.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

impl Record {
    pub fn new(
        state_dir: &Path,
        pids: Vec<u32>,
        cgroup: Option<&crate::cgroup::HostCgroup>,
    ) -> Record {
        Record {
            state_dir: state_dir.to_path_buf(),
            pids,
            cgroups: cgroup.map(|c| c.created().to_vec()).unwrap_or_default(),
        }
    }

    pub fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let tmp = bundle.join(format!("{FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, bundle.join(FILE))
    }

    pub fn read(bundle: &Path) -> Option<Record> {
        let text = std::fs::read(bundle.join(FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn remove(bundle: &Path) {
        let _ = std::fs::remove_file(bundle.join(FILE));
    }

    /// Kills what is left of the VM, unmounts what is left in its state dir and
    /// removes it, then the pod's cgroups (killing what is left in them: only the
    /// pod's processes are there). A PID is killed only if its command line still
    /// names the state dir (the PID may have been reused since).
    pub fn clean(&self) {
        self.clean_state();
        crate::cgroup::remove_dirs(&self.cgroups, true);
    }

    /// Whether live process `pid` is still one of this VM's: its command line names
    /// the state dir, or it runs in it (a helper of a state dir too deep for socket
    /// addresses is handed bare socket names, see `uds_path`).
    fn names_state_dir(&self, pid: u32) -> bool {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains(&*self.state_dir.to_string_lossy())
            || std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(&self.state_dir))
    }

    fn clean_state(&self) {
        let marker = self.state_dir.to_string_lossy().into_owned();
        if marker.is_empty() || !self.state_dir.is_absolute() {
            return;
        }
        for pid in &self.pids {
            if self.names_state_dir(*pid) {
                if let Ok(p) = i32::try_from(*pid) {
                    tracing::info!(pid, "killing a process left by the shim");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        // Give killed processes a moment to release their sockets and mounts.
        for _ in 0..50 {
            if self.pids.iter().all(|p| !self.names_state_dir(*p)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for m in crate::sandbox::share::mounts_under(&self.state_dir) {
            if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(mount = %m.display(), error = %e, "cannot unmount");
            }
        }
        if !crate::sandbox::share::mounts_under(&self.state_dir).is_empty() {
            tracing::error!(dir = %self.state_dir.display(), "mounts remain; not removing the state dir");
            return;
        }
        crate::sandbox::scratch::remove_linked(&self.state_dir);
        match std::fs::remove_dir_all(&self.state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.state_dir.display(), error = %e, "cannot remove the state dir")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_clean() {
        let t = tempfile::tempdir().expect("tmp");
        let state = t.path().join("vms/abc");
        std::fs::create_dir_all(state.join("share")).expect("state");
        let r = Record {
            state_dir: state.clone(),
            pids: vec![u32::MAX],
            cgroups: Vec::new(),
        };
        r.write(t.path()).expect("write");
        assert_eq!(Record::read(t.path()), Some(r.clone()));
        r.clean();
        assert!(!state.exists());
        Record::remove(t.path());
        assert_eq!(Record::read(t.path()), None);
    }
}
