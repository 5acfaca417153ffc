//! The one error type of the service layer. `rpc.rs` maps it to a ttrpc status code.

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The RPC exists in the API but this agent does not implement it (yet).
    #[error("{rpc} is not implemented by hull-agent {}", env!("CARGO_PKG_VERSION"))]
    Unimplemented { rpc: &'static str },
    /// The request is malformed or asks for something not allowed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Something in the guest failed.
    #[error("{what}: {source}")]
    Internal {
        what: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ServiceError {
    pub fn internal(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ServiceError::Internal {
            what,
            source: source.into(),
        }
    }
}
