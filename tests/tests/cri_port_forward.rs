//! Port forwarding into a hull pod (issue 18, item 5): containerd serves CRI's
//! PortForward (what `kubectl port-forward` uses) by dialling `localhost:PORT` inside
//! the pod's network namespace on the host. For a hull pod that connection is
//! redirected to the shim, carried over vsock to the agent and connected to the port
//! on the guest's loopback.
//!
//! - the way containerd does it, from inside the pod's netns: bytes both ways through
//!   an echo server in the pod, a port nothing listens on closed at once;
//! - through CRI's PortForward and containerd's streaming server (the websocket
//!   protocol `v4.channel.k8s.io`, as kubectl speaks it): the same echo;
//! - after the pod goes, nothing is left: no process, and the netns with its rule gone.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use hull_tests::containerd::Containerd;
use hull_tests::cri::{self, within, Cri, HANDLER, PAUSE_IMAGE};
use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, PortForwardRequest,
    RemovePodSandboxRequest, StopPodSandboxRequest,
};

const ECHO_PORT: u16 = 8080;
/// A persistent echo server on ECHO_PORT (busybox nc: `-ll` keeps listening).
const ECHO_SERVER: &str = "exec nc -ll -p 8080 -e cat";

fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: logs.join(name).display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's netns path (from CRI's verbose status).
async fn pod_netns(cri: &mut Cri, pod: &str) -> String {
    let req = PodSandboxStatusRequest {
        pod_sandbox_id: pod.to_string(),
        verbose: true,
    };
    let status = within("PodSandboxStatus", cri.runtime.pod_sandbox_status(req))
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(status.info.get("info").map(String::as_str).unwrap_or("{}"))
            .expect("verbose info is JSON");
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|nss| nss.iter().find(|ns| ns["type"] == "network"))
        .and_then(|ns| ns["path"].as_str())
        .unwrap_or_else(|| panic!("no netns path in {info}"))
        .to_string()
}

/// What a thread inside the netns `ns` returns from `work`, as containerd's PortForward
/// runs its dial there.
fn in_netns<T: Send + 'static>(ns: &File, work: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.try_clone().expect("netns fd");
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        work()
    })
    .join()
    .expect("netns thread")
}

/// `data` sent through `s` (a writer thread) and everything read back until `data.len()`
/// bytes came or the stream ended.
fn echo_through(s: TcpStream, data: Vec<u8>) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let len = data.len();
    let writer = std::thread::spawn(move || w.write_all(&data));
    let mut back = Vec::with_capacity(len);
    let mut r = s;
    let mut buf = [0u8; 65536];
    while back.len() < len {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => back.extend_from_slice(&buf[..n]),
        }
    }
    let _ = writer.join();
    back
}

/// Some bytes that are not all the same.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn a_port_forward_reaches_the_pods_port_in_the_guest() {
    if !cri::require_cri("a_port_forward_reaches_the_pods_port_in_the_guest") {
        return;
    }
    let c = Containerd::start_cri(PAUSE_IMAGE);
    cri::import_images(&c);
    let logs = tempfile::Builder::new()
        .prefix("hull-pf-logs-")
        .tempdir_in("/tmp")
        .expect("logs");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let mut cri = Cri::connect(&c.socket()).await;
        cri.wait_for_image(PAUSE_IMAGE).await;
        cri.wait_for_image(cri::IMAGE).await;
        let config = pod_config("hull-pf", logs.path());
        let pod = cri::run_pod(&mut cri, &config, HANDLER).await;
        cri::start_container(&mut cri, &pod, &config, "echo", ECHO_SERVER, None).await;
        let netns_path = pod_netns(&mut cri, &pod).await;
        let netns = File::open(&netns_path).expect("the pod's netns");

        // As containerd dials: localhost:PORT inside the pod's netns. Until the server
        // listens, the forward is refused and the connection closes at once.
        let data = payload(1 << 20);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let sent = data.clone();
            let back = in_netns(&netns, move || {
                let s = TcpStream::connect(("127.0.0.1", ECHO_PORT)).expect("connect in the netns");
                echo_through(s, sent)
            });
            if back == data {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "1 MiB through the forward came back as {} bytes",
                back.len()
            );
            std::thread::sleep(Duration::from_millis(500));
        }

        // A port nothing listens on in the guest: accepted on the host, then closed
        // with nothing read, as a refused connection reads.
        let read = in_netns(&netns, || {
            let mut s = TcpStream::connect(("127.0.0.1", 8081)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
            let mut buf = [0u8; 16];
            s.read(&mut buf)
        });
        assert_eq!(
            read.expect("an orderly close"),
            0,
            "bytes from a closed port"
        );

        // Through CRI: PortForward's URL on containerd's streaming server, spoken to as
        // kubectl does (websocket, v4.channel.k8s.io).
        let url = within(
            "PortForward",
            cri.runtime.port_forward(PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![i32::from(ECHO_PORT)],
            }),
        )
        .await
        .expect("PortForward")
        .into_inner()
        .url;
        let sent = payload(200_000);
        let expected = sent.clone();
        let back = tokio::task::spawn_blocking(move || {
            websocket::port_forward_echo(&url, ECHO_PORT, &sent)
        })
        .await
        .expect("websocket thread");
        assert!(
            back == expected,
            "{} bytes back of {}",
            back.len(),
            expected.len()
        );

        within(
            "StopPodSandbox",
            cri.runtime.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }),
        )
        .await
        .expect("StopPodSandbox");
        within(
            "RemovePodSandbox",
            cri.runtime.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }),
        )
        .await
        .expect("RemovePodSandbox");
        assert!(
            !Path::new(&netns_path).exists(),
            "the pod's netns {netns_path} is still there"
        );
    });
    drop(rt);
    c.assert_nothing_left();
}

