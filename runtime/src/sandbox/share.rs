//! The sandbox share: `<vm state dir>/share/`, served into the guest by virtiofsd with
//! tag [`SHARE_TAG`] and mounted by the agent at [`GUEST_SHARE`]. Each container gets
//! `containers/<cid>/rootfs` and `containers/<cid>/volumes/<n>`; a volume is a bind
//! mount of the user's host dir there, so the guest sees that dir and nothing else of
//! the host.
//!
//! Mounts are owned by [`Share`]: each is unmounted when dropped (lazily with
//! `MNT_DETACH` if busy), before the state dir is removed, so removing the state dir can
//! never reach into a user's directory.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// virtio-fs tag of the sandbox share.
pub const SHARE_TAG: &str = "hullshare";
/// The share's directory name inside a VM state dir.
pub const SHARE_DIR: &str = "share";
/// Where the agent mounts the share in the guest.
pub const GUEST_SHARE: &str = "/run/hull/share";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("invalid container id {0:?} (1-64 characters of [A-Za-z0-9_.-])")]
    BadId(String),
    #[error("volume source {path} is not a directory: {why}")]
    VolumeSource { path: PathBuf, why: String },
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind-mount {source_dir} onto {target}: {errno}")]
    Bind {
        source_dir: PathBuf,
        target: PathBuf,
        errno: nix::errno::Errno,
    },
}

/// A bind mount made by hull; unmounted on drop.
#[derive(Debug)]
pub struct BindGuard {
    target: PathBuf,
}

impl BindGuard {
    pub fn target(&self) -> &Path {
        &self.target
    }
}

impl Drop for BindGuard {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.target, MntFlags::empty()) {
            tracing::debug!(target = %self.target.display(), error = %e, "umount failed; detaching");
            if let Err(e) = umount2(&self.target, MntFlags::MNT_DETACH) {
                if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                    tracing::warn!(target = %self.target.display(), error = %e, "cannot unmount volume");
                }
            }
        }
    }
}

/// The host side of the share of one sandbox.
#[derive(Debug)]
pub struct Share {
    dir: PathBuf,
    mounts: Vec<BindGuard>,
    /// The share is a shared mount point (see [`Share::make_shared`]).
    shared: bool,
}

impl Share {
    /// Creates `<state>/share` (mode 0755: the guest's container processes run as
    /// other users and must traverse it).
    pub fn create(state_dir: &Path) -> Result<Share, ShareError> {
        let dir = state_dir.join(SHARE_DIR);
        mkdir(&dir)?;
        Ok(Share {
            dir,
            mounts: Vec::new(),
            shared: false,
        })
    }

