//! Pod networking (issue 8) against real parts: containerd 1.6's CRI plugin with
//! Debian's CNI bridge + host-local plugins on a bridge and subnet of the test's own,
//! hull pods (VMs under QEMU) next to a runc pod on the same bridge.
//!
//! - a hull pod's busybox httpd is reached from the host netns by its pod IP, from a
//!   second hull pod, and from a runc pod; the hull pod reaches the runc pod's httpd;
//! - the DNS config of the CRI request is the container's /etc/resolv.conf;
//! - after StopPodSandbox + RemovePodSandbox the pod's netns (held open by the test)
//!   has no tap and no tc filter left, and its path is gone;
//! - on a dual-stack CNI bridge a hull pod gets its IPv6 address (the one CRI
//!   reports) and IPv6 default route in the guest, and IPv6 works both ways between
//!   the node and the pod;
//! - bad input (through ctr): a netns path that does not exist, a netns whose
//!   interface CNI did not make, the host's network: refused naming it, nothing left.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hull_tests::containerd::{Containerd, IMAGE as CTR_IMAGE, RUNTIME};
use hull_tests::cri::{self, within, Cri, HANDLER, IMAGE, PAUSE_IMAGE};
use hull_tests::{http_get, httpd, wait_for};
use k8s_cri::v1::{DnsConfig, PodSandboxConfig, PodSandboxStatusRequest};

fn pod_config(name: &str, logs: &Path, dns: Option<DnsConfig>) -> PodSandboxConfig {
    PodSandboxConfig {
        dns_config: dns,
        ..cri::pod_config(name, logs)
    }
}

