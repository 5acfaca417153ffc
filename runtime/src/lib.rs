//! hull's host side.
//!
//! Data flows one way: `bin/hull.rs` (CLI) or the containerd shim -> [`sandbox`] (one VM
//! and its agent) -> [`hypervisor`] (the backend that runs the VM) and
//! [`agent_client`] (ttrpc over hybrid vsock to the guest agent).

pub mod agent_client;
pub mod atomic_write;
pub mod bench;
pub mod cgroup;
pub mod check;
pub mod child;
pub mod config;
pub mod gc;
pub mod host;
pub mod hypervisor;
pub mod image;
pub mod inspect;
pub mod install;
pub mod jail;
pub mod metrics;
pub mod monitor;
pub mod network;
pub mod pool;
pub mod run;
pub mod sandbox;
pub mod shim;
pub mod spec;
pub mod template;
pub mod uds_path;
