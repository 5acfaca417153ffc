//! Real network namespaces, veths and taps (root only; skipped with a reason
//! otherwise, failing under HULL_REQUIRE_E2E=1).

use std::process::Command;

use super::*;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, cmd: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "{cmd:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn can_run(test: &str) -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("needs root (network namespaces)")
    } else if !Path::new("/dev/net/tun").exists() {
        Some("needs /dev/net/tun")
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("needs iproute2 (ip)")
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var("HULL_REQUIRE_E2E").as_deref() == Ok("1") => {
            panic!("{test}: {why}")
        }
        Some(why) => {
            eprintln!("SKIP {test}: {why}");
            false
        }
    }
}

/// A named netns removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("hulltest-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        Netns(name)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_missing_netns_or_a_file_that_is_none_is_named() {
    if !can_run("a_missing_netns_or_a_file_that_is_none_is_named") {
        return;
    }
    let e = PodNetwork::setup(Path::new("/var/run/netns/hull-no-such-netns")).expect_err("missing");
    assert!(matches!(e, NetworkError::NetnsMissing { .. }), "{e}");
    assert!(
        e.to_string().contains("/var/run/netns/hull-no-such-netns"),
        "{e}"
    );
    let f = tempfile::NamedTempFile::new().expect("file");
    let e = PodNetwork::setup(f.path()).expect_err("not a netns");
    assert!(e.to_string().contains("is not a network namespace"), "{e}");
}

#[test]
fn a_link_hull_cannot_wire_is_refused_and_nothing_is_left() {
    if !can_run("a_link_hull_cannot_wire_is_refused_and_nothing_is_left") {
        return;
    }
    let ns = Netns::new("tap");
    // A veth (wirable) and a persistent tap eth1 (not CNI's, not wirable): the veth
    // must not stay wired.
    ip(&[
        "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    ip(&["-n", &ns.0, "tuntap", "add", "eth1", "mode", "tap"]);
    let e = PodNetwork::setup(&ns.path()).expect_err("tap");
    assert!(matches!(e, NetworkError::Unsupported { .. }), "{e}");
    assert!(
        e.to_string().contains("\"eth1\"") && e.to_string().contains("kind tun"),
        "{e}"
    );
    let links = in_ns(&ns.0, &["ip", "-o", "link"]);
    assert!(!links.contains("hulltap"), "{links}");
    let qdiscs = in_ns(&ns.0, &["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
}

#[test]
fn a_veth_gets_a_tap_and_two_redirects_which_teardown_removes() {
    if !can_run("a_veth_gets_a_tap_and_two_redirects_which_teardown_removes") {
        return;
    }
    let ns = Netns::new("veth");
    ip(&[
        "-n",
        &ns.0,
        "link",
        "add",
        "eth0",
        "mtu",
        "1400",
        "address",
        "0a:58:0a:f4:00:05",
        "type",
        "veth",
        "peer",
        "name",
        "p0",
    ]);
    // The peer goes to a second netns, as the bridge plugin's goes to the host.
    let other = Netns::new("peer");
    ip(&["-n", &ns.0, "link", "set", "p0", "netns", &other.0]);
    ip(&["-n", &ns.0, "addr", "add", "10.213.7.5/24", "dev", "eth0"]);
    ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        &ns.0,
        "route",
        "add",
        "default",
        "via",
        "10.213.7.1",
        "dev",
        "eth0",
    ]);

    let mut net = PodNetwork::setup(&ns.path()).expect("setup");
    assert_eq!(net.endpoints().len(), 1);
    let e = &net.endpoints()[0];
    assert_eq!(e.guest.name, "eth0");
    assert_eq!(e.guest.mac, "0a:58:0a:f4:00:05");
    assert_eq!(e.guest.mtu, 1400);
    assert_eq!(
        e.guest.addresses,
        vec![("10.213.7.5".parse().expect("ip"), 24)]
    );
    assert_eq!(
        net.routes(),
        &[GuestRoute {
            dest: None,
            gateway: Some("10.213.7.1".parse().expect("ip")),
            device: "eth0".into(),
            source: None,
            scope: 0,
        }]
    );
    let tap = e.tap_name().to_string();
    let link = in_ns(&ns.0, &["ip", "-d", "-o", "link", "show", &tap]);
    assert!(
        link.contains("mtu 1400") && link.contains("tun type tap"),
        "{link}"
    );
    for (dev, to) in [("eth0", tap.as_str()), (tap.as_str(), "eth0")] {
        let filters = in_ns(&ns.0, &["tc", "filter", "show", "dev", dev, "ingress"]);
        assert!(
            filters.contains("protocol all")
                && filters.contains(&format!("Egress Redirect to device {to}")),
            "{dev} -> {to}: {filters}"
        );
    }
    net.teardown().expect("teardown");
    let links = in_ns(&ns.0, &["ip", "-o", "link"]);
    assert!(!links.contains("hulltap"), "{links}");
    let qdiscs = in_ns(&ns.0, &["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    // The veth itself is CNI's and stays.
    assert!(links.contains("eth0"), "{links}");
}
