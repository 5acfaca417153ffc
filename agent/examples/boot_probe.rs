//! The host side of a boot smoke test (see `scripts/boot-smoke.sh`): waits for the
//! agent's announcement on `<vm.sock>_1025`, dials `<vm.sock>` with the hybrid-vsock
//! handshake (`CONNECT 1024`), calls Check, Version, one unimplemented RPC (ListInterfaces) and
//! DestroySandbox, and exits non-zero if any answer is wrong.
//!
//! `cargo run -p hull-agent --example boot_probe -- /path/to/vm.sock`
//!
//! A development tool, not the runtime's client (that is `runtime/src/agent_client`).

use std::time::{Duration, Instant};

use hull_proto::health_check_response::ServingStatus;
use hull_proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(Duration::from_secs(20))
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let vm_sock = std::env::args().nth(1).ok_or("usage: boot_probe VM_SOCK")?;
    let t0 = Instant::now();
    let step = |what: &str| println!("probe: +{:>5} ms {what}", t0.elapsed().as_millis());

    let announce = UnixListener::bind(format!("{vm_sock}_{ANNOUNCE_VSOCK_PORT}"))?;
    step("waiting for the announcement");
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(120), announce.accept()).await??;
    let mut line = String::new();
    conn.read_to_string(&mut line).await?;
    step(&format!("announced {line:?}"));
    if line != format!("{ANNOUNCE_PREFIX} {API_VERSION}\n") {
        return Err("bad announcement".into());
    }

    let mut stream = UnixStream::connect(&vm_sock).await?;
    stream
        .write_all(format!("CONNECT {AGENT_VSOCK_PORT}\n").as_bytes())
        .await?;
    let mut reply = Vec::new();
    while reply.last() != Some(&b'\n') {
        reply.push(stream.read_u8().await?);
    }
    step(&format!(
        "hybrid vsock {:?}",
        String::from_utf8_lossy(&reply)
    ));
    if !reply.starts_with(b"OK ") {
        return Err("hybrid vsock handshake refused".into());
    }
    let socket = ttrpc::r#async::transport::Socket::from(stream);
    let client = AgentServiceClient::new(ttrpc::r#async::Client::new(socket));

    let health = client.check(ctx(), &CheckRequest::new()).await?;
    step(&format!("Check: {:?}", health.status));
    if health.status.enum_value() != Ok(ServingStatus::SERVING) {
        return Err("not serving".into());
    }
    let v = client.version(ctx(), &CheckRequest::new()).await?;
    step(&format!(
        "Version: agent {} api {} kernel {} uptime {} ms",
        v.agent_version, v.api_version, v.kernel_release, v.uptime_ms
    ));
    match client.list_interfaces(ctx(), &Empty::new()).await {
        Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::UNIMPLEMENTED => {
            step(&format!("ListInterfaces: {}", s.message()))
        }
        other => return Err(format!("ListInterfaces: unexpected {other:?}").into()),
    }
    let mut req = DestroySandboxRequest::new();
    req.timeout_secs = 2;
    client.destroy_sandbox(ctx(), &req).await?;
    step("DestroySandbox: ok");
    Ok(())
}
