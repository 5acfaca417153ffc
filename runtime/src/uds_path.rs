//! Unix socket paths longer than `sockaddr_un` holds.
//!
//! A socket address is at most 107 bytes, while a sandbox's socket dir sits under a
//! state dir the user chooses (`<state>/vms/<id>/jail/sock/`), so a deep state dir
//! would make the sockets unreachable by path. Two ways around it, one per side:
//! - in this process: bind or connect through `/proc/self/fd/<dir fd>/<name>`, where
//!   the dir fd is an `O_PATH` descriptor of the socket's parent ([`Reachable`]);
//! - in a helper process (QEMU, hull-vmm, vhost-device-vsock, virtiofsd): start it
//!   with the socket dir as its working directory and hand it the bare socket name
//!   when the full path would not fit ([`for_helper`]). (A path that fits is handed
//!   whole: it names the sandbox in the helper's command line, for whoever looks.)

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Longest path `sockaddr_un.sun_path` holds with its terminating NUL.
const SUN_PATH_MAX: usize = 107;

/// A path by which a socket at `path` can be bound or connected to. Keep it alive until
/// the bind or connect is done: it may hold the descriptor the path goes through.
#[derive(Debug)]
pub struct Reachable {
    path: PathBuf,
    _dir: Option<OwnedFd>,
}

impl Reachable {
    pub fn new(path: &Path) -> std::io::Result<Reachable> {
        if path.as_os_str().len() <= SUN_PATH_MAX {
            return Ok(Reachable {
                path: path.to_path_buf(),
                _dir: None,
            });
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "socket path {} has no parent dir or file name",
                    path.display()
                ),
            ));
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let dir: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(parent)?
            .into();
        let mut short = OsString::from(format!("/proc/self/fd/{}/", dir.as_raw_fd()));
        short.push(name);
        if short.len() > SUN_PATH_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("socket name {name:?} is too long even relative to its dir"),
            ));
        }
        Ok(Reachable {
            path: PathBuf::from(short),
            _dir: Some(dir),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Room left for a port suffix (`_4294967295`): the hybrid-vsock backends listen on
/// and connect to `<socket>_<port>`.
const PORT_SUFFIX_MAX: usize = 11;

/// How a helper process that runs in `dir` (its working directory) is to name its
/// socket `name`: the full path when it (with a port suffix) fits in a socket
/// address, else `name` alone.
pub fn for_helper(dir: &Path, name: &str) -> PathBuf {
    let full = dir.join(name);
    if full.as_os_str().len() + PORT_SUFFIX_MAX <= SUN_PATH_MAX {
        full
    } else {
        PathBuf::from(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_bound_and_connected_through_the_dir_fd() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut dir = tmp.path().to_path_buf();
        while dir.as_os_str().len() < 150 {
            dir.push("a-rather-long-dir-name");
        }
        std::fs::create_dir_all(&dir).expect("mkdir");
        let sock = dir.join("vsock.sock_1025");
        assert!(
            std::os::unix::net::UnixListener::bind(&sock).is_err(),
            "too long to bind directly"
        );
        let r = Reachable::new(&sock).expect("reachable");
        let listener = std::os::unix::net::UnixListener::bind(r.path()).expect("bind");
        drop(r);
        assert!(sock.exists(), "the socket is made at its real path");
        let r = Reachable::new(&sock).expect("reachable");
        let _client = std::os::unix::net::UnixStream::connect(r.path()).expect("connect");
        listener.accept().expect("accept");
        let short = tmp.path().join("s");
        assert_eq!(Reachable::new(&short).expect("short").path(), short);
    }

    #[test]
    fn helpers_get_the_full_path_when_it_fits_else_the_name() {
        let short = Path::new("/run/hull/vms/0123456789abcdef/jail/sock");
        assert_eq!(for_helper(short, "vsock.sock"), short.join("vsock.sock"));
        let deep = Path::new("/tmp").join("d".repeat(90));
        assert_eq!(for_helper(&deep, "vsock.sock"), PathBuf::from("vsock.sock"));
    }

    #[test]
    fn a_path_without_a_parent_dir_is_refused_by_name() {
        let long = "x".repeat(200);
        let e = Reachable::new(Path::new(&long)).expect_err("no parent");
        assert!(e.to_string().contains("socket"), "{e}");
    }
}
