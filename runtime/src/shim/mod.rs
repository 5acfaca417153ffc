//! The containerd shim v2 (`containerd-shim-hull-v2`, runtime `io.containerd.hull.v2`).
//!
//! containerd starts one shim per task (or, with CRI annotations, per pod) and talks to
//! it over ttrpc (task API v2). The shim owns one sandbox VM and runs every container
//! of the task or pod in it. Requests flow one way, each verb a short script:
//!
//! ```text
//! containerd -> task.rs (ttrpc Task: protocol types in and out)
//!            -> service.rs (one verb: the steps, in order)
//!            -> spec.rs (the container's spec, read once) | pod.rs (the VM) |
//!               process.rs (a container's processes and their watchers)
//!            -> sandbox/ + agent_client/ (-> vsock -> the agent)
//! ```
//!
//! [`pod`] holds the shim's one pod ([`pod::PodSlot`]: a container added, the first
//! one booting the VM) and a pod's whole boot as a list of steps (`Pod::boot`), each in
//! the module that owns its data: [`vm_size`] (the VM's memory and vCPUs),
//! [`pod_network`] (the pod's netns wired into the VM, host network refused),
//! [`host_cgroup`] (the pod's cgroup on the host, where the VM's memory is charged),
//! [`container_files`] (rootfs, volumes and guest spec in the share); a failed boot is
//! undone in one place. The rest: [`lifecycle`] (the `start`/`delete` sub-commands),
//! [`io`] (containerd's FIFOs <-> the agent's streams), [`events`] (publishing to
//! containerd), [`convert`] (containerd's protocol types), [`options`] (runtime
//! options), [`record`] (what `delete` needs after a crash of the shim), [`hooks`]
//! (the spec's OCI hooks, run on the host at Create, Start and Delete).

pub mod container_files;
pub mod convert;
pub mod events;
pub mod hooks;
pub mod host_cgroup;
pub mod io;
pub mod keeper;
pub mod lifecycle;
pub mod logger;
pub mod options;
pub mod pod;
pub mod pod_network;
pub mod port_forward;
pub mod process;
pub mod record;
pub mod service;
pub mod spec;
pub mod task;
pub mod vm_size;
pub mod warm;

pub use lifecycle::HullShim;

/// The runtime name containerd knows hull by.
pub const RUNTIME_ID: &str = "io.containerd.hull.v2";

/// CRI annotation: `sandbox` (the pod's pause container) or `container`.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI annotation: the pod's sandbox id.
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Errors of the shim's own work, mapped to ttrpc status codes in `task.rs`.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
}

impl From<hooks::HookError> for ShimError {
    fn from(e: hooks::HookError) -> ShimError {
        use hooks::HookError;
        match e {
            HookError::RelativePath { .. } | HookError::BadTimeout { .. } => {
                ShimError::InvalidArgument(e.to_string())
            }
            _ => ShimError::FailedPrecondition(e.to_string()),
        }
    }
}

impl ShimError {
    pub fn internal(what: impl std::fmt::Display) -> ShimError {
        ShimError::Internal(what.to_string())
    }
}

impl From<crate::agent_client::AgentError> for ShimError {
    fn from(e: crate::agent_client::AgentError) -> ShimError {
        use crate::agent_client::AgentError;
        // The agent's status codes keep their meaning for containerd.
        if let AgentError::Rpc {
            source: ttrpc::Error::RpcStatus(s),
            ..
        } = &e
        {
            use ttrpc::Code;
            let text = e.to_string();
            return match s.code.enum_value() {
                Ok(Code::NOT_FOUND) => ShimError::NotFound(text),
                Ok(Code::ALREADY_EXISTS) => ShimError::AlreadyExists(text),
                Ok(Code::FAILED_PRECONDITION) => ShimError::FailedPrecondition(text),
                Ok(Code::INVALID_ARGUMENT) => ShimError::InvalidArgument(text),
                _ => ShimError::Internal(text),
            };
        }
        ShimError::Internal(e.to_string())
    }
}

impl From<crate::cgroup::CgroupError> for ShimError {
    fn from(e: crate::cgroup::CgroupError) -> ShimError {
        use crate::cgroup::CgroupError;
        match e {
            CgroupError::BadPath { .. } => ShimError::InvalidArgument(e.to_string()),
            CgroupError::TooSmall { .. } => ShimError::FailedPrecondition(e.to_string()),
            other => ShimError::Internal(other.to_string()),
        }
    }
}

impl From<crate::sandbox::SandboxError> for ShimError {
    fn from(e: crate::sandbox::SandboxError) -> ShimError {
        match e {
            crate::sandbox::SandboxError::Agent(a) => a.into(),
            other => ShimError::Internal(other.to_string()),
        }
    }
}
