//! Pod networking on the host: the pod's network namespace (made by CNI) wired into the
//! VM, in Kata's "tcfilter" model.
//!
//! For each veth CNI put into the netns, a tap is created next to it and two tc ingress
//! redirects (u32 match-all, mirred egress redirect) pass every frame veth -> tap and
//! tap -> veth. The tap's fd goes to the hypervisor (virtio-net); the guest interface
//! gets the veth's MAC, MTU, addresses and routes, so the pod looks to the bridge and to
//! CNI exactly as a runc pod would. The veth keeps no role but the redirect.
//!
//! One job per module: [`netns`] (running netlink work inside the netns), [`tap`]
//! (opening a tap), [`wire`] (reading the netns, adding and removing taps and filters),
//! [`loopback_redirect`] (port forwarding: loopback connections in the netns sent to
//! the shim). [`PodNetwork`] owns what was made and removes it (on `teardown` or drop).

pub mod loopback_redirect;
mod netns;
mod pool_nic;
mod tap;
mod wire;

pub use pool_nic::PoolNic;

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// What can go wrong wiring a pod's network; every variant names what is at fault.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("the pod's network namespace {path} cannot be opened: {source}")]
    NetnsMissing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace: {source}")]
    NotANetns { path: PathBuf, source: nix::Error },
    #[error("the pod's network namespace {netns} holds interface {name:?} of kind {kind}, which hull cannot wire into a VM (only the veth pairs CNI plugins such as bridge make, and lo)")]
    Unsupported {
        netns: PathBuf,
        name: String,
        kind: String,
    },
    #[error("interface {name:?} in {netns}: {what}")]
    BadInterface {
        netns: PathBuf,
        name: String,
        what: String,
    },
    #[error("cannot create tap {name} in {netns}: {source}")]
    Tap {
        netns: PathBuf,
        name: String,
        source: std::io::Error,
    },
    #[error("netlink ({what}) in {netns}: {source}")]
    Netlink {
        netns: PathBuf,
        what: String,
        source: rtnetlink::Error,
    },
    #[error("port-forward redirect in {netns}: {what}")]
    Redirect { netns: PathBuf, what: String },
    #[error("netlink in {netns}: {source}")]
    Io {
        netns: PathBuf,
        source: std::io::Error,
    },
}

/// An interface as the guest must configure it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInterface {
    /// The name CNI gave the veth (eth0): the guest interface is renamed to it.
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`: the veth's, given to the VM's virtio-net device.
    pub mac: String,
    /// The NIC's address when the VM was booted before the pod's network was known (a
    /// pool VM's): the guest finds the interface by it and gives it `mac`.
    pub device_mac: Option<String>,
    pub mtu: u32,
    pub addresses: Vec<(IpAddr, u8)>,
}

/// A route of the pod, in guest terms (`device` is a [`GuestInterface::name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRoute {
    /// None: the default route.
    pub dest: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub device: String,
    pub source: Option<IpAddr>,
    /// 0 universe, 253 link, 254 host.
    pub scope: u8,
}

/// One veth wired to one tap.
#[derive(Debug)]
pub struct Endpoint {
    pub guest: GuestInterface,
    veth_index: u32,
    tap_name: String,
    tap: OwnedFd,
}

impl Endpoint {
    /// The tap's fd, for the hypervisor (it inherits it; ours stays open until teardown).
    pub fn tap_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }

    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }
}

/// The wiring of one pod's netns; removed by [`PodNetwork::teardown`] or on drop.
#[derive(Debug)]
pub struct PodNetwork {
    path: PathBuf,
    /// Held open so teardown reaches the netns even after its path is unmounted.
    netns: File,
    endpoints: Vec<Endpoint>,
    routes: Vec<GuestRoute>,
    redirect: Option<loopback_redirect::LoopbackRedirect>,
    torn_down: bool,
}

impl PodNetwork {
    /// Wires every veth of the netns at `path` to a tap. On error nothing is left in
    /// the netns (taps and filters made so far are removed).
    pub fn setup(path: &Path) -> Result<PodNetwork, NetworkError> {
        PodNetwork::wire(path, None)
    }

    /// How many veths the netns at `path` holds (what [`PodNetwork::setup`] would wire);
    /// an interface hull cannot wire is an error, as there.
    pub fn veth_count(path: &Path) -> Result<usize, NetworkError> {
        let netns = open_netns(path)?;
        let owned = path.to_path_buf();
        netns::run_in(&netns, path, move || async move {
            wire::veth_count(&owned).await
        })?
    }

