//! Every way hull-vmm can fail, typed. Each variant belongs to one class that the binary
//! turns into its exit status (see [`Error::exit_code`] and `vmm/README.md`).

use std::path::PathBuf;

/// A failure to build or run a VM (as opposed to the guest ending, which is an
/// [`crate::ExitReason`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VM description is invalid (bad size, missing file, unknown format...).
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// A file named by the configuration could not be used.
    #[error("cannot use {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The kernel image could not be loaded (bad ELF/bzImage, does not fit in memory...).
    #[error("cannot load the kernel: {0}")]
    KernelLoad(String),
    /// `/dev/kvm` is missing, inaccessible or lacks a capability hull-vmm needs.
    #[error("KVM is not usable: {0}")]
    KvmUnavailable(String),
    /// A KVM ioctl failed.
    #[error("KVM ioctl {op} failed: {source}")]
    Kvm {
        /// Which operation.
        op: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be created or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// A host resource (thread, eventfd, epoll, signal) failed.
    #[error("host resource {what}: {source}")]
    Host {
        /// Which resource.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot could not be written, or a snapshot directory cannot be restored
    /// (missing, truncated, corrupt, another format version, or a VM description that
    /// does not match it).
    #[error("snapshot {path}: {reason}")]
    Snapshot {
        /// The snapshot directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A vCPU thread did not answer a pause/stop request, or died.
    #[error("vCPU {index}: {reason}")]
    Vcpu {
        /// vCPU index.
        index: usize,
        /// What happened.
        reason: String,
    },
}

/// Result with hull-vmm's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The `hull-vmm` process exit status for this error: 2 bad configuration,
    /// 4 KVM unavailable or a KVM ioctl failed, 8 any other VMM-internal failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_)
            | Error::File { .. }
            | Error::KernelLoad(_)
            | Error::Snapshot { .. } => 2,
            Error::KvmUnavailable(_) | Error::Kvm { .. } => 4,
            Error::Memory(_) | Error::Host { .. } | Error::Vcpu { .. } => 8,
        }
    }

    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }

    pub(crate) fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Host { what, source }
    }

    pub(crate) fn file(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::File {
            path: path.to_path_buf(),
            source,
        }
    }
}
