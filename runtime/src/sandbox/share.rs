//! The sandbox share: `<vm state dir>/share/`, served into the guest by virtiofsd with
//! tag [`SHARE_TAG`] and mounted by the agent at [`GUEST_SHARE`]. Each container gets
//! `containers/<cid>/rootfs` and `containers/<cid>/volumes/<n>`; a volume is a bind
//! mount of the user's host dir there, so the guest sees that dir and nothing else of
//! the host.
//!
//! A volume is bound recursively by default (what is mounted below the host dir is part
//! of the volume, as runc's `rbind`), read-only recursively when asked, with its own
//! propagation ([`Propagation`]): made with the mount API on a detached copy of the
//! host tree (`open_tree`, `mount_setattr` with `AT_RECURSIVE`, `move_mount`), so no
//! half-made mount is ever visible and a failure leaves nothing mounted.
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
    #[error("cannot mount volume {source_dir} onto {target}: {step}: {errno}{hint}")]
    Volume {
        source_dir: PathBuf,
        target: PathBuf,
        step: &'static str,
        errno: nix::errno::Errno,
        /// Why, when the errno alone does not say (an old kernel).
        hint: &'static str,
    },
}

/// The mount propagation of a volume on the host side of the share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// Nothing mounted or unmounted below the host dir afterwards reaches the volume
    /// (`rprivate`, CRI's `PROPAGATION_PRIVATE`).
    #[default]
    Private,
    /// Mounts made on the host below the host dir afterwards reach the volume, and so
    /// virtiofsd and the guest (`rslave`, CRI's `PROPAGATION_HOST_TO_CONTAINER`). Only
    /// from a shared (or slave) host mount, as under runc.
    Slave,
}

/// How a volume is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeMount {
    /// Read-only, on the host side too (recursively when `recursive`).
    pub readonly: bool,
    /// Mounts below the host dir are part of the volume (`rbind`); else only the dir's
    /// own filesystem (`bind`).
    pub recursive: bool,
    pub propagation: Propagation,
}

impl VolumeMount {
    /// A recursive, private bind (`rbind,rprivate`), read-only when asked.
    pub fn rbind(readonly: bool) -> VolumeMount {
        VolumeMount {
            readonly,
            recursive: true,
            propagation: Propagation::Private,
        }
    }
}

/// A bind mount made by hull; unmounted on drop (with what is mounted below it, when
/// `tree`).
#[derive(Debug)]
pub struct BindGuard {
    target: PathBuf,
    tree: bool,
}

impl BindGuard {
    pub fn target(&self) -> &Path {
        &self.target
    }
}

