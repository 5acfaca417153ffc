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
        // Never let the removal walk into a mounted directory (a volume is a user's own
        // host dir): detach whatever is still mounted below, and if anything stays,
        // leave the dir rather than delete through it.
        for m in super::share::mounts_under(&self.path) {
            tracing::warn!(mount = %m.display(), "mount left under the VM state dir; detaching it");
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        let left = super::share::mounts_under(&self.path);
        if !left.is_empty() {
            tracing::error!(path = %self.path.display(), mounts = ?left, "not removing the VM state dir: mounts remain");
            return;
        }
        super::scratch::remove_linked(&self.path);
        // The helpers are reaped before this runs, but a socket or log a dying helper
        // (or a process it forked into its sandbox) created while the tree was walked
        // makes one pass fail with ENOTEMPTY: retry, for up to 3 s on a loaded host.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            match std::fs::remove_dir_all(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e)
                    if e.kind() == std::io::ErrorKind::DirectoryNotEmpty
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove VM state dir");
                    return;
                }
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
