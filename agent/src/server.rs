//! The ttrpc server: listen (vsock in the guest, a unix socket outside), serve
//! [`Rpc`], shut down.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use hull_proto::agent_ttrpc::create_agent_service;
use tracing::{info, warn};
use ttrpc::r#async::Server;

use crate::config::ListenAddr;
use crate::rpc::Rpc;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listen on {addr}: {source}")]
    Bind { addr: String, source: ttrpc::Error },
    #[error("start serving on {addr}: {source}")]
    Start { addr: String, source: ttrpc::Error },
    #[error("{path} is in use by another listener")]
    InUse { path: String },
    #[error("remove stale socket {path}: {source}")]
    Stale { path: String, source: io::Error },
}

/// A started server.
pub struct Listening {
    server: Server,
    addr: ListenAddr,
}

/// Binds `addr`, registers the agent service and starts accepting connections (in a
/// task on the current runtime). When this returns the socket accepts connections.
pub async fn start(addr: &ListenAddr, rpc: Rpc) -> Result<Listening, ServerError> {
    let text = addr.to_ttrpc();
    if let ListenAddr::Unix(path) = addr {
        remove_stale_socket(path)?;
    }
    let mut server = Server::new()
        .bind(&text)
        .map_err(|source| ServerError::Bind {
            addr: text.clone(),
            source,
        })?
        .register_service(create_agent_service(Arc::new(rpc)));
    server.start().await.map_err(|source| ServerError::Start {
        addr: text.clone(),
        source,
    })?;
    info!(addr = %text, "serving the agent API");
    Ok(Listening {
        server,
        addr: addr.clone(),
    })
}

impl Listening {
    /// Stops accepting, closes connections (bounded by ttrpc's shutdown timeout) and
    /// removes a unix socket file.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.server.shutdown().await {
            warn!(error = %e, "server shutdown");
        }
        if let ListenAddr::Unix(path) = &self.addr {
            if let Err(e) = std::fs::remove_file(path) {
                warn!(path = %path.display(), error = %e, "could not remove the socket");
            }
        }
    }
}

/// A unix socket left by an agent that died is removed; one that still accepts
/// connections is an error (two agents on one socket would steal each other's clients).
fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    let shown = || path.display().to_string();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {}
        // Not there: fine. Something else: let bind report it.
        _ => return Ok(()),
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServerError::InUse { path: shown() });
    }
    std::fs::remove_file(path).map_err(|source| ServerError::Stale {
        path: shown(),
        source,
    })
}
