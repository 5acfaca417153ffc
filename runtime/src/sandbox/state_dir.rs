//! A VM's private directory on the host: `<state_dir>/vms/<id>/`, mode 0700, holding
//! its sockets and logs. Removed when the value is dropped, whatever went wrong.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Directory under the runtime's state dir that holds one dir per VM.
pub const VMS_DIR: &str = "vms";

#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    keep: bool,
}

impl StateDir {
    pub fn create(base: &Path, id: &str) -> std::io::Result<StateDir> {
        let vms = base.join(VMS_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&vms)?;
        let path = vms.join(id);
        // Not recursive: an id that already exists is an error, never shared.
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(StateDir { path, keep: false })
    }

    /// Takes over the existing dir of a dead sandbox, so dropping the value removes it
    /// the same careful way (mounts below detached first).
    pub fn adopt_stale(base: &Path, id: &str) -> StateDir {
        StateDir {
            path: base.join(VMS_DIR).join(id),
            keep: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leave the directory in place when dropped (debugging: `--keep-state`).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = remove(&self.path) {
            tracing::warn!(error = %e, "cannot remove the VM state dir");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("not removing {dir}: mounts remain under it ({mounts})")]
    MountsRemain { dir: PathBuf, mounts: String },
    #[error("cannot remove {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Removes a VM state dir and the scratch disk it links to; returns how many mounts
/// under it were detached. It never walks into a mounted directory (a volume is a
/// user's own host dir): whatever is still mounted below is detached first, and if
/// anything stays, the dir is left. A dir that is not there is no error.
pub fn remove(path: &Path) -> Result<usize, RemoveError> {
    let mounts = super::share::mounts_under(path);
    for m in &mounts {
        tracing::info!(mount = %m.display(), "detaching a mount left under the VM state dir");
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
    let left = super::share::mounts_under(path);
    if !left.is_empty() {
        return Err(RemoveError::MountsRemain {
            dir: path.to_path_buf(),
            mounts: left
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    super::scratch::remove_linked(path);
    // The helpers are gone before this runs, but a socket or log a dying helper (or a
    // process it forked into its sandbox) created while the tree was walked makes one
    // pass fail with ENOTEMPTY: retry, for up to 3 s on a loaded host.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match std::fs::remove_dir_all(path) {
            Ok(()) => return Ok(mounts.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(mounts.len()),
            Err(e)
                if e.kind() == std::io::ErrorKind::DirectoryNotEmpty
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(source) => {
                return Err(RemoveError::Io {
                    dir: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// A fresh random VM id: 16 lowercase hex digits.
pub fn new_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom(&mut bytes).is_err() {
        // Fall back to time and pid: unique enough for a per-host directory name,
        // and `create` refuses to reuse an existing one anyway.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes = (t ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().expect("tempdir");
        let d = StateDir::create(base.path(), "abc").expect("create");
        let p = d.path().to_path_buf();
        std::fs::write(p.join("console.log"), "x").expect("write");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(
            StateDir::create(base.path(), "abc").is_err(),
            "ids are never shared"
        );
        drop(d);
        assert!(!p.exists());
    }

    #[test]
    fn ids_are_hex_and_distinct() {
        let a = new_id();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }
}
