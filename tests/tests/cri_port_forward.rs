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
use k8s_cri::v1::{PodSandboxStatusRequest, PortForwardRequest};

const ECHO_PORT: u16 = 8080;
/// A persistent echo server on ECHO_PORT (busybox nc: `-ll` keeps listening).
const ECHO_SERVER: &str = "exec nc -ll -p 8080 -e cat";

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
    let logs = cri::logs_dir();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let mut cri = Cri::connect(&c.socket()).await;
        cri.wait_for_image(PAUSE_IMAGE).await;
        cri.wait_for_image(cri::IMAGE).await;
        let config = cri::pod_config("hull-pf", logs.path());
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
            hull_tests::kube_stream::port_forward_echo(&url, ECHO_PORT, &sent)
        })
        .await
        .expect("websocket thread");
        assert!(
            back == expected,
            "{} bytes back of {}",
            back.len(),
            expected.len()
        );

        cri::stop_and_remove_pod(&mut cri, &pod).await;
        assert!(
            !Path::new(&netns_path).exists(),
            "the pod's netns {netns_path} is still there"
        );
    });
    drop(rt);
    c.assert_nothing_left();
}
