//! hull's agent API, shared by the host runtime (client) and the guest agent (server).
//!
//! The messages and services are generated from `protos/agent.proto` at build time.
//! This crate also holds the few constants both sides must agree on.

#[allow(
    clippy::all,
    missing_docs,
    unused_imports,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    unused_results,
    unused_mut,
    trivial_casts,
    unknown_lints
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

#[allow(
    clippy::all,
    missing_docs,
    unused_imports,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    unused_results,
    unused_mut,
    trivial_casts,
    unknown_lints
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub use agent::*;
pub use agent_ttrpc::{AgentService, AgentServiceClient};

/// Version of the agent API. Bumped on incompatible changes to `agent.proto`.
pub const API_VERSION: u32 = 1;

/// vsock port the agent's ttrpc server listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// vsock port on the host (CID 2) the agent connects to once it listens, to say it is
/// ready. With hybrid vsock this arrives on the host as a connection to `<uds>_1025`.
pub const ANNOUNCE_VSOCK_PORT: u32 = 1025;

/// vsock port the agent serves port forwarding on (see the agent's `port_forward`): the
/// host writes `FORWARD <port>\n`, the agent answers `OK\n` or `ERR <why>\n`.
pub const PORT_FORWARD_VSOCK_PORT: u32 = 1026;

/// Line the agent writes on the announce connection: `HULL-AGENT-READY <api_version>\n`.
pub const ANNOUNCE_PREFIX: &str = "HULL-AGENT-READY";

/// Well-known vsock CID of the host.
pub const HOST_CID: u32 = 2;
