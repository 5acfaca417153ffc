//! Applies image layers (tar, tar+gzip) onto a rootfs directory, with OCI whiteouts.
//!
//! Safety: nothing may be written outside the rootfs. Each layer is read twice: the
//! first pass applies its whiteouts (they only ever remove what lower layers made), the
//! second extracts its entries with `tar`'s `unpack_in`, which refuses `..` components
//! and canonicalizes every parent directory, so a symlink planted by a lower layer
//! (`evil -> /etc`) cannot redirect a later write (`evil/passwd`) out of the rootfs.
//! Regular files are created fresh (an existing symlink at the path is replaced, never
//! followed) and hard link targets are checked to be inside the rootfs.

use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Compression of a layer blob, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn sniff(path: &Path) -> Result<Compression, ImageError> {
    let mut f = std::fs::File::open(path).map_err(|source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(source) => {
                return Err(ImageError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(match &magic[..got] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    })
}

fn open_layer(path: &Path, digest: &str) -> Result<Box<dyn Read>, ImageError> {
    let file = std::fs::File::open(path).map_err(|source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = BufReader::with_capacity(1 << 16, file);
    Ok(match sniff(path)? {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => {
            return Err(ImageError::Layer {
                digest: digest.to_string(),
                message: "zstd-compressed layers are not supported yet (use tar or tar+gzip)"
                    .into(),
            })
        }
    })
}

/// Applies one layer blob at `path` onto `rootfs`.
pub fn apply_layer(rootfs: &Path, path: &Path, digest: &str) -> Result<(), ImageError> {
    let layer_err = |message: String| ImageError::Layer {
        digest: digest.to_string(),
        message,
    };
    // Pass 1: whiteouts.
    let mut archive = tar::Archive::new(open_layer(path, digest)?);
    for entry in archive.entries().map_err(|e| layer_err(e.to_string()))? {
        let entry = entry.map_err(|e| layer_err(e.to_string()))?;
        let p = entry
            .path()
            .map_err(|e| layer_err(e.to_string()))?
            .into_owned();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name == OPAQUE {
            let dir = p.parent().unwrap_or(Path::new(""));
            clear_dir(rootfs, dir)
                .map_err(|e| layer_err(format!("opaque whiteout {}: {e}", p.display())))?;
        } else if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            let victim = p.with_file_name(target);
            remove_in(rootfs, &victim)
                .map_err(|e| layer_err(format!("whiteout {}: {e}", p.display())))?;
        }
    }
    // Pass 2: everything else.
    let mut archive = tar::Archive::new(open_layer(path, digest)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(true);
    for entry in archive.entries().map_err(|e| layer_err(e.to_string()))? {
        let mut entry = entry.map_err(|e| layer_err(e.to_string()))?;
        let p = entry
            .path()
            .map_err(|e| layer_err(e.to_string()))?
            .into_owned();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(WHITEOUT_PREFIX))
        {
            continue;
        }
        // A directory entry over an existing non-directory replaces it (a later layer
        // turning a file into a directory); `tar` would refuse.
        if entry.header().entry_type().is_dir() {
            if let Some(rel) = clean_relative(&p) {
                if let Ok(meta) = std::fs::symlink_metadata(rootfs.join(&rel)) {
                    if !meta.is_dir() {
                        remove_in(rootfs, &rel).map_err(|e| layer_err(e.to_string()))?;
                    }
                }
            }
        } else if let Some(rel) = clean_relative(&p) {
            // A non-directory over an existing directory replaces it.
            if let Ok(meta) = std::fs::symlink_metadata(rootfs.join(&rel)) {
                if meta.is_dir() {
                    remove_in(rootfs, &rel).map_err(|e| layer_err(e.to_string()))?;
                }
            }
        }
        let unpacked = entry
            .unpack_in(rootfs)
            .map_err(|e| layer_err(format!("{}: {}", p.display(), chain(&e))))?;
        if !unpacked {
            return Err(layer_err(format!(
                "entry {} points outside the rootfs",
                p.display()
            )));
        }
    }
    Ok(())
}

/// `p` as a relative path of normal components only; None for `..` or an empty path.
pub fn clean_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    }
}

/// Checks that the parent of `rootfs/rel` resolves inside `rootfs` (no symlinked
/// parent leads out). Returns the full path, or None when the parent does not exist.
fn inside(rootfs: &Path, rel: &Path) -> std::io::Result<Option<PathBuf>> {
    let full = rootfs.join(rel);
    let parent = match full.parent() {
        Some(p) => p,
        None => return Ok(None),
    };
    let canon_parent = match parent.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let canon_root = rootfs.canonicalize()?;
    if !canon_parent.starts_with(&canon_root) {
        return Err(std::io::Error::other(format!(
            "{} resolves outside the rootfs",
            rel.display()
        )));
    }
    Ok(Some(full))
}

/// Removes `rootfs/rel` (file, symlink or whole tree) without following symlinks.
fn remove_in(rootfs: &Path, rel: &Path) -> std::io::Result<()> {
    let Some(rel) = clean_relative(rel) else {
        return Err(std::io::Error::other(format!("bad path {}", rel.display())));
    };
    let Some(full) = inside(rootfs, &rel)? else {
        return Ok(());
    };
    match std::fs::symlink_metadata(&full) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&full),
        Ok(_) => std::fs::remove_file(&full),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Empties directory `rootfs/dir` (what lower layers put there), keeping the directory.
fn clear_dir(rootfs: &Path, dir: &Path) -> std::io::Result<()> {
    let (full, rel) = match clean_relative(dir) {
        Some(rel) => match inside(rootfs, &rel)? {
            Some(full) => (full, rel),
            None => return Ok(()),
        },
        None => (rootfs.to_path_buf(), PathBuf::new()),
    };
    match std::fs::symlink_metadata(&full) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    for child in std::fs::read_dir(&full)? {
        let child = child?;
        remove_in(rootfs, &rel.join(child.file_name()))?;
    }
    Ok(())
}

/// An error with its sources, `a: b: c` (tar's own errors keep the cause in `source`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
