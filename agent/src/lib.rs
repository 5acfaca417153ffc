//! hull-agent: PID 1 of every pod VM, and the ttrpc server the host runtime talks to.
//!
//! The binary (`main.rs`) is start-up only; everything it runs is here, one job per
//! module, so that tests reach the parts directly. Where a request goes:
//! `server` (listen) -> `rpc` (thin handler per RPC) -> `service::<area>` (the work).
//!
//! Containers: `service/{container,process,io}.rs` (the RPCs), `sandbox.rs` (the
//! container table, owned by `service::Service`), `container/` (spec validation, the
//! steps through libcontainer, stdio, cgroup files), `storage.rs` (guest mounts),
//! `switch_root.rs` (PID 1 leaves the initramfs so pivot_root works), `policy.rs` (which
//! requests the host may make; checked by `rpc.rs` before the service acts).
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod announce;
pub mod config;
pub mod console;
pub mod container;
pub mod container_table;
pub mod entropy;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod init;
pub mod netlink;
pub mod policy;
pub mod port_forward;
pub mod power;
pub mod procfs;
pub mod reaper;
pub mod rpc;
pub mod server;
pub mod service;
pub mod storage;
pub mod switch_root;
