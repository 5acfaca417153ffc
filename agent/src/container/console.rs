//! Receiving a pty master from libcontainer's console socket.
//!
//! For `process.terminal`, libcontainer opens the pty inside the container (on the
//! container's devpts) and sends the master over a Unix socket named by the caller
//! (runc's `--console-socket` protocol). The agent binds that socket before creating the
//! process and receives the master once creation returned.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

/// A bound console socket waiting for libcontainer's connection.
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> io::Result<ConsoleSocket> {
        let _ = std::fs::remove_file(path);
        Ok(ConsoleSocket {
            listener: UnixListener::bind(path)?,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pty master sent on the (already made) connection. The socket file goes
    /// with `self`, whatever the outcome.
    pub fn receive_master(self) -> io::Result<OwnedFd> {
        // The connection was made by this process during creation; it is queued.
        self.listener.set_nonblocking(true)?;
        let (conn, _) = self.listener.accept().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("no console connection from libcontainer: {e}"),
            )
        })?;
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut name = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<UnixAddr>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut master = None;
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // SAFETY: SCM_RIGHTS just installed `fd` in this process; nothing
                    // else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if master.is_none() {
                        master = Some(owned);
                    }
                }
            }
        }
        master.ok_or_else(|| io::Error::other("console socket message carried no fd"))
    }
}

impl Drop for ConsoleSocket {
    /// The socket file is removed with the socket, also when creation failed before
    /// libcontainer connected.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
