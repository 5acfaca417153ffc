//! What the agent does for each request, behind the thin ttrpc handlers in `rpc.rs`.
//!
//! [`Service`] owns the agent's state (no globals); each submodule holds the `do_xxx`
//! functions of one area. Next: `container.rs`, `process.rs`, `io.rs`, `network.rs`, and
//! the container table in `crate::sandbox`.

pub mod container;
pub mod debug;
mod error;
pub mod health;
pub mod io;
pub mod network;
pub mod process;
pub mod sandbox;

pub use error::ServiceError;

use crate::power::PowerControl;
use crate::reaper::Reaper;

/// The agent's state, shared by every request.
#[derive(Debug)]
pub struct Service {
    pub power: PowerControl,
    /// Exit statuses of the processes the agent starts (used from the next issue on).
    pub reaper: Reaper,
    /// The container table and OOM events.
    pub sandbox: crate::sandbox::Sandbox,
}

impl Service {
    pub fn new(power: PowerControl, reaper: Reaper) -> Service {
        Service {
            power,
            reaper,
            sandbox: crate::sandbox::Sandbox::default(),
        }
    }
}
