//! PID 1's first act: move the root filesystem from the initramfs onto a tmpfs.
//!
//! `pivot_root(2)` (which libcontainer uses to enter a container's rootfs) fails with
//! EINVAL while the caller's root is the kernel's initial rootfs (the initramfs): that
//! mount can never be unmounted or moved. So, as busybox `switch_root` does, PID 1 copies
//! the (small) initramfs onto a fresh tmpfs, deletes the originals to free their memory,
//! moves the tmpfs over `/` (MS_MOVE), `chroot`s into it and re-executes itself. The
//! re-executed agent sees [`SWITCHED_ENV`] and goes on with the normal start-up.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};

/// Set in the environment of the re-executed agent.
pub const SWITCHED_ENV: &str = "HULL_ROOT_SWITCHED";
/// Where the tmpfs is assembled before it is moved over `/`.
const NEW_ROOT: &str = "/.hull-newroot";

#[derive(Debug, thiserror::Error)]
pub enum SwitchRootError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: nix::Error,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SwitchRootError + 'a {
    move |source| SwitchRootError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn syscall_failed(what: &'static str) -> impl FnOnce(nix::Error) -> SwitchRootError {
    move |source| SwitchRootError::Sys { what, source }
}

/// Whether this PID 1 still has to switch its root (not done yet in this boot).
pub fn needed() -> bool {
    std::env::var_os(SWITCHED_ENV).is_none()
}

/// Copies the initramfs onto a tmpfs, makes it the root and re-executes `/init` with the
/// same arguments. Returns only on failure.
pub fn switch_and_reexec() -> SwitchRootError {
    match switch() {
        Ok(()) => {}
        Err(e) => return e,
    }
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let init = c"/init";
    std::env::set_var(SWITCHED_ENV, "1");
    match nix::unistd::execv(init, &args) {
        Ok(never) => match never {},
        Err(e) => SwitchRootError::Sys {
            what: "re-exec /init",
            source: e,
        },
    }
}

fn switch() -> Result<(), SwitchRootError> {
    let new_root = Path::new(NEW_ROOT);
    std::fs::create_dir_all(new_root).map_err(io_err("mkdir", new_root))?;
    nix::mount::mount(
        Some("rootfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(syscall_failed("mount tmpfs for the new root"))?;
    let root_dev = std::fs::metadata("/")
        .map_err(io_err("stat", Path::new("/")))?
        .dev();
    copy_tree(Path::new("/"), new_root, root_dev)?;
    // Free the initramfs copy: best effort, as busybox switch_root.
    remove_tree(Path::new("/"), root_dev);
    std::env::set_current_dir(new_root).map_err(io_err("chdir", new_root))?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(syscall_failed("move the new root over /"))?;
    nix::unistd::chroot(".").map_err(syscall_failed("chroot"))?;
    std::env::set_current_dir("/").map_err(io_err("chdir", Path::new("/")))?;
    Ok(())
}

/// Copies the entries of `src` (on device `dev` only, skipping the new root) into `dst`.
fn copy_tree(src: &Path, dst: &Path, dev: u64) -> Result<(), SwitchRootError> {
    let entries = std::fs::read_dir(src).map_err(io_err("read dir", src))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read dir", src))?;
        let from = entry.path();
        if from == Path::new(NEW_ROOT) {
            continue;
        }
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from).map_err(io_err("stat", &from))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&to).map_err(io_err("mkdir", &to))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode()))
                .map_err(io_err("chmod", &to))?;
            // Mount points (none in a fresh initramfs) keep their own contents.
            if meta.dev() == dev {
                copy_tree(&from, &to, dev)?;
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(io_err("readlink", &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io_err("symlink", &to))?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to).map_err(io_err("copy", &from))?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            nix::sys::stat::mknod(
                &to,
                kind,
                Mode::from_bits_truncate(meta.mode()),
                meta.rdev(),
            )
            .map_err(syscall_failed("mknod"))?;
        }
    }
    Ok(())
}

/// Deletes what [`copy_tree`] copied from the old root. Errors are ignored.
fn remove_tree(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == Path::new(NEW_ROOT) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if meta.dev() == dev {
                remove_tree(&path, dev);
                let _ = std::fs::remove_dir(&path);
            }
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}
