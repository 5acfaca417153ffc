//! Port forwarding into the pod (`kubectl port-forward`, CRI's PortForward): the shim
//! carries each connection containerd makes to a pod port over vsock to this listener
//! (port [`PORT_FORWARD_VSOCK_PORT`]). The host writes `FORWARD <port>\n`; the agent
//! connects to that port on the guest's loopback (the pod's containers share the
//! guest's network namespace), answers `OK\n`, or `ERR <why>\n` and closes, then copies
//! bytes both ways until both sides are done.
//!
//! Only the host (CID 2) is served, and the request line is bounded in size and time:
//! nothing a caller sends can hold the agent.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hull_proto::{HOST_CID, PORT_FORWARD_VSOCK_PORT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};
use tracing::{debug, info, warn, Instrument};

/// Longest request line accepted (`FORWARD 65535\n` is 14 bytes).
const MAX_REQUEST: usize = 32;
/// Bound on reading the request and on connecting to the pod's port.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    #[error("the request is not `FORWARD <port>`: {0:?}")]
    BadRequest(String),
    #[error("port {0} is not a TCP port (1-65535)")]
    BadPort(String),
    #[error("no request line within {STEP_TIMEOUT:?}")]
    Timeout,
    #[error("reading the request: {0}")]
    Read(String),
}

/// The port of a request line (without its newline).
pub fn parse_request(line: &str) -> Result<u16, ForwardError> {
    let port = line
        .strip_prefix("FORWARD ")
        .ok_or_else(|| ForwardError::BadRequest(line.to_string()))?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(ForwardError::BadPort(port.to_string())),
    }
}

/// Reads the request line byte by byte (what follows it is the forwarded stream).
async fn read_request(stream: &mut (impl AsyncRead + Unpin)) -> Result<u16, ForwardError> {
    let mut line = Vec::with_capacity(MAX_REQUEST);
    loop {
        let b = stream
            .read_u8()
            .await
            .map_err(|e| ForwardError::Read(e.to_string()))?;
        if b == b'\n' {
            break;
        }
        if line.len() == MAX_REQUEST {
            return Err(ForwardError::BadRequest(
                String::from_utf8_lossy(&line).into_owned(),
            ));
        }
        line.push(b);
    }
    parse_request(&String::from_utf8_lossy(&line))
}

/// Listens on vsock port [`PORT_FORWARD_VSOCK_PORT`] and serves each connection in a
/// task of its own. Runs for the agent's life; a failed bind is logged, not fatal (the
/// agent serves its API without port forwarding).
pub async fn serve() {
    let listener = match VsockListener::bind(VsockAddr::new(
        VMADDR_CID_ANY,
        PORT_FORWARD_VSOCK_PORT,
    )) {
        Ok(l) => l,
        Err(e) => {
            warn!(port = PORT_FORWARD_VSOCK_PORT, error = %e, "cannot listen for port forwarding");
            return;
        }
    };
    info!(port = PORT_FORWARD_VSOCK_PORT, "serving port forwarding");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) if peer.cid() == HOST_CID => {
                tokio::spawn(forward(stream).instrument(tracing::info_span!("port_forward")));
            }
            Ok((_, peer)) => {
                warn!(
                    cid = peer.cid(),
                    "port forwarding refused to a peer other than the host"
                );
            }
            Err(e) => {
                warn!(error = %e, "accepting a port-forward connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One forwarded connection: request, connect, answer, copy.
async fn forward(mut host: VsockStream) {
    let port = match tokio::time::timeout(STEP_TIMEOUT, read_request(&mut host)).await {
        Ok(Ok(port)) => port,
        Ok(Err(e)) => return refuse(&mut host, &e.to_string()).await,
        Err(_) => return refuse(&mut host, &ForwardError::Timeout.to_string()).await,
    };
    let mut pod = match connect_loopback(port).await {
        Ok(s) => s,
        Err(why) => return refuse(&mut host, &why).await,
    };
    if let Err(e) = host.write_all(b"OK\n").await {
        debug!(port, error = %e, "the host went before the answer");
        return;
    }
    match tokio::io::copy_bidirectional(&mut host, &mut pod).await {
        Ok((up, down)) => debug!(port, to_pod = up, from_pod = down, "forward done"),
        Err(e) => debug!(port, error = %e, "forward ended"),
    }
}

/// `port` on the guest's loopback: IPv4 first, then IPv6 (a server may listen on one).
async fn connect_loopback(port: u16) -> Result<TcpStream, String> {
    let mut why = Vec::new();
    for addr in [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ] {
        match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => why.push(format!("{addr}: {e}")),
            Err(_) => why.push(format!("{addr}: no answer within {STEP_TIMEOUT:?}")),
        }
    }
    Err(why.join("; "))
}

async fn refuse(host: &mut VsockStream, why: &str) {
    debug!(why, "port forward refused");
    let line = format!("ERR {}\n", why.replace('\n', " "));
    let _ = host.write_all(line.as_bytes()).await;
    let _ = host.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_one_tcp_port() {
        assert_eq!(parse_request("FORWARD 8080"), Ok(8080));
        assert_eq!(parse_request("FORWARD 65535"), Ok(65535));
        for bad in [
            "FORWARD 0",
            "FORWARD 65536",
            "FORWARD -1",
            "FORWARD +80",
            "FORWARD ",
        ] {
            assert!(
                matches!(parse_request(bad), Err(ForwardError::BadPort(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_request("CONNECT 80"),
            Err(ForwardError::BadRequest(_))
        ));
    }

    #[tokio::test]
    async fn the_request_line_is_bounded_and_read_up_to_its_newline() {
        let mut input: &[u8] = b"FORWARD 80\nrest";
        assert_eq!(read_request(&mut input).await, Ok(80));
        assert_eq!(
            input, b"rest",
            "what follows the line is left for the stream"
        );
        let long = [b'9'; 100];
        let mut input: &[u8] = &long;
        assert!(matches!(
            read_request(&mut input).await,
            Err(ForwardError::BadRequest(_))
        ));
        let mut input: &[u8] = b"FORWARD 80";
        assert!(matches!(
            read_request(&mut input).await,
            Err(ForwardError::Read(_))
        ));
    }
}
