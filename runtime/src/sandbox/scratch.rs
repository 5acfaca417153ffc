//! A pod's scratch disk: the virtio-blk disk that holds its containers' writable
//! layers (`[rootfs] writable_layer = "guest-disk"`), so a container's writes and
//! metadata operations are the guest's own ext4 rather than FUSE round trips to the
//! host.
//!
//! The disk is a sparse raw file, `<scratch_dir>/<sandbox id>.img`, copied from a
//! template formatted once per size on the host (`template-<MiB>M-<recipe>.img`,
//! made by `mkfs.ext4` and renamed into place, so a reader never sees half of one).
//! Copying keeps the holes, so a new pod's disk costs the few MiB of ext4 metadata,
//! never an mkfs in the guest. The state dir links to it (`scratch.img`), and
//! whatever removes a state dir ([`remove_linked`]) removes the disk with it: after
//! delete, a killed shim or a killed VM alike.
//!
//! The disk lives and dies with its VM: nothing on it is ever read again after the
//! VM goes, so it has no journal and the backends acknowledge flushes without
//! syncing (a container's fsync cannot outlive the disk anyway).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::agent_client::StorageSpec;

/// The serial the guest finds the disk by (`/sys/block/vdX/serial`).
pub const SERIAL: &str = "hull-scratch";
/// Where the agent mounts it.
pub const GUEST_DIR: &str = "/run/hull/scratch";
/// The state dir's link to the disk.
const LINK: &str = "scratch.img";
/// Bump when the mkfs options change: old templates are then not reused.
const RECIPE: &str = "ext4-v1";
const EXT4_MAGIC_OFFSET: u64 = 1024 + 0x38;
const EXT4_MAGIC: [u8; 2] = [0x53, 0xef];

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("scratch disk: cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("scratch disk: mkfs.ext4 failed making {path}: {detail} (is e2fsprogs installed?)")]
    Mkfs { path: PathBuf, detail: String },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ScratchError {
    let path = path.to_path_buf();
    move |source| ScratchError::Io { what, path, source }
}

/// Where the agent mounts a container's overlay root.
const GUEST_ROOTFS_DIR: &str = "/run/hull/rootfs";

/// Container `cid`'s root with its writable layer on the scratch disk: the guest path
/// of the overlay the agent mounts (what the spec's `root.path` becomes), and that
/// overlay, `shared_root` (the rootfs in the share) read-only below, the writes in
/// `<GUEST_DIR>/<cid>/upper`.
pub fn container_root(cid: &str, shared_root: &str) -> (String, StorageSpec) {
    let root = format!("{GUEST_ROOTFS_DIR}/{cid}");
    let layer = format!("{GUEST_DIR}/{cid}");
    let overlay = StorageSpec::overlay(
        shared_root,
        &format!("{layer}/upper"),
        &format!("{layer}/work"),
        &root,
    );
    (root, overlay)
}

/// A sandbox's scratch disk, open read-write (the fd the hypervisor inherits).
#[derive(Debug)]
pub struct ScratchDisk {
    pub path: PathBuf,
    pub file: File,
}

impl ScratchDisk {
    /// Makes the disk of sandbox `id` (`size_mib`, in `scratch_dir`) and links it from
    /// `state_dir`. On error nothing of it stays.
    pub fn create(
        scratch_dir: &Path,
        state_dir: &Path,
        id: &str,
        size_mib: u64,
    ) -> Result<ScratchDisk, ScratchError> {
        let _span = tracing::info_span!("scratch_disk", size_mib).entered();
        std::fs::create_dir_all(scratch_dir).map_err(io_error("create", scratch_dir))?;
        let template = template(scratch_dir, size_mib)?;
        let path = scratch_dir.join(format!("{id}.img"));
        // The link first: from here on, removing the state dir removes the disk.
        let link = state_dir.join(LINK);
        std::os::unix::fs::symlink(&path, &link).map_err(io_error("link", &link))?;
        let made = copy_sparse(&template, &path);
        match made {
            Ok(file) => Ok(ScratchDisk { path, file }),
            Err(e) => {
                remove_linked(state_dir);
                Err(e)
            }
        }
    }
}

/// Removes the scratch disk `state_dir` links to, if any (and the link).
pub fn remove_linked(state_dir: &Path) {
    let link = state_dir.join(LINK);
    let Ok(target) = std::fs::read_link(&link) else {
        return;
    };
    // Only ever a disk this module named: `<dir>/<id>.img`.
    if target.extension().is_some_and(|e| e == "img") {
        if let Err(e) = std::fs::remove_file(&target) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %target.display(), error = %e, "removing the scratch disk");
            }
        }
    }
    let _ = std::fs::remove_file(&link);
}

/// The formatted template of `size_mib`, made when missing or not a whole ext4 image
/// of that size (a corrupt or truncated one is replaced).
fn template(dir: &Path, size_mib: u64) -> Result<PathBuf, ScratchError> {
    let path = dir.join(format!("template-{size_mib}M-{RECIPE}.img"));
    let size = size_mib << 20;
    if is_ext4_of_size(&path, size) {
        return Ok(path);
    }
    if path.exists() {
        tracing::warn!(path = %path.display(), "the scratch template is not a whole ext4 image; making it again");
    }
    let tmp = dir.join(format!(
        ".template-{size_mib}M-{RECIPE}.{}.tmp",
        std::process::id()
    ));
    let made = make_template(&tmp, size)
        .and_then(|()| std::fs::rename(&tmp, &path).map_err(io_error("rename into place", &path)));
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made.map(|()| path)
}

