//! Readiness announcement: once the server listens, the agent connects to the host and
//! writes `HULL-AGENT-READY <api_version>\n`; only then does the host connect to the
//! agent. (Polling the guest's port early can kill vhost-device-vsock's vsock for good:
//! see PLATFORM.md, "vsock readiness".)

use std::time::Duration;

use hull_proto::{ANNOUNCE_PREFIX, API_VERSION};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_vsock::{VsockAddr, VsockStream};
use tracing::{info, warn};

use crate::config::AnnounceTarget;

/// Connection attempts before giving up (the agent keeps serving either way).
pub const ATTEMPTS: u32 = 6;
/// Delay before the second attempt; doubled after each failure (0.1 + 0.2 + ... 3.1 s).
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Bound on one connect + write.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("write to {target}: {source}")]
    Write {
        target: String,
        source: std::io::Error,
    },
    #[error("{target} did not answer within {ATTEMPT_TIMEOUT:?}")]
    Timeout { target: String },
}

/// The announcement line.
pub fn line() -> String {
    format!("{ANNOUNCE_PREFIX} {API_VERSION}\n")
}

fn describe(target: &AnnounceTarget) -> String {
    match target {
        AnnounceTarget::Vsock { cid, port } => format!("vsock://{cid}:{port}"),
        AnnounceTarget::Unix(path) => format!("unix://{}", path.display()),
    }
}

/// Announces readiness, retrying with backoff. Returns whether the host was told.
pub async fn announce(target: AnnounceTarget) -> bool {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, announce_once(&target)).await {
            Ok(Ok(())) => {
                info!(target = %describe(&target), attempt, "announced readiness");
                return true;
            }
            Ok(Err(e)) => warn!(error = %e, attempt, "announce failed"),
            Err(_) => warn!(
                error = %AnnounceError::Timeout { target: describe(&target) },
                attempt,
                "announce failed"
            ),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    warn!(
        target = %describe(&target),
        "gave up announcing readiness; serving anyway (the host will not connect unless it polls)"
    );
    false
}

async fn announce_once(target: &AnnounceTarget) -> Result<(), AnnounceError> {
    let name = || describe(target);
    let connect_err = |source| AnnounceError::Connect {
        target: name(),
        source,
    };
    match target {
        AnnounceTarget::Vsock { cid, port } => {
            let stream = VsockStream::connect(VsockAddr::new(*cid, *port))
                .await
                .map_err(connect_err)?;
            write_line(stream).await
        }
        AnnounceTarget::Unix(path) => {
            let stream = UnixStream::connect(path).await.map_err(connect_err)?;
            write_line(stream).await
        }
    }
    .map_err(|source| AnnounceError::Write {
        target: name(),
        source,
    })
}

/// Writes the line and closes our side; the host reads up to EOF or the newline.
async fn write_line<S: AsyncWrite + Unpin>(mut stream: S) -> std::io::Result<()> {
    stream.write_all(line().as_bytes()).await?;
    stream.shutdown().await
}
