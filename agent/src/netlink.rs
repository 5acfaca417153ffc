//! The guest's network, set over rtnetlink from what the host read in the pod's netns:
//! an interface (found by its MAC, renamed, MTU, addresses, up), the routes (the main
//! table's non-kernel routes replaced), and loopback up. Requests are validated in
//! `service::network` before anything here runs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteHeader, RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// Why the guest network could not be set.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no guest interface has MAC {0} (is the VM's virtio-net device there?)")]
    NoSuchMac(String),
    #[error("no guest interface is named {0:?}")]
    NoSuchDevice(String),
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("route {what} is not valid: {detail}")]
    BadRoute { what: String, detail: String },
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
}

fn netlink_failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// An interface as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceConfig {
    pub name: String,
    pub mac: [u8; 6],
    /// The NIC's current address when it is to be changed to `mac`.
    pub device_mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub addresses: Vec<(IpAddr, u8)>,
}

/// A route as validated (`dest` None: default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub dest: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub device: String,
    pub source: Option<IpAddr>,
    pub scope: u8,
    pub ipv6: bool,
}

fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, NetError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink_failed("listing links"))
}

fn attr_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn attr_mac(l: &LinkMessage) -> Option<&[u8]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, NetError> {
    links(handle)
        .await?
        .iter()
        .find(|l| attr_name(l) == Some(name))
        .map(|l| l.header.index)
        .ok_or_else(|| NetError::NoSuchDevice(name.to_string()))
}

/// `lo` up (the pod's containers share the guest's network namespace).
pub async fn loopback_up() -> Result<(), NetError> {
    let handle = connect()?;
    let index = index_of(&handle, "lo").await?;
    handle
        .link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink_failed("lo up"))
}

/// Configures the interface with `cfg.mac` (or `cfg.device_mac`, which then becomes
/// `cfg.mac`) as `cfg` says.
pub async fn configure_interface(cfg: &IfaceConfig) -> Result<(), NetError> {
    let handle = connect()?;
    let device_mac = cfg.device_mac.unwrap_or(cfg.mac);
    let link = links(&handle)
        .await?
        .into_iter()
        .find(|l| attr_mac(l) == Some(device_mac.as_slice()))
        .ok_or_else(|| NetError::NoSuchMac(format_mac(&device_mac)))?;
    let index = link.header.index;
    let current = attr_name(&link).unwrap_or_default().to_string();
    // A link is renamed only while down.
    handle
        .link()
        .change(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .map_err(netlink_failed(format!("{current} down")))?;
    let mut change = LinkUnspec::new_with_index(index).mtu(cfg.mtu);
    if device_mac != cfg.mac {
        change = change.address(cfg.mac.to_vec());
    }
    if current != cfg.name {
        change = change.name(cfg.name.clone());
    }
    handle
        .link()
        .change(change.build())
        .execute()
        .await
        .map_err(netlink_failed(format!(
            "{current}: name {} mtu {} address {}",
            cfg.name,
            cfg.mtu,
            format_mac(&cfg.mac)
        )))?;
    // Replace, not add: the addresses are exactly the pod's.
    let old: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink_failed(format!("addresses of {}", cfg.name)))?;
    for a in old {
        let global = a.attributes.iter().any(|x| match x {
            AddressAttribute::Address(IpAddr::V6(v6)) => v6.segments()[0] & 0xffc0 != 0xfe80,
            AddressAttribute::Address(IpAddr::V4(_)) => true,
            _ => false,
        });
        if a.header.index == index && global {
            handle
                .address()
                .del(a)
                .execute()
                .await
                .map_err(netlink_failed(format!("old address of {}", cfg.name)))?;
        }
    }
    for (ip, prefix) in &cfg.addresses {
        handle
            .address()
            .add(index, *ip, *prefix)
            .replace()
            .execute()
            .await
            .map_err(netlink_failed(format!("{ip}/{prefix} on {}", cfg.name)))?;
    }
    handle
        .link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink_failed(format!("{} up", cfg.name)))
}

fn scope(s: u8) -> RouteScope {
    match s {
        253 => RouteScope::Link,
        254 => RouteScope::Host,
        _ => RouteScope::Universe,
    }
}

fn invalid_route(r: &RouteConfig, detail: impl std::fmt::Display) -> NetError {
    NetError::BadRoute {
        what: format!("{:?} via {:?} dev {}", r.dest, r.gateway, r.device),
        detail: detail.to_string(),
    }
}

fn build_route(r: &RouteConfig, index: u32) -> Result<RouteMessage, NetError> {
    let msg = if r.ipv6 {
        let mut b = RouteMessageBuilder::<Ipv6Addr>::new();
        if let Some((IpAddr::V6(d), len)) = r.dest {
            b = b.destination_prefix(d, len);
        }
        if let Some(IpAddr::V6(g)) = r.gateway {
            b = b.gateway(g);
        }
        if let Some(IpAddr::V6(s)) = r.source {
            b = b.pref_source(s);
        }
        b.output_interface(index)
            .scope(scope(r.scope))
            .protocol(RouteProtocol::Boot)
            .build()
    } else {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new();
        if let Some((IpAddr::V4(d), len)) = r.dest {
            b = b.destination_prefix(d, len);
        }
        if let Some(IpAddr::V4(g)) = r.gateway {
            b = b.gateway(g);
        }
        if let Some(IpAddr::V4(s)) = r.source {
            b = b.pref_source(s);
        }
        b.output_interface(index)
            .scope(scope(r.scope))
            .protocol(RouteProtocol::Boot)
            .build()
    };
    // The builders take mixed families silently: refuse them here.
    let family_ok = [r.dest.map(|d| d.0), r.gateway, r.source]
        .into_iter()
        .flatten()
        .all(|ip| ip.is_ipv6() == r.ipv6);
    if !family_ok {
        return Err(invalid_route(r, "mixes IPv4 and IPv6 addresses"));
    }
    Ok(msg)
}

async fn main_routes(handle: &Handle) -> Result<Vec<RouteMessage>, NetError> {
    let mut out = Vec::new();
    for req in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let msgs: Vec<RouteMessage> = handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(netlink_failed("listing routes"))?;
        out.extend(msgs.into_iter().filter(|m| {
            m.header.table == RouteHeader::RT_TABLE_MAIN
                && m.header.protocol != RouteProtocol::Kernel
        }));
    }
    Ok(out)
}

/// Replaces the main table's non-kernel routes with `routes` (link-scope routes first,
/// so that gateways are reachable when the routes through them are added).
pub async fn replace_routes(routes: &[RouteConfig]) -> Result<(), NetError> {
    let handle = connect()?;
    for old in main_routes(&handle).await? {
        handle
            .route()
            .del(old)
            .execute()
            .await
            .map_err(netlink_failed("deleting an old route"))?;
    }
    let mut ordered: Vec<&RouteConfig> = routes.iter().collect();
    ordered.sort_by_key(|r| if r.scope == 253 { 0 } else { 1 });
    for r in ordered {
        let index = index_of(&handle, &r.device).await?;
        let msg = build_route(r, index)?;
        handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(netlink_failed(format!(
                "adding route {:?} via {:?} dev {}",
                r.dest, r.gateway, r.device
            )))?;
    }
    Ok(())
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
