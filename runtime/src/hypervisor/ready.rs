//! Waiting for a helper process to be ready: its listening socket appears, or it exits
//! (then the error carries its exit status and the tail of its stderr).

use std::path::Path;
use std::time::{Duration, Instant};

use super::HypervisorError;
use crate::child::HelperProcess;

/// Waits until `path` exists (a helper created its listening socket), failing early
/// if the helper exits.
pub async fn wait_for_socket(
    path: &Path,
    helper: &mut HelperProcess,
    timeout: Duration,
) -> Result<(), HypervisorError> {
    let start = Instant::now();
    loop {
        if path.exists() {
            return Ok(());
        }
        if let Some(status) = helper.try_status() {
            return Err(HypervisorError::NotReady {
                what: helper.name(),
                waited: start.elapsed(),
                detail: format!(
                    ": it exited with {}\n{}",
                    crate::child::describe_status(&status),
                    helper.stderr_tail(10)
                ),
            });
        }
        if start.elapsed() > timeout {
            return Err(HypervisorError::NotReady {
                what: helper.name(),
                waited: timeout,
                detail: format!(" (no socket at {})", path.display()),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
