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
    /// No such container or process.
    #[error("not found: {0}")]
    NotFound(String),
    /// A container or process with that id exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The request does not fit the object's state (start twice, exec into a stopped
    /// container, ...).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The sandbox's policy does not allow the request (debug processes without
    /// `debug_exec`).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The sandbox is being destroyed (ends long polls such as GetOomEvent).
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// Something in the guest failed.
    #[error("{what}: {source}")]
    Internal {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ServiceError {
    pub fn internal(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ServiceError::Internal {
            what: what.into(),
            source: source.into(),
        }
    }
}

impl From<crate::container::spec::SpecError> for ServiceError {
    fn from(e: crate::container::spec::SpecError) -> Self {
        ServiceError::InvalidArgument(e.to_string())
    }
}

impl From<crate::container::sysctl::SysctlError> for ServiceError {
    fn from(e: crate::container::sysctl::SysctlError) -> Self {
        match e {
            crate::container::sysctl::SysctlError::BadKey { .. } => {
                ServiceError::InvalidArgument(e.to_string())
            }
            other => ServiceError::internal("network sysctl", other),
        }
    }
}

impl From<crate::storage::StorageError> for ServiceError {
    fn from(e: crate::storage::StorageError) -> Self {
        match e {
            crate::storage::StorageError::Driver(_)
            | crate::storage::StorageError::Field { .. } => {
                ServiceError::InvalidArgument(e.to_string())
            }
            other => ServiceError::internal("storage", other),
        }
    }
}
