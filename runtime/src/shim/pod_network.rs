//! The pod's network as containerd gives it to the shim: the network namespace entry of
//! the first container's spec decides.
//! - a path (CRI: `/var/run/netns/cni-...`, or `ctr run --with-ns network:PATH`): the
//!   netns CNI set up; its veths are wired to taps for the VM ([`crate::network`]) and
//!   the guest gets their addresses and routes;
//! - an entry without a path (`ctr run`): a network of the pod's own with nothing in it;
//!   the VM gets no NIC (the guest has loopback only);
//! - no entry at all: the host's network (`hostNetwork`, `ctr run --net-host`), which
//!   a VM cannot share: refused.

use std::path::PathBuf;

use tracing::Instrument;

use super::port_forward::PortForwarder;
use super::spec::ContainerSpec;
use super::ShimError;
use crate::agent_client::AgentClient;
use crate::hypervisor::net::NetDevice;
use crate::network::{NetworkError, PodNetwork, PoolNic};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// No network namespace entry: the host's.
    Host,
    /// An entry without a path: a new, empty network namespace.
    Empty,
    /// The netns at this path (CNI's).
    Netns(PathBuf),
}

/// The network mode of `spec`.
pub fn mode(spec: &ContainerSpec) -> NetworkMode {
    match spec.network_namespace() {
        None => NetworkMode::Host,
        Some(None) => NetworkMode::Empty,
        Some(Some(p)) => NetworkMode::Netns(p.to_path_buf()),
    }
}

/// The host network refused, an empty one accepted, a netns wired; nothing is left
/// in the netns on error.
pub fn open(spec: &ContainerSpec) -> Result<Option<PodNetwork>, ShimError> {
    match mode(spec) {
        NetworkMode::Host => Err(ShimError::InvalidArgument(
            "the spec has no network namespace (host network: hostNetwork or --net-host); a hull pod runs in a VM, which cannot share the host's network: give the pod a network namespace (CNI)".into(),
        )),
        NetworkMode::Empty => Ok(None),
        NetworkMode::Netns(path) => PodNetwork::setup(&path).map(Some).map_err(shim_error),
    }
}

/// How many veths the pod's netns holds (0 without one); the host network refused.
pub fn veth_count(spec: &ContainerSpec) -> Result<usize, ShimError> {
    match mode(spec) {
        NetworkMode::Netns(path) => PodNetwork::veth_count(&path).map_err(shim_error),
        _ => open(spec).map(|_| 0),
    }
}

/// The pod's one veth wired to a pool VM's NIC (see [`crate::network::PoolNic`]).
pub fn adopt(spec: &ContainerSpec, nic: PoolNic) -> Result<Option<PodNetwork>, ShimError> {
    match mode(spec) {
        NetworkMode::Netns(path) => PodNetwork::adopt(&path, nic).map(Some).map_err(shim_error),
        _ => Err(ShimError::internal(
            "a pool VM's NIC adopted without a pod netns",
        )),
    }
}

fn shim_error(e: NetworkError) -> ShimError {
    match e {
        NetworkError::NetnsMissing { .. }
        | NetworkError::NotANetns { .. }
        | NetworkError::Unsupported { .. }
        | NetworkError::BadInterface { .. } => ShimError::InvalidArgument(e.to_string()),
        other => ShimError::Internal(other.to_string()),
    }
}

/// Port forwarding for the pod: loopback connections in its netns redirected to the
/// guest (see [`super::port_forward`]). Optional: a host without iptables, or a netns
/// without loopback, runs the pod without it, and says why in the log.
pub fn forward_ports(
    net: Option<&mut PodNetwork>,
    vsock_uds: Option<PathBuf>,
) -> Option<PortForwarder> {
    let (net, uds) = (net?, vsock_uds?);
    let listeners = match net.redirect_loopback() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "no port forwarding into this pod");
            return None;
        }
    };
    match PortForwarder::start(listeners, uds) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(error = %e, "no port forwarding into this pod");
            None
        }
    }
}

/// The VM's NICs for `net`.
pub fn nics(net: Option<&PodNetwork>) -> Vec<NetDevice> {
    net.map(|n| {
        n.endpoints()
            .iter()
            .map(|e| NetDevice {
                tap_fd: e.tap_fd(),
                mac: e.guest.mac.clone(),
            })
            .collect()
    })
    .unwrap_or_default()
}

/// Configures the guest: each interface (found by MAC), then the routes.
pub async fn configure_guest(
    agent: &AgentClient,
    net: Option<&PodNetwork>,
) -> Result<(), ShimError> {
    let Some(net) = net else {
        return Ok(());
    };
    for e in net.endpoints() {
        agent
            .update_interface(&e.guest)
            .instrument(tracing::info_span!("update_interface", name = %e.guest.name))
            .await?;
    }
    agent
        .update_routes(net.routes())
        .instrument(tracing::info_span!("update_routes"))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn spec(namespaces: Value) -> ContainerSpec {
        ContainerSpec::parse(
            &serde_json::to_vec(&json!({
                "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
                "root": {"path": "rootfs"},
                "linux": {"namespaces": namespaces}
            }))
            .expect("json"),
        )
        .expect("spec")
    }

    #[test]
    fn the_network_entry_decides() {
        assert_eq!(mode(&spec(json!([{"type": "pid"}]))), NetworkMode::Host);
        assert_eq!(
            mode(&spec(json!([{"type": "network"}]))),
            NetworkMode::Empty
        );
        assert_eq!(
            mode(&spec(
                json!([{"type": "network", "path": "/var/run/netns/cni-1"}])
            )),
            NetworkMode::Netns("/var/run/netns/cni-1".into())
        );
        let e = open(&spec(json!([{"type": "pid"}]))).expect_err("host network");
        assert!(
            matches!(e, ShimError::InvalidArgument(_)) && e.to_string().contains("host network"),
            "{e}"
        );
        assert!(open(&spec(json!([{"type": "network"}])))
            .expect("empty")
            .is_none());
        let e = open(&spec(
            json!([{"type": "network", "path": "/nonexistent/netns/x"}]),
        ))
        .expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/netns/x"), "{e}");
    }
}
