//! `<vm state dir>/sandbox.json`: what another hull process needs to reach a running
//! sandbox (`hull exec`, and listings): its id, backend, owner, VM processes and the
//! host side of its hybrid vsock. Written atomically once the agent answered; it goes
//! with the state dir.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::share::check_id;
use super::state_dir::VMS_DIR;

/// The record's file name inside a VM state dir.
pub const RECORD_FILE: &str = "sandbox.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxRecord {
    pub id: String,
    pub backend: String,
    /// The hull process that owns the sandbox (it tears the VM down).
    pub owner_pid: u32,
    /// Host PIDs of the VM's processes at boot.
    pub vm_pids: Vec<u32>,
    /// Host side of the guest's hybrid vsock.
    pub vsock_uds: PathBuf,
    /// Seconds since the epoch.
    pub created: u64,
    /// The agent was told to allow debug processes (`[debug] exec` at boot).
    #[serde(default)]
    pub debug_exec: bool,
    /// The agent policy file sent at CreateSandbox (`[policy] file`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    BadId(#[from] super::share::ShareError),
    #[error("no sandbox {id:?} under {base} (is it running? `hull run --name {id}` names one)")]
    NotFound { id: String, base: PathBuf },
    #[error("sandbox {id:?} is not running any more (its owner, pid {pid}, is gone)")]
    Gone { id: String, pid: u32 },
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SandboxRecord {
    /// Writes the record into `dir` (atomically: see [`crate::atomic_write`]).
    pub fn write(&self, dir: &Path) -> Result<(), RecordError> {
        let path = dir.join(RECORD_FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|e| RecordError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        crate::atomic_write::write_atomically(&path, &json, 0o666)
            .map_err(|source| RecordError::Write { path, source })
    }

    /// Reads the record of sandbox `id` under the state base dir and checks that its
    /// owner still runs.
    pub fn load(state_base: &Path, id: &str) -> Result<SandboxRecord, RecordError> {
        check_id(id)?;
        let dir = state_base.join(VMS_DIR).join(id);
        let path = dir.join(RECORD_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RecordError::NotFound {
                    id: id.to_string(),
                    base: state_base.join(VMS_DIR),
                })
            }
            Err(e) => {
                return Err(RecordError::Read {
                    path,
                    why: e.to_string(),
                })
            }
        };
        let record: SandboxRecord =
            serde_json::from_slice(&text).map_err(|e| RecordError::Read {
                path: path.clone(),
                why: e.to_string(),
            })?;
        if record.id != id {
            return Err(RecordError::Read {
                path,
                why: format!("it names sandbox {:?}", record.id),
            });
        }
        if !pid_alive(record.owner_pid) {
            return Err(RecordError::Gone {
                id: id.to_string(),
                pid: record.owner_pid,
            });
        }
        Ok(record)
    }
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; EPERM means it exists under another user.
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Seconds since the epoch, 0 if the clock is before it.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, owner: u32) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            backend: "qemu (tcg)".into(),
            owner_pid: owner,
            vm_pids: vec![1, 2],
            vsock_uds: "/x/vsock.sock".into(),
            created: 5,
            debug_exec: false,
            policy: None,
        }
    }

    #[test]
    fn written_and_loaded_back() {
        let base = tempfile::tempdir().expect("tmp");
        let dir = base.path().join(VMS_DIR).join("pod1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let r = record("pod1", std::process::id());
        r.write(&dir).expect("write");
        assert_eq!(SandboxRecord::load(base.path(), "pod1").expect("load"), r);
    }

    #[test]
    fn missing_bad_and_dead_sandboxes_are_named() {
        let base = tempfile::tempdir().expect("tmp");
        let e = SandboxRecord::load(base.path(), "nope").expect_err("missing");
        assert!(e.to_string().contains("no sandbox \"nope\""), "{e}");
        let e = SandboxRecord::load(base.path(), "../etc").expect_err("bad id");
        assert!(e.to_string().contains("invalid"), "{e}");
        let dir = base.path().join(VMS_DIR).join("dead");
        std::fs::create_dir_all(&dir).expect("mkdir");
        // A pid that cannot exist (above the kernel's pid_max limit).
        record("dead", 0x7fff_fff0).write(&dir).expect("write");
        let e = SandboxRecord::load(base.path(), "dead").expect_err("dead owner");
        assert!(e.to_string().contains("not running"), "{e}");
        std::fs::write(dir.join(RECORD_FILE), "{").expect("write");
        let e = SandboxRecord::load(base.path(), "dead").expect_err("corrupt");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
