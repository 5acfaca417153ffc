//! Firecracker's hybrid vsock, host side: the guest's vsock appears as one host Unix
//! socket `U`.
//! - Host -> guest: connect to `U`, write `CONNECT <port>\n`, read `OK <host_port>\n`;
//!   the stream is then connected to the guest's listener on `<port>`.
//! - Guest -> host port P: arrives as a connection on the host socket `U_P`, which the
//!   host must be listening on.
//!
//! Spoken by vhost-device-vsock (QEMU backend) and by hull-vmm alike.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::uds_path::Reachable;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("cannot connect to the VM's vsock socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock handshake for guest port {port} failed: {what}")]
    Handshake { port: u32, what: String },
    #[error("vsock handshake for guest port {port} timed out after {timeout:?}")]
    Timeout { port: u32, timeout: Duration },
    #[error("cannot listen on {path} for guest connections: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("accepting a guest connection on {path}: {source}")]
    Accept {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Longest handshake reply accepted (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 32;

/// Connects to guest `port` through the hybrid vsock socket `uds`.
pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    tokio::time::timeout(timeout, connect_inner(uds, port))
        .await
        .map_err(|_| VsockError::Timeout { port, timeout })?
}

async fn connect_inner(uds: &Path, port: u32) -> Result<UnixStream, VsockError> {
    let connect_err = |source| VsockError::Connect {
        path: uds.to_path_buf(),
        source,
    };
    let reachable = Reachable::new(uds).map_err(connect_err)?;
    let mut stream = UnixStream::connect(reachable.path())
        .await
        .map_err(connect_err)?;
    drop(reachable);
    let handshake = |what: String| VsockError::Handshake { port, what };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| handshake(format!("write: {e}")))?;
    // Read byte by byte: whatever follows the newline belongs to the protocol that
    // runs on the stream next, and must not be swallowed by a buffer here.
    let mut reply = Vec::with_capacity(MAX_REPLY);
    loop {
        let mut b = [0u8; 1];
        let n = stream
            .read(&mut b)
            .await
            .map_err(|e| handshake(format!("read: {e}")))?;
        if n == 0 {
            return Err(handshake(format!(
                "connection closed (nothing listens on guest port {port}?) after {:?}",
                String::from_utf8_lossy(&reply)
            )));
        }
        if b[0] == b'\n' {
            break;
        }
        if reply.len() >= MAX_REPLY {
            return Err(handshake("reply too long".into()));
        }
        reply.push(b[0]);
    }
    parse_ok(&reply).map_err(handshake)?;
    Ok(stream)
}

/// Validates `OK <host_port>`.
fn parse_ok(reply: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(reply).map_err(|_| "reply is not text".to_string())?;
    let rest = text
        .strip_prefix("OK ")
        .ok_or_else(|| format!("unexpected reply {text:?}"))?;
    rest.trim()
        .parse::<u32>()
        .map_err(|_| format!("unexpected reply {text:?}"))
}

/// Listens for guest-initiated connections to host `port`: binds `<uds>_<port>`.
pub struct GuestListener {
    path: PathBuf,
    listener: UnixListener,
}

impl GuestListener {
    pub fn bind(uds: &Path, port: u32) -> Result<GuestListener, VsockError> {
        let mut name = uds.as_os_str().to_owned();
        name.push(format!("_{port}"));
        let path = PathBuf::from(name);
        let listen_err = |source| VsockError::Listen {
            path: path.clone(),
            source,
        };
        let reachable = Reachable::new(&path).map_err(listen_err)?;
        let listener = UnixListener::bind(reachable.path()).map_err(listen_err)?;
        Ok(GuestListener { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one guest connection. Cancel-safe.
    pub async fn accept(&self) -> Result<UnixStream, VsockError> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(|source| VsockError::Accept {
                path: self.path.clone(),
                source,
            })?;
        Ok(stream)
    }
}

impl Drop for GuestListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_replies() {
        assert_eq!(parse_ok(b"OK 1073741824"), Ok(1073741824));
        assert!(parse_ok(b"ERR").is_err());
        assert!(parse_ok(b"OK x").is_err());
        assert!(parse_ok(b"OK").is_err());
    }

    /// A fake muxer stands in for the VMM side to check the client's half of the
    /// handshake; the real muxers are exercised by the end-to-end tests.
    #[tokio::test]
    async fn handshake_leaves_following_bytes_on_the_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&uds).expect("bind");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut line = [0u8; 13];
            s.read_exact(&mut line).await.expect("read");
            assert_eq!(&line, b"CONNECT 1024\n");
            s.write_all(b"OK 5000\nPAYLOAD").await.expect("write");
        });
        let mut s = connect(&uds, 1024, Duration::from_secs(5))
            .await
            .expect("connect");
        let mut rest = String::new();
        s.read_to_string(&mut rest).await.expect("read");
        assert_eq!(rest, "PAYLOAD");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn refused_handshake_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&uds).expect("bind");
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            drop(s);
        });
        let e = connect(&uds, 1024, Duration::from_secs(5))
            .await
            .expect_err("closed");
        assert!(e.to_string().contains("1024"), "{e}");
        let e = connect(&dir.path().join("none"), 1, Duration::from_secs(1))
            .await
            .expect_err("no socket");
        assert!(matches!(e, VsockError::Connect { .. }));
    }

    #[tokio::test]
    async fn guest_listener_path_and_cleanup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("vsock.sock");
        let l = GuestListener::bind(&uds, 1025).expect("bind");
        let path = l.path().to_path_buf();
        assert!(path.ends_with("vsock.sock_1025"));
        let client = tokio::spawn({
            let path = path.clone();
            async move { UnixStream::connect(path).await.expect("connect") }
        });
        l.accept().await.expect("accept");
        client.await.expect("client");
        drop(l);
        assert!(!path.exists());
    }
}
