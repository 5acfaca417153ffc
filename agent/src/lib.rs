//! hull-agent: PID 1 of every pod VM, and the ttrpc server the host runtime talks to.
//!
//! The binary (`main.rs`) is start-up only; everything it runs is here, one job per
//! module, so that tests reach the parts directly. Where a request goes:
//! `server` (listen) -> `rpc` (thin handler per RPC) -> `service::<area>` (the work).
//!
//! Next (containers): `service/container.rs`, `service/process.rs`, `service/io.rs`,
//! `sandbox.rs` (the container table, owned by `service::Service`), `container/` (spec
//! validation and the creation steps), `policy.rs`.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod announce;
pub mod config;
pub mod console;
pub mod init;
pub mod power;
pub mod procfs;
pub mod reaper;
pub mod rpc;
pub mod server;
pub mod service;
