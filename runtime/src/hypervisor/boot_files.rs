//! Checks on the kernel and initrd before a VM is launched, so a wrong path or a
//! corrupt file is reported by name instead of as a guest that never boots.

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BootFileError {
    #[error("{role} {path} does not exist (build it with guest-image/build, or set guest.{key} in the config)")]
    Missing {
        role: &'static str,
        key: &'static str,
        path: PathBuf,
    },
    #[error("{role} {path} cannot be read: {source}")]
    Unreadable {
        role: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{role} {path} is not {expected}")]
    Corrupt {
        role: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
}

/// What kind of kernel image a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF vmlinux (booted through its PVH entry note).
    Elf,
    /// A bzImage (Linux x86 boot protocol).
    BzImage,
}

/// Checks that `path` holds a kernel QEMU and hull-vmm can boot.
pub fn check_kernel(path: &Path) -> Result<KernelFormat, BootFileError> {
    let head = read_head(path, "kernel", "kernel", 0x210)?;
    if head.starts_with(b"\x7fELF") {
        return Ok(KernelFormat::Elf);
    }
    // Linux boot protocol: "HdrS" at offset 0x202 of the setup header.
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootFileError::Corrupt {
        role: "kernel",
        path: path.to_path_buf(),
        expected: "an ELF vmlinux or a bzImage",
    })
}

/// Checks that `path` holds an initramfs: a cpio archive, raw or compressed.
pub fn check_initrd(path: &Path) -> Result<(), BootFileError> {
    let head = read_head(path, "initrd", "initrd", 8)?;
    const MAGICS: &[&[u8]] = &[
        b"070701",                       // cpio newc
        b"070702",                       // cpio newc with crc
        &[0x1f, 0x8b],                   // gzip
        &[0xfd, b'7', b'z', b'X', b'Z'], // xz
        &[0x28, 0xb5, 0x2f, 0xfd],       // zstd
        &[0x02, 0x21, 0x4c, 0x18],       // lz4 legacy
        b"BZh",                          // bzip2
    ];
    if MAGICS.iter().any(|m| head.starts_with(m)) {
        return Ok(());
    }
    Err(BootFileError::Corrupt {
        role: "initrd",
        path: path.to_path_buf(),
        expected: "a cpio initramfs (raw, gzip, xz, zstd, lz4 or bzip2)",
    })
}

fn read_head(
    path: &Path,
    role: &'static str,
    key: &'static str,
    len: usize,
) -> Result<Vec<u8>, BootFileError> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BootFileError::Missing {
                role,
                key,
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(BootFileError::Unreadable {
                role,
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut head = Vec::with_capacity(len);
    f.by_ref()
        .take(len as u64)
        .read_to_end(&mut head)
        .map_err(|source| BootFileError::Unreadable {
            role,
            path: path.to_path_buf(),
            source,
        })?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }

    #[test]
    fn kernel_formats_are_recognised() {
        let d = tempfile::tempdir().expect("tempdir");
        let elf = write(d.path(), "vmlinux", b"\x7fELF\x02\x01\x01");
        assert_eq!(check_kernel(&elf).expect("elf"), KernelFormat::Elf);
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bz = write(d.path(), "bzImage", &bz);
        assert_eq!(check_kernel(&bz).expect("bz"), KernelFormat::BzImage);
    }

    #[test]
    fn corrupt_and_missing_files_are_named() {
        let d = tempfile::tempdir().expect("tempdir");
        let junk = write(d.path(), "junk", b"this is not a kernel");
        let e = check_kernel(&junk).expect_err("junk");
        assert!(e.to_string().contains(&*junk.to_string_lossy()), "{e}");
        let e = check_initrd(&junk).expect_err("junk");
        assert!(e.to_string().contains("initrd"), "{e}");
        let missing = d.path().join("nope");
        let e = check_kernel(&missing).expect_err("missing");
        assert!(matches!(e, BootFileError::Missing { .. }));
        assert!(e.to_string().contains(&*missing.to_string_lossy()));
    }

    #[test]
    fn initrd_magics() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(check_initrd(&write(d.path(), "a", &[0x1f, 0x8b, 8, 0])).is_ok());
        assert!(check_initrd(&write(d.path(), "b", b"070701000")).is_ok());
        assert!(check_initrd(&write(d.path(), "c", b"")).is_err());
    }
}
