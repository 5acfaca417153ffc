//! Per-sandbox uids: each sandbox takes one uid (and the gid of the same number) from
//! the configured range `[jail] uid_start .. uid_start + uid_count`.
//!
//! A lease is an exclusive `flock` on `<lease_dir>/<uid>.lock`, held by the process
//! that owns the sandbox (`hull run` or the shim) for the sandbox's life. The kernel
//! drops the lock when that process ends, however it ends (a `kill -9` of the shim
//! frees its uid), so concurrent sandboxes of any hull process never share a uid and a
//! crash never strands one. The lock files are never unlinked (unlinking a locked file
//! races with the next locker); there are at most as many as sandboxes ever ran at
//! once. A uid that still has a live process (a helper that outlived its owner) is
//! skipped.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::JailError;

/// A uid (and gid) leased to one sandbox; freed when dropped.
#[derive(Debug)]
pub struct Lease {
    uid: u32,
    // Holds the lock; closing the file releases it.
    _file: File,
}

impl Lease {
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Takes the first free uid of `start .. start + count`.
    pub fn take(lease_dir: &Path, start: u32, count: u32, owner: &str) -> Result<Lease, JailError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(lease_dir)
            .map_err(JailError::io_failed("create the uid lease dir", lease_dir))?;
        let busy = uids_with_processes();
        for uid in (0..count).filter_map(|i| start.checked_add(i)) {
            if busy.contains(&uid) {
                continue;
            }
            let path = lease_dir.join(format!("{uid}.lock"));
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(JailError::io_failed("open the uid lease", &path))?;
            // SAFETY: flock on a file descriptor this function owns; no memory is passed.
            let locked =
                unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
            if !locked {
                continue;
            }
            // Informational: who holds it (read by people, not by hull).
            use std::io::Write;
            let _ = file.set_len(0);
            let _ = writeln!(file, "{owner} {}", std::process::id());
            tracing::debug!(uid, lease = %path.display(), "jail uid leased");
            return Ok(Lease { uid, _file: file });
        }
        Err(JailError::NoFreeUid {
            start,
            count,
            dir: lease_dir.to_path_buf(),
        })
    }
}

/// Real uids of the processes running now (the owner of `/proc/<pid>`).
fn uids_with_processes() -> HashSet<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::metadata(e.path()).ok().map(|m| m.uid()))
        .collect()
}

/// The lease file of `uid` (tests and diagnostics).
pub fn lease_path(lease_dir: &Path, uid: u32) -> PathBuf {
    lease_dir.join(format!("{uid}.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_leases_differ_and_a_dropped_one_is_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Lease::take(dir.path(), 3_900_000_000, 3, "a").expect("a");
        let b = Lease::take(dir.path(), 3_900_000_000, 3, "b").expect("b");
        assert_ne!(a.uid(), b.uid());
        let freed = a.uid();
        drop(a);
        let c = Lease::take(dir.path(), 3_900_000_000, 3, "c").expect("c");
        assert_eq!(c.uid(), freed, "a released uid is taken again");
        assert!(lease_path(dir.path(), freed).exists());
    }

    #[test]
    fn a_full_range_is_a_named_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _a = Lease::take(dir.path(), 3_900_000_100, 1, "a").expect("a");
        let e = Lease::take(dir.path(), 3_900_000_100, 1, "b").expect_err("range is full");
        assert!(e.to_string().contains("uid_count"), "{e}");
    }

    #[test]
    fn a_lock_held_by_another_process_is_respected() {
        // flock locks belong to the open file description: a second open in this
        // process conflicts like another process would.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = lease_path(dir.path(), 3_900_000_200);
        let f = File::create(&path).expect("create");
        // SAFETY: flock on a descriptor owned by `f`.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        let l = Lease::take(dir.path(), 3_900_000_200, 2, "x").expect("next one");
        assert_eq!(l.uid(), 3_900_000_201);
    }
}