fn make_template(tmp: &Path, size: u64) -> Result<(), ScratchError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io_error("create", tmp))?;
    file.set_len(size).map_err(io_error("size", tmp))?;
    drop(file);
    // No journal (the disk dies with its VM); discard on a file punches holes, so
    // mke2fs knows the inode tables read as zeros and the guest never zeroes them.
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-m", "0", "-L", SERIAL])
        .args(["-E", "discard,lazy_itable_init=1"])
        .arg(tmp)
        .output()
        .map_err(|e| ScratchError::Mkfs {
            path: tmp.to_path_buf(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ScratchError::Mkfs {
            path: tmp.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_error("sync", tmp))
}

fn is_ext4_of_size(path: &Path, size: u64) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let mut magic = [0u8; 2];
    f.metadata().is_ok_and(|m| m.len() == size)
        && f.seek(SeekFrom::Start(EXT4_MAGIC_OFFSET)).is_ok()
        && f.read_exact(&mut magic).is_ok()
        && magic == EXT4_MAGIC
}

/// Copies `from` to the new file `to` (mode 0600), only its data extents: the holes
/// stay holes. A filesystem that cannot tell holes (9p, some FUSE) reports the whole
/// file as data: all-zero blocks are then skipped, so the copy stays sparse anyway.
fn copy_sparse(from: &Path, to: &Path) -> Result<File, ScratchError> {
    use nix::unistd::{lseek, Whence};
    let src = File::open(from).map_err(io_error("open", from))?;
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io_error("create", to))?;
    let len = src.metadata().map_err(io_error("stat", from))?.len();
    dst.set_len(len).map_err(io_error("size", to))?;
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    let mut buf = vec![0u8; 1 << 20];
    let mut at: i64 = 0;
    while at < end {
        let data = match lseek(src.as_raw_fd(), at, Whence::SeekData) {
            Ok(d) => d,
            // ENXIO: no data after `at`.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(io_error("seek in", from)(e.into())),
        };
        let hole = lseek(src.as_raw_fd(), data, Whence::SeekHole)
            .map_err(|e| io_error("seek in", from)(e.into()))?;
        let mut off = u64::try_from(data).unwrap_or(0);
        let stop = u64::try_from(hole).unwrap_or(0);
        while off < stop {
            let want = usize::try_from(stop - off)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = src
                .read_at(&mut buf[..want], off)
                .map_err(io_error("read", from))?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                dst.write_all_at(&buf[..n], off)
                    .map_err(io_error("write", to))?;
            }
            off += n as u64;
        }
        at = hole;
    }
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mkfs_available() -> bool {
        Command::new("mkfs.ext4").arg("-V").output().is_ok()
    }

    #[test]
    fn a_disk_is_a_sparse_ext4_copy_removed_with_its_state_dir() {
        if !mkfs_available() {
            eprintln!("SKIP: mkfs.ext4 (e2fsprogs) is not installed");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let scratch = tmp.path().join("scratch");
        let state = tmp.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let disk = ScratchDisk::create(&scratch, &state, "abc", 1024).unwrap();
        let meta = disk.file.metadata().unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(
            meta.blocks() * 512 < 64 << 20,
            "the copy is sparse: {} bytes allocated",
            meta.blocks() * 512
        );
        assert!(is_ext4_of_size(&disk.path, 1 << 30));
        assert_eq!(meta.mode() & 0o777, 0o600);
        // A second pod reuses the template.
        let templates = || {
            std::fs::read_dir(&scratch)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("template-")
                })
                .count()
        };
        assert_eq!(templates(), 1);
        remove_linked(&state);
        assert!(!disk.path.exists());
        assert!(!state.join(LINK).exists());
        remove_linked(&state);
    }

    #[test]
    fn a_corrupt_template_is_made_again() {
        if !mkfs_available() {
            eprintln!("SKIP: mkfs.ext4 (e2fsprogs) is not installed");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let t = template(tmp.path(), 64).unwrap();
        std::fs::write(&t, b"not a filesystem").unwrap();
        assert!(!is_ext4_of_size(&t, 64 << 20));
        let again = template(tmp.path(), 64).unwrap();
        assert_eq!(again, t);
        assert!(is_ext4_of_size(&t, 64 << 20));
    }

    #[test]
    fn written_zeros_are_not_copied() {
        // What a filesystem without SEEK_HOLE shows: zeros as data.
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("from");
        let mut data = vec![0u8; 8 << 20];
        data[(4 << 20) + 7] = 0xaa;
        std::fs::write(&from, &data).unwrap();
        let to = tmp.path().join("to");
        let copy = copy_sparse(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), data);
        let allocated = copy.metadata().unwrap().blocks() * 512;
        assert!(allocated <= 1 << 20, "{allocated} bytes allocated");
    }

    #[test]
    fn a_state_dir_without_a_disk_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let other = tmp.path().join("keep.txt");
        std::fs::write(&other, "x").unwrap();
        std::os::unix::fs::symlink(&other, tmp.path().join(LINK)).unwrap();
        remove_linked(tmp.path());
        assert!(other.exists(), "only a .img target is ever removed");
    }
}