/// Just enough of a websocket client (RFC 6455) for kubelet's port-forward protocol
/// `v4.channel.k8s.io`: each message is a channel byte and data; channel 0 is the first
/// port's data, 1 its errors, and each channel's first message is the port (2 bytes,
/// little endian).
mod websocket {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// Sends `data` on the data channel of `port` through the port-forward URL `url`
    /// and returns what came back on it once `data.len()` bytes did (or the stream
    /// ended); panics on anything on the error channel.
    pub fn port_forward_echo(url: &str, port: u16, data: &[u8]) -> Vec<u8> {
        let rest = url.strip_prefix("http://").expect("an http:// URL");
        let (host, path) = rest.split_once('/').expect("host/path");
        let s = TcpStream::connect(host).expect("connect to the streaming server");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut w = s.try_clone().expect("clone");
        write!(
            w,
            "GET /{path}?port={port} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
        )
        .expect("handshake");
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).expect("status line");
        assert!(status.contains(" 101 "), "no upgrade: {status}");
        loop {
            let mut line = String::new();
            r.read_line(&mut line).expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        // The two channels announce the port first.
        let mut announced = 0;
        let mut back = Vec::new();
        let data_len = data.len();
        let payload = data.to_vec();
        let writer = std::thread::spawn(move || {
            for chunk in payload.chunks(16 * 1024) {
                let mut msg = vec![0u8];
                msg.extend_from_slice(chunk);
                write_frame(&mut w, &msg);
            }
        });
        while back.len() < data_len {
            let Some(msg) = read_message(&mut r) else {
                break;
            };
            let (&channel, body) = msg.split_first().expect("a channel byte");
            if announced < 2 && body.len() == 2 && u16::from_le_bytes([body[0], body[1]]) == port {
                announced += 1;
                continue;
            }
            match channel {
                0 => back.extend_from_slice(body),
                1 => panic!("port-forward error: {}", String::from_utf8_lossy(body)),
                other => panic!("message on channel {other}"),
            }
        }
        let _ = writer.join();
        back
    }

    /// One masked binary frame.
    fn write_frame(w: &mut TcpStream, payload: &[u8]) {
        let mut frame = vec![0x82u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        w.write_all(&frame).expect("write a frame");
    }

    /// The next data message (fragments joined; pings and pongs skipped); None at a
    /// close frame or the stream's end.
    fn read_message(r: &mut impl Read) -> Option<Vec<u8>> {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            r.read_exact(&mut head).ok()?;
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let mut len = u64::from(head[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                r.read_exact(&mut b).ok()?;
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                r.read_exact(&mut b).ok()?;
                len = u64::from_be_bytes(b);
            }
            let mask = if head[1] & 0x80 != 0 {
                let mut m = [0u8; 4];
                r.read_exact(&mut m).ok()?;
                Some(m)
            } else {
                None
            };
            let mut body = vec![0u8; usize::try_from(len).ok()?];
            r.read_exact(&mut body).ok()?;
            if let Some(m) = mask {
                body.iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= m[i % 4]);
            }
            match opcode {
                0x8 => return None,
                0x9 | 0xa => continue,
                _ => message.extend_from_slice(&body),
            }
            if fin {
                return Some(message);
            }
        }
    }
}