impl Drop for BindGuard {
    fn drop(&mut self) {
        if self.tree {
            // Submounts first, deepest first (the target is last: it is the least deep).
            // They are copies in the share's mount: the host dir's own mounts stay.
            for m in mounts_under(&self.target) {
                if m != self.target && umount2(&m, MntFlags::empty()).is_err() {
                    let _ = umount2(&m, MntFlags::MNT_DETACH);
                }
            }
        }
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
        mount(
            Some(&self.dir),
            &self.dir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err)?;
        // Owned first, so unmounted last (mounts are undone in reverse order).
        self.mounts.insert(
            0,
            BindGuard {
                target: self.dir.clone(),
                tree: false,
            },
        );
        mount(
            None::<&str>,
            &self.dir,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(err)?;
        mount(
            None::<&str>,
            &self.dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(err)?;
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

    /// Bind-mounts host dir `source` recursively at `containers/<cid>/volumes/<n>`
    /// (read-only on the host side too when `readonly`), private, and returns the guest
    /// path.
    pub fn add_volume(
        &mut self,
        cid: &str,
        n: usize,
        source: &Path,
        readonly: bool,
    ) -> Result<String, ShareError> {
        self.add_volume_with(cid, n, source, VolumeMount::rbind(readonly))
    }

    /// Mounts host dir `source` at `containers/<cid>/volumes/<n>` as `how` says and
    /// returns the guest path.
    pub fn add_volume_with(
        &mut self,
        cid: &str,
        n: usize,
        source: &Path,
        how: VolumeMount,
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
        mount_tree(source, &target, how)?;
        self.mounts.push(BindGuard { target, tree: true });
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
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(bind_err)?;
        // Dropped (unmounted) if a later step fails.
        let guard = BindGuard {
            target: target.to_path_buf(),
            tree: false,
        };
        // Our mount must not propagate to (or receive) other mounts, unless the share
        // is shared on purpose (then it reaches virtiofsd's namespace, and only that).
        if !self.shared {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(bind_err)?;
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
            tree: false,
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

/// The mount API (Linux 5.2; `mount_setattr` 5.12): not in nix 0.29.
mod mount_api {
    pub const OPEN_TREE_CLONE: libc::c_uint = 1;
    pub const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
    pub const AT_RECURSIVE: libc::c_uint = 0x8000;
    pub const AT_EMPTY_PATH: libc::c_uint = libc::AT_EMPTY_PATH as libc::c_uint;
    pub const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    pub const MOUNT_ATTR_RDONLY: u64 = 1;

    /// `struct mount_attr` (version 0, 32 bytes).
    #[repr(C)]
    #[derive(Default)]
    pub struct MountAttr {
        pub attr_set: u64,
        pub attr_clr: u64,
        pub propagation: u64,
        pub userns_fd: u64,
    }
}

/// Mounts a copy of the tree at `source` (only its top mount unless `how.recursive`)
/// onto `target`: cloned detached, given its flags and propagation there, then moved
/// into place. Until the move nothing is visible; on error the detached copy goes with
/// its file descriptor.
fn mount_tree(source: &Path, target: &Path, how: VolumeMount) -> Result<(), ShareError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    use mount_api::*;
    let err = |step: &'static str, errno: nix::errno::Errno| ShareError::Volume {
        source_dir: source.to_path_buf(),
        target: target.to_path_buf(),
        step,
        errno,
        hint: if errno == nix::errno::Errno::ENOSYS {
            " (hull needs Linux 5.12 or newer for volumes: open_tree, mount_setattr)"
        } else {
            ""
        },
    };
    let cpath = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| nix::errno::Errno::EINVAL)
    };
    let src = cpath(source).map_err(|e| err("path", e))?;
    let dst = cpath(target).map_err(|e| err("path", e))?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    if how.recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: open_tree with a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, src.as_ptr(), flags) };
    if fd < 0 {
        return Err(err("open_tree", nix::errno::Errno::last()));
    }
    let fd = i32::try_from(fd).map_err(|_| err("open_tree", nix::errno::Errno::EBADF))?;
    // SAFETY: the kernel just returned this new descriptor; we own it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    let attr = MountAttr {
        attr_set: if how.readonly { MOUNT_ATTR_RDONLY } else { 0 },
        propagation: match how.propagation {
            Propagation::Private => libc::MS_PRIVATE,
            Propagation::Slave => libc::MS_SLAVE,
        },
        ..Default::default()
    };
    let mut at = AT_EMPTY_PATH;
    if how.recursive {
        at |= AT_RECURSIVE;
    }
    // SAFETY: mount_setattr on our descriptor with an empty path and a struct of the
    // size passed; the result is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(err("mount_setattr", nix::errno::Errno::last()));
    }
    // SAFETY: move_mount from our descriptor to a NUL-terminated path; checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(err("move_mount", nix::errno::Errno::last()));
    }
    Ok(())
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

    /// Unmounts what a test mounted, deepest first, even when it fails.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            for m in mounts_under(&self.0) {
                let _ = umount2(&m, MntFlags::MNT_DETACH);
            }
        }
    }

    fn tmpfs(at: &Path) {
        mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("tmpfs");
    }

    fn is_mount_point(p: &Path) -> bool {
        mounts_under(p).iter().any(|m| m == p)
    }

    #[test]
    fn volumes_are_recursive_read_only_throughout_and_keep_their_propagation() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: mounts need root");
            return;
        }
        let t = tempfile::tempdir().expect("tmp");
        let _cleanup = Unmount(t.path().to_path_buf());
        // The host dir lives on a shared mount (as / is under systemd), with a tmpfs
        // mounted below it.
        let host = t.path().join("host");
        std::fs::create_dir(&host).expect("host");
        mount(
            Some(&host),
            &host,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind");
        mount(
            None::<&str>,
            &host,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("private");
        mount(
            None::<&str>,
            &host,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .expect("shared");
        let src = host.join("vol");
        std::fs::create_dir_all(src.join("sub")).expect("sub");
        std::fs::create_dir_all(src.join("later")).expect("later");
        tmpfs(&src.join("sub"));
        std::fs::write(src.join("sub/f"), b"on tmpfs").expect("f");
        let state = t.path().join("state");
        std::fs::create_dir(&state).expect("state");
        let mut share = Share::create(&state).expect("share");
        share.make_shared().expect("shared share");
        let vol = |n: usize| state.join(format!("share/containers/c1/volumes/{n}"));

        // 0: rbind, rw: the submount is there and writable.
        share.add_volume("c1", 0, &src, false).expect("rw");
        assert_eq!(
            std::fs::read(vol(0).join("sub/f")).expect("through"),
            b"on tmpfs"
        );
        std::fs::write(vol(0).join("sub/g"), b"x").expect("the submount is writable");
        // 1: rbind, ro: read-only on the submount too.
        share.add_volume("c1", 1, &src, true).expect("ro");
        let e = std::fs::write(vol(1).join("sub/h"), b"x").expect_err("ro submount");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let e = std::fs::write(vol(1).join("h"), b"x").expect_err("ro top");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        // 2: bind only: the host dir's own filesystem, no submount.
        let plain = VolumeMount {
            readonly: false,
            recursive: false,
            propagation: Propagation::Private,
        };
        share.add_volume_with("c1", 2, &src, plain).expect("bind");
        assert!(!vol(2).join("sub/f").exists());
        // 3: rslave: a mount made on the host afterwards arrives; 0 (rprivate) gets none.
        let slave = VolumeMount {
            propagation: Propagation::Slave,
            ..VolumeMount::rbind(false)
        };
        share.add_volume_with("c1", 3, &src, slave).expect("rslave");
        tmpfs(&src.join("later"));
        std::fs::write(src.join("later/new"), b"late").expect("new");
        assert_eq!(
            std::fs::read(vol(3).join("later/new")).expect("propagated"),
            b"late"
        );
        assert!(
            !vol(0).join("later/new").exists(),
            "rprivate must not receive host mounts"
        );
        // Unmounting the volumes leaves the host's own mounts alone.
        drop(share);
        assert!(
            mounts_under(&state).is_empty(),
            "mounts left: {:?}",
            mounts_under(&state)
        );
        assert!(is_mount_point(&src.join("sub")) && is_mount_point(&src.join("later")));
        assert_eq!(std::fs::read(src.join("sub/g")).expect("g"), b"x");
    }
}