    /// Makes the share a mount point with shared propagation, before virtiofsd starts:
    /// virtiofsd serves it from its own mount namespace (a slave of the host's), so
    /// only then do mounts made later below the share (a pod's later containers) reach
    /// the guest, and their unmounts too. Mounts made below it stay shared for that.
    pub fn make_shared(&mut self) -> Result<(), ShareError> {
        let err = |errno| ShareError::Bind {
            source_dir: self.dir.clone(),
            target: self.dir.clone(),
            errno,
        };
        mount(Some(&self.dir), &self.dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(err)?;
        // Owned first, so unmounted last (mounts are undone in reverse order).
        self.mounts.insert(
            0,
            BindGuard {
                target: self.dir.clone(),
            },
        );
        mount(None::<&str>, &self.dir, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>).map_err(err)?;
        mount(None::<&str>, &self.dir, None::<&str>, MsFlags::MS_SHARED, None::<&str>).map_err(err)?;
        self.shared = true;
        Ok(())
    }

    pub fn host_dir(&self) -> &Path {
        &self.dir
    }

    /// Host path of container `cid`'s dir in the share of the VM whose state dir is
    /// `state_dir` (for another process than the sandbox's owner; nothing is created).
    pub fn container_dir_of(state_dir: &Path, cid: &str) -> Result<PathBuf, ShareError> {
        check_id(cid)?;
        Ok(state_dir.join(SHARE_DIR).join("containers").join(cid))
    }

    /// Host and guest paths of a container's dir (created on the host).
    pub fn container_dir(&self, cid: &str) -> Result<(PathBuf, String), ShareError> {
        check_id(cid)?;
        let host = self.dir.join("containers").join(cid);
        mkdir(&host)?;
        Ok((host, format!("{GUEST_SHARE}/containers/{cid}")))
    }

    /// Bind-mounts host dir `source` at `containers/<cid>/volumes/<n>` (read-only on the
    /// host side too when `readonly`) and returns the guest path.
    pub fn add_volume(
        &mut self,
        cid: &str,
        n: usize,
        source: &Path,
        readonly: bool,
    ) -> Result<String, ShareError> {
        let _s = tracing::info_span!("volume_mount", source = %source.display()).entered();
        let (host, guest) = self.container_dir(cid)?;
        let meta = std::fs::metadata(source).map_err(|e| ShareError::VolumeSource {
            path: source.to_path_buf(),
            why: e.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(ShareError::VolumeSource {
                path: source.to_path_buf(),
                why: "not a directory".into(),
            });
        }
        let target = host.join("volumes").join(n.to_string());
        mkdir(&target)?;
        self.bind(source, &target, readonly)?;
        Ok(format!("{guest}/volumes/{n}"))
    }

    /// Bind-mounts host file `source` at `containers/<cid>/files/<n>` (CRI's hosts,
    /// resolv.conf, hostname, secrets as files) and returns the guest path.
    pub fn add_file(
        &mut self,
        cid: &str,
        n: usize,
        source: &Path,
        readonly: bool,
    ) -> Result<String, ShareError> {
        let (host, guest) = self.container_dir(cid)?;
        let meta = std::fs::metadata(source).map_err(|e| ShareError::VolumeSource {
            path: source.to_path_buf(),
            why: e.to_string(),
        })?;
        if !meta.is_file() {
            return Err(ShareError::VolumeSource {
                path: source.to_path_buf(),
                why: "not a regular file".into(),
            });
        }
        let dir = host.join("files");
        mkdir(&dir)?;
        let target = dir.join(n.to_string());
        std::fs::File::create(&target).map_err(|source| ShareError::Create {
            path: target.clone(),
            source,
        })?;
        self.bind(source, &target, readonly)?;
        Ok(format!("{guest}/files/{n}"))
    }

    /// Bind-mounts `source` (a directory, a file, or a mounted rootfs) onto the existing
    /// `target` below the share, private, read-only when asked; unmounted on drop.
    pub fn bind(&mut self, source: &Path, target: &Path, readonly: bool) -> Result<(), ShareError> {
        let bind_err = |errno| ShareError::Bind {
            source_dir: source.to_path_buf(),
            target: target.to_path_buf(),
            errno,
        };
        mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(bind_err)?;
        // Dropped (unmounted) if a later step fails.
        let guard = BindGuard {
            target: target.to_path_buf(),
        };
        // Our mount must not propagate to (or receive) other mounts, unless the share
        // is shared on purpose (then it reaches virtiofsd's namespace, and only that).
        if !self.shared {
            mount(None::<&str>, target, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>).map_err(bind_err)?;
        }
        if readonly {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(bind_err)?;
        }
        self.mounts.push(guard);
        Ok(())
    }

    /// Takes ownership of a mount made elsewhere at `target` (a container's rootfs), so
    /// it is unmounted with the others.
    pub fn adopt_mount(&mut self, target: &Path) {
        self.mounts.push(BindGuard {
            target: target.to_path_buf(),
        });
    }

    /// Unmounts every mount at or below `dir` that this share owns (one container's),
    /// deepest first.
    pub fn unmount_under(&mut self, dir: &Path) {
        let (mine, rest): (Vec<_>, Vec<_>) = self
            .mounts
            .drain(..)
            .partition(|m| m.target.starts_with(dir));
        self.mounts = rest;
        let mut mine = mine;
        mine.sort_by_key(|m| std::cmp::Reverse(m.target.components().count()));
        drop(mine);
    }

    /// Unmounts every volume now (also done on drop).
    pub fn unmount_all(&mut self) {
        while let Some(m) = self.mounts.pop() {
            drop(m);
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.unmount_all();
    }
}

fn mkdir(path: &Path) -> Result<(), ShareError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|source| ShareError::Create {
            path: path.to_path_buf(),
            source,
        })
}

/// Checks a sandbox or container id: it names a directory, so no path tricks.
pub fn check_id(id: &str) -> Result<(), ShareError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ShareError::BadId(id.to_string()))
    }
}

/// Mount points at or below `dir`, from /proc/self/mounts (octal escapes decoded),
/// deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_escapes() {
        assert!(check_id("c1").is_ok());
        assert!(check_id("../x").is_err());
        assert!(check_id("a/b").is_err());
        assert!(check_id("").is_err());
        assert!(check_id(".hidden").is_err());
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn volumes_are_bind_mounted_read_only_and_unmounted_on_drop() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: bind mounts need root");
            return;
        }
        let t = tempfile::tempdir().expect("tmp");
        let src = t.path().join("src");
        std::fs::create_dir(&src).expect("src");
        std::fs::write(src.join("f"), b"host").expect("f");
        let state = t.path().join("state");
        std::fs::create_dir(&state).expect("state");
        let mut share = Share::create(&state).expect("share");
        let guest = share.add_volume("c1", 0, &src, true).expect("ro volume");
        assert_eq!(guest, "/run/hull/share/containers/c1/volumes/0");
        let target = state.join("share/containers/c1/volumes/0");
        assert_eq!(
            std::fs::read(target.join("f")).expect("through the mount"),
            b"host"
        );
        let err = std::fs::write(target.join("g"), b"x").expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        share.add_volume("c1", 1, &src, false).expect("rw volume");
        std::fs::write(state.join("share/containers/c1/volumes/1/g"), b"x").expect("rw write");
        assert_eq!(mounts_under(&state).len(), 2);
        let err = share
            .add_volume("c1", 2, &src.join("f"), false)
            .expect_err("file");
        assert!(err.to_string().contains("not a directory"), "{err}");
        drop(share);
        assert!(
            mounts_under(&state).is_empty(),
            "mounts left: {:?}",
            mounts_under(&state)
        );
        assert!(src.join("f").exists() && src.join("g").exists());
    }
}
