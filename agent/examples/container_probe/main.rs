//! The host side of the in-VM container test (see `scripts/container-smoke.sh`): boots
//! nothing itself; waits for the agent's announcement on `<vm.sock>_1025`, dials it,
//! mounts the virtio-fs share with CreateSandbox and runs busybox containers from the
//! rootfs the script put in the share, checking output, exit codes, isolation and
//! resources. Prints `PASS`/`FAIL` per check and exits non-zero if any failed.
//!
//! `container_probe /path/to/vm.sock`
//!
//! A development tool, not the runtime's client (that is `runtime/src/agent_client`).

mod checks;
mod client;

use std::time::Duration;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let vm_sock = std::env::args()
        .nth(1)
        .ok_or("usage: container_probe VM_SOCK")?;
    let only = std::env::args().nth(2);
    let agent = client::connect(&vm_sock, Duration::from_secs(180)).await?;
    let failures = checks::run_all(&agent, only.as_deref()).await;
    agent.destroy().await?;
    if failures > 0 {
        return Err(format!("{failures} check(s) failed").into());
    }
    println!("probe: all checks passed");
    Ok(())
}
