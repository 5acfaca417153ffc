//! Orphaned sandboxes: a sandbox whose owner (the shim, or `hull run`) is gone while
//! nothing else will clean up after it (containerd restarted or lost its state, so no
//! `shim delete` comes). [`status`] decides from the state dir's
//! [`Leftovers`](crate::sandbox::leftovers) record, `hull ps` shows it and `hull gc`
//! ([`collect`]) removes orphans with [`Leftovers::clean`], the same cleanup as `shim
//! delete`. A sandbox whose owner runs is never touched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sandbox::leftovers::{self, Cleaned, Leftovers, LeftoversError};
use crate::sandbox::record::{SandboxRecord, RECORD_FILE};
use crate::sandbox::state_dir::VMS_DIR;

/// A state dir without a record naming its owner counts as orphaned only when no
/// process names it and it is at least this old (its owner may be creating it).
pub const UNRECORDED_AGE: Duration = Duration::from_secs(60);

/// Whose a sandbox is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Its owner runs.
    Live { owner: u32 },
    /// Its owner is gone (or, unrecorded, nothing names it any more): `hull gc` removes it.
    Orphan { owner: Option<u32> },
    /// No record names its owner, but a process names it or it is young: left alone.
    Unknown,
}

impl Status {
    /// The owner's pid, if recorded.
    pub fn owner(&self) -> Option<u32> {
        match self {
            Status::Live { owner } => Some(*owner),
            Status::Orphan { owner } => *owner,
            Status::Unknown => None,
        }
    }

    /// One word for `hull ps`.
    pub fn word(&self) -> &'static str {
        match self {
            Status::Live { .. } => "live",
            Status::Orphan { .. } => "orphan",
            Status::Unknown => "unknown",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("cannot list the sandboxes in {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The state dir's record, if it has a readable one.
pub fn leftovers_of(dir: &Path) -> Option<Leftovers> {
    match Leftovers::read(&dir.join(leftovers::FILE)) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable sandbox record");
            None
        }
    }
}

/// Whose the sandbox in state dir `dir` is, from its record (`leftovers`, read by the
/// caller) or, without one, from the processes naming it and its age.
pub fn status(dir: &Path, leftovers: Option<&Leftovers>) -> Status {
    if let Some(owner) = leftovers.and_then(|l| l.owner) {
        return match owner.is_alive() {
            true => Status::Live { owner: owner.pid },
            false => Status::Orphan {
                owner: Some(owner.pid),
            },
        };
    }
    // A record of an older hull names its owner by pid alone.
    if let Some(pid) = legacy_owner(dir) {
        return match leftovers::ProcStat::read(pid).is_some_and(|s| s.state != 'Z') {
            true => Status::Live { owner: pid },
            false => Status::Orphan { owner: Some(pid) },
        };
    }
    let old = std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= UNRECORDED_AGE);
    if old && leftovers::processes_naming(dir).is_empty() {
        Status::Orphan { owner: None }
    } else {
        Status::Unknown
    }
}

fn legacy_owner(dir: &Path) -> Option<u32> {
    let text = std::fs::read(dir.join(RECORD_FILE)).ok()?;
    serde_json::from_slice::<SandboxRecord>(&text)
        .ok()
        .map(|r| r.owner_pid)
}

/// What `hull gc` did with one sandbox.
#[derive(Debug)]
pub enum Outcome {
    /// Removed (None: `--dry-run`, it would have been).
    Removed(Option<Cleaned>),
    /// Left alone: it is not an orphan.
    Skipped,
    /// An orphan that could not be removed entirely.
    Failed(LeftoversError),
}

#[derive(Debug)]
pub struct Collected {
    pub id: String,
    pub status: Status,
    pub outcome: Outcome,
}

/// The VM state dirs under `state_base`, sorted.
pub fn state_dirs(state_base: &Path) -> Result<Vec<PathBuf>, GcError> {
    let vms = state_base.join(VMS_DIR);
    let rd = match std::fs::read_dir(&vms) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(GcError::List { path: vms, source }),
    };
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// `hull gc`: removes every orphaned sandbox under `state_base` (with `dry_run`, only
/// says which), leaves every other one alone. Idempotent.
pub fn collect(state_base: &Path, dry_run: bool) -> Result<Vec<Collected>, GcError> {
    Ok(state_dirs(state_base)?
        .into_iter()
        .map(|dir| {
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let record = leftovers_of(&dir);
            let status = status(&dir, record.as_ref());
            let outcome = match (status, dry_run) {
                (Status::Orphan { .. }, true) => Outcome::Removed(None),
                (Status::Orphan { .. }, false) => {
                    let record = record.unwrap_or_else(|| Leftovers {
                        state_dir: dir.clone(),
                        ..Default::default()
                    });
                    match record.clean() {
                        Ok(done) => Outcome::Removed(Some(done)),
                        Err(e) => Outcome::Failed(e),
                    }
                }
                _ => Outcome::Skipped,
            };
            Collected {
                id,
                status,
                outcome,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::leftovers::Owner;

    fn sandbox(base: &Path, id: &str, owner: Option<Owner>) -> PathBuf {
        let dir = base.join(VMS_DIR).join(id);
        std::fs::create_dir_all(dir.join("share")).expect("mkdir");
        if owner.is_some() {
            Leftovers {
                state_dir: dir.clone(),
                owner,
                ..Default::default()
            }
            .write(&dir.join(leftovers::FILE))
            .expect("write");
        }
        dir
    }

    fn age(dir: &Path, by: Duration) {
        let then = std::time::SystemTime::now() - by;
        std::fs::File::open(dir)
            .and_then(|f| f.set_modified(then))
            .expect("mtime");
    }

    #[test]
    fn a_live_owner_is_never_collected_a_gone_one_is() {
        let base = tempfile::tempdir().expect("tmp");
        let me = Owner::current().expect("own stat");
        let live = sandbox(base.path(), "live", Some(me));
        // This very pid, another start time: a reused pid, so the owner is gone.
        let reused = Owner {
            start_time: me.start_time + 1,
            ..me
        };
        let orphan = sandbox(base.path(), "orphan", Some(reused));
        let young = sandbox(base.path(), "young", None);
        let old = sandbox(base.path(), "old", None);
        age(&old, UNRECORDED_AGE + Duration::from_secs(5));

        let dry = collect(base.path(), true).expect("dry run");
        assert!(orphan.exists() && old.exists(), "a dry run removes nothing");
        let would: Vec<&str> = dry
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Removed(None)))
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(would, ["old", "orphan"]);

        let done = collect(base.path(), false).expect("gc");
        let status = |id: &str| done.iter().find(|c| c.id == id).expect(id).status;
        assert_eq!(status("live"), Status::Live { owner: me.pid });
        assert_eq!(
            status("orphan"),
            Status::Orphan {
                owner: Some(me.pid)
            }
        );
        assert_eq!(status("young"), Status::Unknown);
        assert_eq!(status("old"), Status::Orphan { owner: None });
        assert!(live.exists(), "a live owner's sandbox is never touched");
        assert!(young.exists(), "an unrecorded young dir may be booting");
        assert!(!orphan.exists() && !old.exists());

        let again = collect(base.path(), false).expect("gc again");
        assert!(again.iter().all(|c| matches!(c.outcome, Outcome::Skipped)));
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn nothing_to_list_is_no_error() {
        let base = tempfile::tempdir().expect("tmp");
        assert!(collect(base.path(), false).expect("gc").is_empty());
    }
}
