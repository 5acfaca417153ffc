//! What the agent does for each request, behind the thin ttrpc handlers in `rpc.rs`.
//!
//! [`Service`] owns the agent's state (no globals); each submodule holds the `do_xxx`
//! functions of one area. Next: `container.rs`, `process.rs`, `io.rs`, `network.rs`, and
//! the container table in `crate::container_table`.

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
    pub containers: crate::container_table::ContainerTable,
    /// The agent policy: baked, plus CreateSandbox's; sealed after CreateSandbox.
    pub policy: crate::policy::Policies,
}

impl Service {
    /// A service under `policy` (see [`crate::policy::Policies::load`]).
    pub fn new(power: PowerControl, reaper: Reaper, policy: crate::policy::Policies) -> Service {
        Service {
            power,
            reaper,
            containers: crate::container_table::ContainerTable::default(),
            policy,
        }
    }

    /// Checks a request against the policy (see `crate::policy::check`).
    pub fn admit(&self, req: crate::policy::check::Request<'_>) -> Result<(), ServiceError> {
        let state = crate::policy::check::State {
            containers: self.containers.all().len(),
        };
        crate::policy::check::admit(&self.policy, req, state)
    }
}