    /// Wires the one veth of the netns at `path` to the tap of a pool VM's NIC, moved
    /// into the netns: the VM booted with it, before the pod existed. On error nothing
    /// is left in the netns.
    pub fn adopt(path: &Path, nic: PoolNic) -> Result<PodNetwork, NetworkError> {
        let netns = open_netns(path)?;
        let (tap, device_mac) = nic.move_to(&netns, path)?;
        let mut net = PodNetwork::wire(path, Some(tap))?;
        for e in &mut net.endpoints {
            e.guest.device_mac = Some(device_mac.clone());
        }
        Ok(net)
    }

    fn wire(path: &Path, pool_tap: Option<(String, OwnedFd)>) -> Result<PodNetwork, NetworkError> {
        let netns = open_netns(path)?;
        let owned = path.to_path_buf();
        let (endpoints, routes) = netns::run_in(&netns, path, move || async move {
            wire::setup(&owned, pool_tap).await
        })??;
        let net = PodNetwork {
            path: path.to_path_buf(),
            netns,
            endpoints,
            routes,
            redirect: None,
            torn_down: false,
        };
        for e in &net.endpoints {
            tracing::info!(netns = %net.path.display(), veth = %e.guest.name, tap = %e.tap_name, mac = %e.guest.mac, mtu = e.guest.mtu, "pod interface wired to a tap");
        }
        Ok(net)
    }

    pub fn netns(&self) -> &Path {
        &self.path
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn routes(&self) -> &[GuestRoute] {
        &self.routes
    }

    /// Sends TCP connections to loopback in the netns to listeners of the shim there
    /// (see [`loopback_redirect`]): the listeners, for the port forwarder. Removed by
    /// [`PodNetwork::teardown`].
    pub fn redirect_loopback(
        &mut self,
    ) -> Result<loopback_redirect::RedirectListeners, NetworkError> {
        let (redirect, listeners) =
            loopback_redirect::LoopbackRedirect::install(&self.netns, &self.path)?;
        tracing::info!(netns = %self.path.display(), port = redirect.port(), "loopback redirected for port forwarding");
        self.redirect = Some(redirect);
        Ok(listeners)
    }

    /// Removes the port-forward redirect, the tc filters (with their ingress qdiscs) and
    /// the taps. Call after the VM is gone (it holds the taps open). Idempotent.
    pub fn teardown(&mut self) -> Result<(), NetworkError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        if let Some(mut redirect) = self.redirect.take() {
            if let Err(e) = redirect.remove() {
                tracing::warn!(netns = %self.path.display(), error = %e, "removing the port-forward redirect");
            }
        }
        let endpoints = std::mem::take(&mut self.endpoints);
        let links: Vec<(u32, String)> = endpoints
            .iter()
            .map(|e| (e.veth_index, e.tap_name.clone()))
            .collect();
        // Our fds go first: a tap without any open fd disappears by itself.
        drop(endpoints);
        unwire(&self.netns, &self.path, links)
    }

    /// The netns path and the (veth index, tap name) of each wired veth: what
    /// [`unwire_path`] needs to remove the wiring once this value is gone with its
    /// process.
    pub fn wiring(&self) -> (PathBuf, Vec<(u32, String)>) {
        let links = self
            .endpoints
            .iter()
            .map(|e| (e.veth_index, e.tap_name.clone()))
            .collect();
        (self.path.clone(), links)
    }
}

fn open_netns(path: &Path) -> Result<File, NetworkError> {
    File::open(path).map_err(|source| NetworkError::NetnsMissing {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes the tc filters (with the veths' ingress qdiscs) and the taps `links` from
/// the netns at `path`: the wiring a process that is gone left. Idempotent.
pub fn unwire_path(path: &Path, links: &[(u32, String)]) -> Result<(), NetworkError> {
    let netns = File::open(path).map_err(|source| NetworkError::NetnsMissing {
        path: path.to_path_buf(),
        source,
    })?;
    unwire(&netns, path, links.to_vec())
}

fn unwire(netns: &File, path: &Path, links: Vec<(u32, String)>) -> Result<(), NetworkError> {
    let owned = path.to_path_buf();
    let result = netns::run_in(netns, path, move || async move {
        wire::teardown(&owned, &links).await
    })?;
    if result.is_ok() {
        tracing::info!(netns = %path.display(), "pod network unwired");
    }
    result
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(netns = %self.path.display(), error = %e, "removing the pod's taps and tc filters");
        }
    }
}

/// `aa:bb:cc:dd:ee:ff` for a link-layer address.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests;
