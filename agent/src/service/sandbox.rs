//! The sandbox as a whole. For now: DestroySandbox (stop everything, power off).
//! CreateSandbox and the container table come with the next issue.

use std::time::Duration;

use hull_proto::{DestroySandboxRequest, Empty};
use tracing::{info, info_span, Instrument};

use super::{Service, ServiceError};

/// How long the reply to DestroySandbox gets to leave the guest before the power-off
/// starts. The reply is written by the connection's task on this same runtime as soon
/// as the handler returns; this leaves room for it to cross vsock.
pub const REPLY_GRACE: Duration = Duration::from_millis(250);

/// Replies success at once; the power-off runs in a task after [`REPLY_GRACE`]:
/// SIGTERM to every process, SIGKILL after `timeout_secs`, sync, reboot (as guest init),
/// or the process exits (outside a guest). Asking again while it runs is harmless.
pub fn do_destroy_sandbox(
    svc: &Service,
    req: &DestroySandboxRequest,
) -> Result<Empty, ServiceError> {
    let grace = Duration::from_secs(u64::from(req.timeout_secs));
    let power = svc.power.clone();
    info!(?grace, mode = ?power.mode(), "destroying the sandbox after the reply");
    tokio::spawn(
        async move {
            tokio::time::sleep(REPLY_GRACE).await;
            power.power_off(grace).await;
        }
        .instrument(info_span!("destroy_sandbox")),
    );
    Ok(Empty::new())
}