/// The pod's IP and its netns path (from CRI's verbose status).
async fn pod_network(cri: &mut Cri, pod: &str) -> (String, String) {
    let req = PodSandboxStatusRequest {
        pod_sandbox_id: pod.to_string(),
        verbose: true,
    };
    let status = within("PodSandboxStatus", cri.runtime.pod_sandbox_status(req))
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let ip = status
        .status
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    assert!(!ip.is_empty(), "pod {pod} has no IP: {status:?}");
    let info: serde_json::Value =
        serde_json::from_str(status.info.get("info").map(String::as_str).unwrap_or("{}"))
            .expect("verbose info is JSON");
    let netns = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|nss| nss.iter().find(|ns| ns["type"] == "network"))
        .and_then(|ns| ns["path"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(!netns.is_empty(), "no netns path in {info}");
    (ip, netns)
}

/// `cmd` run inside the netns held open by `ns` (its path may be gone already).
fn in_netns(ns: &File, cmd: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!(
            "--net=/proc/{}/fd/{}",
            std::process::id(),
            ns.as_raw_fd()
        ))
        .args(cmd)
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hull_pods_are_reached_by_ip_from_the_host_other_hull_pods_and_runc_pods() {
    if !cri::require_cri("hull_pods_are_reached_by_ip_from_the_host_other_hull_pods_and_runc_pods")
    {
        return;
    }
    let c = Containerd::start_cri(PAUSE_IMAGE);
    cri::import_images(&c);
    let logs = tempfile::Builder::new()
        .prefix("hull-net-logs-")
        .tempdir_in("/tmp")
        .expect("log dir");
    let gateway = c
        .cni
        .as_ref()
        .expect("CRI containerd has a CNI network")
        .gateway
        .clone();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let netns_dir = rt.block_on(async {
        let mut cri = Cri::connect(&c.socket()).await;
        cri.wait_for_image(PAUSE_IMAGE).await;
        cri.wait_for_image(IMAGE).await;

        let dns = DnsConfig {
            servers: vec!["192.0.2.53".into()],
            searches: vec!["pods.hull.example".into()],
            options: vec!["ndots:3".into()],
        };
        let config_a = pod_config("net-a", logs.path(), Some(dns));
        let pod_a = cri::run_pod(&mut cri, &config_a, HANDLER).await;
        let web_a = cri::start_container(
            &mut cri,
            &pod_a,
            &config_a,
            "web",
            &httpd("hello-from-hull-pod-a"),
            None,
        )
        .await;
        let (ip_a, netns_a) = pod_network(&mut cri, &pod_a).await;
        assert!(
            ip_a.starts_with(gateway.trim_end_matches(".1")),
            "pod IP {ip_a} is in the test's subnet ({gateway})"
        );

        // From the host's netns, over the bridge, by pod IP.
        let body = wait_for(
            "pod a's httpd from the host",
            Duration::from_secs(90),
            || http_get(&ip_a),
        );
        assert_eq!(body, "hello-from-hull-pod-a");
        // The guest has the pod's address, a default route via the bridge, and CRI's DNS.
        let addr = cri::exec(&mut cri, &web_a, "ip -o -4 addr show eth0; ip route").await;
        assert!(addr.contains(&format!("inet {ip_a}/24")), "{addr}");
        assert!(
            addr.contains(&format!("default via {gateway} dev eth0")),
            "{addr}"
        );
        let resolv = cri::exec(&mut cri, &web_a, "cat /etc/resolv.conf").await;
        for line in [
            "nameserver 192.0.2.53",
            "search pods.hull.example",
            "options ndots:3",
        ] {
            assert!(
                resolv.lines().any(|l| l.trim() == line),
                "{line:?} missing in resolv.conf:\n{resolv}"
            );
        }

        // A second hull pod reaches the first by IP.
        let config_b = pod_config("net-b", logs.path(), None);
        let pod_b = cri::run_pod(&mut cri, &config_b, HANDLER).await;
        let b = cri::start_container(
            &mut cri,
            &pod_b,
            &config_b,
            "client",
            "exec sleep 100000",
            None,
        )
        .await;
        let got = cri::exec(
            &mut cri,
            &b,
            &format!("wget -q -O - http://{ip_a}/index.html"),
        )
        .await;
        assert_eq!(
            got.trim(),
            "hello-from-hull-pod-a",
            "hull pod b -> hull pod a"
        );

        // A runc pod on the same bridge: both ways.
        let config_r = pod_config("net-runc", logs.path(), None);
        let pod_r = cri::run_pod(&mut cri, &config_r, "runc").await;
        let web_r = cri::start_container(
            &mut cri,
            &pod_r,
            &config_r,
            "web",
            &httpd("hello-from-runc-pod"),
            None,
        )
        .await;
        let (ip_r, _) = pod_network(&mut cri, &pod_r).await;
        let body = wait_for(
            "the runc pod's httpd from the host",
            Duration::from_secs(60),
            || http_get(&ip_r),
        );
        assert_eq!(body, "hello-from-runc-pod");
        let got = cri::exec(
            &mut cri,
            &web_r,
            &format!("wget -q -O - http://{ip_a}/index.html"),
        )
        .await;
        assert_eq!(got.trim(), "hello-from-hull-pod-a", "runc pod -> hull pod");
        let got = cri::exec(
            &mut cri,
            &web_a,
            &format!("wget -q -O - http://{ip_r}/index.html"),
        )
        .await;
        assert_eq!(got.trim(), "hello-from-runc-pod", "hull pod -> runc pod");

        // Teardown: hold pod a's netns open, then check what is left in it.
        let ns = File::open(&netns_a).unwrap_or_else(|e| panic!("open {netns_a}: {e}"));
        let links = in_netns(&ns, &["ip", "-o", "link"]);
        assert!(
            links.contains("hulltap0"),
            "while the pod runs, its tap is there: {links}"
        );
        let filters = in_netns(&ns, &["tc", "filter", "show", "dev", "eth0", "ingress"]);
        assert!(
            filters.contains("mirred"),
            "while the pod runs, its redirect is there: {filters}"
        );
        for pod in [&pod_a, &pod_b, &pod_r] {
            cri::stop_and_remove_pod(&mut cri, pod).await;
        }
        let links = in_netns(&ns, &["ip", "-o", "link"]);
        assert!(
            !links.contains("hulltap") && !links.contains("eth0"),
            "left in pod a's netns: {links}"
        );
        let qdiscs = in_netns(&ns, &["tc", "qdisc", "show"]);
        assert!(
            !qdiscs.contains("ingress"),
            "tc left in pod a's netns: {qdiscs}"
        );
        assert!(
            !Path::new(&netns_a).exists(),
            "pod a's netns {netns_a} is still mounted"
        );
        Path::new(&netns_a)
            .parent()
            .expect("the netns dir")
            .to_path_buf()
    });
    drop(rt);
    // No netns of any pod left where CRI mounts them: under containerd's state
    // (`netns_mounts_under_state_dir`), and the dir is there, so empty means something.
    assert!(
        netns_dir.starts_with(c.dir()),
        "pod netns {} not under the test containerd's state",
        netns_dir.display()
    );
    let left: Vec<_> = std::fs::read_dir(&netns_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", netns_dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "netns left: {left:?}");
    c.assert_nothing_left();
}

/// A named netns of the test, removed on drop.
struct TestNetns(String);

impl TestNetns {
    fn new(tag: &str) -> TestNetns {
        let name = format!("hull-{tag}-{}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success());
        TestNetns(name)
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_network_hull_cannot_wire_is_refused_naming_it_and_nothing_is_left() {
    if !hull_tests::containerd::require_containerd(
        "a_network_hull_cannot_wire_is_refused_naming_it_and_nothing_is_left",
    ) {
        return;
    }
    let c = Containerd::start();
    let run = |id: &str, extra: &[&str]| {
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME];
        a.extend_from_slice(extra);
        a.extend_from_slice(&[CTR_IMAGE, id, "true"]);
        let out = c.ctr(&a);
        let text = hull_tests::output_text(&out);
        assert!(!out.status.success(), "{id} must be refused: {text}");
        // Refused at create: no VM, no shim, no mount left.
        c.assert_nothing_left();
        text
    };

    let missing = format!("/var/run/netns/hull-missing-{}", std::process::id());
    let text = run("net-missing", &["--with-ns", &format!("network:{missing}")]);
    assert!(
        text.contains(&missing) && text.contains("cannot be opened"),
        "{text}"
    );

    // A netns whose eth0 is not a veth CNI made (a tap someone left there).
    let ns = TestNetns::new("foreign");
    let st = Command::new("ip")
        .args(["-n", &ns.0, "tuntap", "add", "eth0", "mode", "tap"])
        .status()
        .expect("ip");
    assert!(st.success());
    let text = run(
        "net-foreign",
        &["--with-ns", &format!("network:{}", ns.path())],
    );
    assert!(
        text.contains("\"eth0\"") && text.contains("kind tun") && text.contains("cannot wire"),
        "{text}"
    );
    let links = Command::new("ip")
        .args(["-n", &ns.0, "-o", "link"])
        .output()
        .expect("ip");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("hulltap"), "a tap was left: {links}");

    let text = run("net-host", &["--net-host"]);
    assert!(
        text.contains("host network") && text.contains("cannot share"),
        "{text}"
    );
}

/// A hull pod on a dual-stack CNI bridge (IPv4 and IPv6 ranges): the guest's eth0 has
/// the IPv6 address CRI reports for the pod and a default IPv6 route via the bridge; the
/// node reaches the pod's httpd over IPv6, and the pod reaches a server of the node on
/// the bridge's IPv6 address.
#[test]
fn a_hull_pod_on_a_dual_stack_bridge_has_ipv6_both_ways() {
    if !cri::require_cri("a_hull_pod_on_a_dual_stack_bridge_has_ipv6_both_ways") {
        return;
    }
    let c = Containerd::start_cri_dual_stack(PAUSE_IMAGE);
    cri::import_images(&c);
    let logs = cri::logs_dir();
    let net = c.cni.as_ref().expect("CRI containerd has a CNI network");
    let gateway6 = net.gateway6.clone().expect("a dual-stack network");
    let prefix6 = gateway6.trim_end_matches("::1").to_string();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let ip6 = rt.block_on(async {
        let mut cri = Cri::connect(&c.socket()).await;
        cri.wait_for_image(PAUSE_IMAGE).await;
        cri.wait_for_image(IMAGE).await;
        let config = pod_config("net-v6", logs.path(), None);
        let pod = cri::run_pod(&mut cri, &config, HANDLER).await;
        let web = cri::start_container(
            &mut cri,
            &pod,
            &config,
            "web",
            &httpd("hello-over-ipv6"),
            None,
        )
        .await;
        // A server of the node on the bridge's IPv6 address, answering one GET. The
        // bridge exists once CNI made the pod, its address once DAD is done.
        let node = wait_for(
            "the bridge's IPv6 address to bind",
            Duration::from_secs(30),
            || std::net::TcpListener::bind(format!("[{gateway6}]:0")).ok(),
        );
        let node_port = node.local_addr().expect("addr").port();
        node.set_nonblocking(true).expect("nonblocking");
        let server = std::thread::spawn(move || {
            let (mut s, peer) = wait_for("the pod's connection", Duration::from_secs(300), || {
                node.accept().ok()
            });
            s.set_nonblocking(false).expect("blocking");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nfrom-node\n");
            peer.ip().to_string()
        });
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        };
        let status = within("PodSandboxStatus", cri.runtime.pod_sandbox_status(req))
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let network = status.status.and_then(|s| s.network).expect("pod network");
        let ip6 = network
            .additional_ips
            .iter()
            .map(|p| p.ip.clone())
            .find(|ip| ip.contains(':'))
            .unwrap_or_else(|| panic!("CRI reports no IPv6 address: {network:?}"));
        assert!(
            ip6.starts_with(&prefix6),
            "{ip6} is in the test's range {prefix6}::/64"
        );

        // The guest: the address, and the default route via the bridge.
        let shown = cri::exec(&mut cri, &web, "ip -o -6 addr show dev eth0; ip -6 route").await;
        assert!(shown.contains(&format!("inet6 {ip6}/64")), "{shown}");
        assert!(
            shown.contains(&format!("default via {gateway6} dev eth0")),
            "{shown}"
        );

        // The node -> the pod, over IPv6.
        let body = wait_for("the pod's httpd over IPv6", Duration::from_secs(90), || {
            http_get(&format!("[{ip6}]"))
        });
        assert_eq!(body, "hello-over-ipv6");
        // The pod -> the node, over IPv6.
        let got = cri::exec(
            &mut cri,
            &web,
            &format!("wget -q -O - http://[{gateway6}]:{node_port}/"),
        )
        .await;
        assert_eq!(got.trim(), "from-node", "pod -> node over IPv6");
        cri::stop_and_remove_pod(&mut cri, &pod).await;
        (ip6, server)
    });
    let (ip6, server) = ip6;
    let peer = server.join().expect("node server");
    assert_eq!(peer, ip6, "the node saw the pod's IPv6 address");
    c.state.assert_nothing_left();
}
