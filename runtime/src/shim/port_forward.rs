//! Port forwarding into the pod's guest (CRI's PortForward, `kubectl port-forward`):
//! containerd dials `localhost:PORT` in the pod's netns on the host; the redirect of
//! [`crate::network::loopback_redirect`] lands that connection on a listener here; the
//! forwarder reads the port asked for, opens a vsock stream to the agent's port-forward
//! port, asks for `FORWARD <port>`, and on `OK` copies bytes both ways. A refusal
//! (nothing listens on that port in the guest) closes the connection, as a refused
//! connect would.
//!
//! The forwarder lives as long as the pod: dropping it stops accepting; connections in
//! flight end when either side closes or the VM goes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hull_proto::PORT_FORWARD_VSOCK_PORT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::agent_client::hybrid_vsock;
use crate::network::loopback_redirect::{original_port, RedirectListeners};

/// Bound on reaching the agent and on its answer.
const AGENT_DEADLINE: Duration = Duration::from_secs(15);
/// Longest answer accepted from the agent (`ERR ` and a reason).
const MAX_ANSWER: usize = 512;

/// The accept loops of one pod; stopped on drop.
pub struct PortForwarder {
    loops: Vec<JoinHandle<()>>,
}

impl PortForwarder {
    /// Starts accepting on `listeners` (in the pod's netns) and forwarding to the guest
    /// whose hybrid vsock socket is `vsock_uds`. Must run inside a tokio runtime.
    pub fn start(listeners: RedirectListeners, vsock_uds: PathBuf) -> std::io::Result<Self> {
        let uds = Arc::new(vsock_uds);
        let mut loops = Vec::new();
        for listener in listeners.listeners {
            let listener = TcpListener::from_std(listener)?;
            let uds = uds.clone();
            loops.push(tokio::spawn(accept_loop(listener, uds)));
        }
        Ok(PortForwarder { loops })
    }
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        for l in &self.loops {
            l.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, uds: Arc<PathBuf>) {
    let v6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let uds = uds.clone();
                tokio::spawn(
                    async move {
                        if let Err(why) = forward(client, &uds, v6).await {
                            tracing::info!(%why, "port forward not made");
                        }
                    }
                    .instrument(tracing::info_span!("port_forward")),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a port-forward connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection: the port it asked for, the agent's answer, then the copy.
async fn forward(mut client: TcpStream, uds: &std::path::Path, v6: bool) -> Result<(), String> {
    let port = original_port(&client, v6).map_err(|e| format!("the port asked for: {e}"))?;
    let mut guest = ask_agent(uds, port).await?;
    tracing::debug!(port, "forwarding");
    match tokio::io::copy_bidirectional(&mut client, &mut guest).await {
        Ok((up, down)) => tracing::debug!(port, to_guest = up, from_guest = down, "forward done"),
        Err(e) => tracing::debug!(port, error = %e, "forward ended"),
    }
    Ok(())
}

/// A vsock stream to the agent's port forwarder, connected to guest port `port`.
async fn ask_agent(uds: &std::path::Path, port: u16) -> Result<UnixStream, String> {
    let mut guest = hybrid_vsock::connect(uds, PORT_FORWARD_VSOCK_PORT, AGENT_DEADLINE)
        .await
        .map_err(|e| format!("reaching the agent: {e}"))?;
    let answer = tokio::time::timeout(AGENT_DEADLINE, async {
        guest
            .write_all(format!("FORWARD {port}\n").as_bytes())
            .await
            .map_err(|e| format!("asking the agent: {e}"))?;
        read_answer(&mut guest).await
    })
    .await
    .map_err(|_| format!("the agent did not answer within {AGENT_DEADLINE:?}"))??;
    check_answer(&answer, port)?;
    Ok(guest)
}

/// The agent's answer line, read byte by byte (the forwarded stream follows it).
async fn read_answer(guest: &mut UnixStream) -> Result<String, String> {
    let mut line = Vec::new();
    loop {
        let b = guest
            .read_u8()
            .await
            .map_err(|e| format!("the agent's answer: {e}"))?;
        if b == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() == MAX_ANSWER {
            return Err("the agent's answer is too long".into());
        }
        line.push(b);
    }
}

/// `OK`, or why not (the agent's words, or that the answer made no sense).
fn check_answer(answer: &str, port: u16) -> Result<(), String> {
    if answer == "OK" {
        return Ok(());
    }
    match answer.strip_prefix("ERR ") {
        Some(why) => Err(format!("guest port {port}: {why}")),
        None => Err(format!("unexpected answer from the agent: {answer:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_ok_or_a_reason() {
        assert_eq!(check_answer("OK", 80), Ok(()));
        assert_eq!(
            check_answer("ERR 127.0.0.1:80: Connection refused", 80),
            Err("guest port 80: 127.0.0.1:80: Connection refused".into())
        );
        assert!(check_answer("OKAY", 80)
            .expect_err("junk")
            .contains("unexpected answer"));
    }
}
