//! The netlink work inside the pod's netns (run through [`super::netns::run_in`]):
//! read the links CNI made, with their addresses and routes; add a tap per veth and
//! the two tc redirects; remove them again.
//!
//! tc is done with rtnetlink's own `TrafficFilterNewRequest::redirect` (u32 match-all,
//! `action mirred egress redirect`), which is exactly `tc filter add dev X parent ffff:
//! protocol all u32 match u8 0 0 action mirred egress redirect dev Y`.

use std::net::IpAddr;
use std::os::fd::RawFd;
use std::path::Path;

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, LinkUnspec};

use super::{format_mac, tap, Endpoint, GuestInterface, GuestRoute, NetworkError};

/// tc's "protocol all": ETH_P_ALL in network byte order.
const PROTOCOL_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();
/// tc priority of hull's filters.
const FILTER_PRIORITY: u16 = 1;

/// A link of the netns.
struct Link {
    index: u32,
    name: String,
    kind: Option<InfoKind>,
    mac: Vec<u8>,
    mtu: u32,
}

fn netlink_failed(
    netns: &Path,
    what: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> NetworkError + '_ {
    let what = what.into();
    move |source| NetworkError::Netlink {
        netns: netns.to_path_buf(),
        what,
        source,
    }
}

fn connect(netns: &Path) -> Result<Handle, NetworkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetworkError::Io {
        netns: netns.to_path_buf(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut l = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: Vec::new(),
        mtu: 0,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(m) => l.mac = m.clone(),
            LinkAttribute::Mtu(m) => l.mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.clone());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

async fn links(handle: &Handle, netns: &Path) -> Result<Vec<Link>, NetworkError> {
    let msgs: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink_failed(netns, "listing links"))?;
    Ok(msgs.iter().map(link_of).collect())
}

fn kind_name(kind: &Option<InfoKind>) -> String {
    match kind {
        Some(k) => format!("{k:?}").to_lowercase(),
        None => "device (no link kind)".into(),
    }
}

/// Which links are wired: every veth; lo (and `ours`, a pool VM's tap moved in) is
/// left alone; anything else is refused.
fn plan(netns: &Path, links: Vec<Link>, ours: Option<&str>) -> Result<Vec<Link>, NetworkError> {
    let mut veths = Vec::new();
    for l in links {
        if l.name == "lo" || Some(l.name.as_str()) == ours {
            continue;
        }
        if l.kind != Some(InfoKind::Veth) {
            return Err(NetworkError::Unsupported {
                netns: netns.to_path_buf(),
                kind: kind_name(&l.kind),
                name: l.name,
            });
        }
        if l.mac.len() != 6 {
            return Err(NetworkError::BadInterface {
                netns: netns.to_path_buf(),
                what: format!("link-layer address {:?} is not a MAC address", l.mac),
                name: l.name,
            });
        }
        veths.push(l);
    }
    Ok(veths)
}

async fn addresses(
    handle: &Handle,
    netns: &Path,
    l: &Link,
) -> Result<Vec<(IpAddr, u8)>, NetworkError> {
    let msgs: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(l.index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink_failed(netns, format!("addresses of {}", l.name)))?;
    let mut out = Vec::new();
    for m in msgs {
        if m.header.index != l.index {
            continue;
        }
        for a in &m.attributes {
            if let AddressAttribute::Address(ip) = a {
                // The guest kernel makes its own IPv6 link-local address.
                if let IpAddr::V6(v6) = ip {
                    if v6.segments()[0] & 0xffc0 == 0xfe80 {
                        continue;
                    }
                }
                out.push((*ip, m.header.prefix_len));
            }
        }
    }
    Ok(out)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The main table's unicast routes out of the wired veths, except those the kernel
/// adds by itself for an address (the guest kernel adds them again).
async fn routes(
    handle: &Handle,
    netns: &Path,
    veths: &[Link],
) -> Result<Vec<GuestRoute>, NetworkError> {
    let mut out = Vec::new();
    for ipv6 in [false, true] {
        let req = if ipv6 {
            rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        let msgs: Vec<_> = handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(netlink_failed(netns, "listing routes"))?;
        for m in msgs {
            let h = &m.header;
            if h.table != RouteHeader::RT_TABLE_MAIN
                || h.kind != RouteType::Unicast
                || h.protocol == RouteProtocol::Kernel
            {
                continue;
            }
            let mut r = GuestRoute {
                dest: None,
                gateway: None,
                device: String::new(),
                source: None,
                scope: match h.scope {
                    RouteScope::Universe => 0,
                    RouteScope::Link => 253,
                    RouteScope::Host => 254,
                    _ => continue,
                },
            };
            let mut oif = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(d) => {
                        r.dest = route_ip(d).map(|ip| (ip, h.destination_prefix_length))
                    }
                    RouteAttribute::Gateway(g) => r.gateway = route_ip(g),
                    RouteAttribute::PrefSource(s) => r.source = route_ip(s),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let Some(dev) = veths.iter().find(|l| Some(l.index) == oif) else {
                continue;
            };
            if let Some((IpAddr::V6(v6), _)) = r.dest {
                if v6.segments()[0] & 0xffc0 == 0xfe80 || v6.segments()[0] & 0xff00 == 0xff00 {
                    continue;
                }
            }
            r.device = dev.name.clone();
            out.push(r);
        }
    }
    Ok(out)
}

/// Adds an ingress qdisc on `from` and a filter redirecting all its frames to `to`.
async fn redirect(
    handle: &Handle,
    netns: &Path,
    from: &Link,
    to: &Link,
) -> Result<(), NetworkError> {
    let from_index = i32::try_from(from.index).map_err(|_| NetworkError::BadInterface {
        netns: netns.to_path_buf(),
        name: from.name.clone(),
        what: format!("index {} out of range", from.index),
    })?;
    handle
        .qdisc()
        .add(from_index)
        .ingress()
        .execute()
        .await
        .map_err(netlink_failed(
            netns,
            format!("ingress qdisc on {}", from.name),
        ))?;
    handle
        .traffic_filter(from_index)
        .add()
        .ingress()
        .priority(FILTER_PRIORITY)
        .protocol(PROTOCOL_ALL)
        .redirect(to.index)
        .map_err(netlink_failed(
            netns,
            format!("redirect filter {} -> {}", from.name, to.name),
        ))?
        .execute()
        .await
        .map_err(netlink_failed(
            netns,
            format!("redirect filter {} -> {}", from.name, to.name),
        ))
}

async fn remove_ingress(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    let Ok(index) = i32::try_from(index) else {
        return Ok(());
    };
    let mut req = handle.qdisc().del(index);
    // The ingress qdisc: parent ffff:fff1, handle ffff:0.
    req.message_mut().header.parent = rtnetlink::packet_route::tc::TcHandle::INGRESS;
    req.message_mut().header.handle = rtnetlink::packet_route::tc::TcHandle {
        major: 0xffff,
        minor: 0,
    };
    req.execute().await
}

/// Whether a netlink error says the object is already gone.
fn gone(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV
        || m.raw_code() == -libc::ENOENT
        || m.raw_code() == -libc::EINVAL)
}

/// Wires `veth` to a tap: `existing` (a pool VM's, moved into this netns: its name
/// and fd), else a new one.
async fn wire_one(
    handle: &Handle,
    netns: &Path,
    i: usize,
    veth: &Link,
    existing: Option<(String, std::os::fd::OwnedFd)>,
) -> Result<Endpoint, NetworkError> {
    let (tap_name, fd) = match existing {
        Some(tap) => tap,
        None => {
            let tap_name = format!("hulltap{i}");
            let fd = tap::open(&tap_name).map_err(|source| NetworkError::Tap {
                netns: netns.to_path_buf(),
                name: tap_name.clone(),
                source,
            })?;
            (tap_name, fd)
        }
    };
    // Dropping the endpoint (on a later error) closes the fd and so removes the tap.
    let tap_link = links(handle, netns)
        .await?
        .into_iter()
        .find(|l| l.name == tap_name)
        .ok_or_else(|| NetworkError::Tap {
            netns: netns.to_path_buf(),
            name: tap_name.clone(),
            source: std::io::Error::other("the tap is not listed after TUNSETIFF"),
        })?;
    handle
        .link()
        .change(
            LinkUnspec::new_with_index(tap_link.index)
                .mtu(veth.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(netlink_failed(
            netns,
            format!("mtu {} and up on {tap_name}", veth.mtu),
        ))?;
    let endpoint = Endpoint {
        guest: GuestInterface {
            name: veth.name.clone(),
            mac: format_mac(&veth.mac),
            device_mac: None,
            mtu: veth.mtu,
            addresses: addresses(handle, netns, veth).await?,
        },
        veth_index: veth.index,
        tap_name,
        tap: fd,
    };
    let wired = async {
        redirect(handle, netns, veth, &tap_link).await?;
        redirect(handle, netns, &tap_link, veth).await
    }
    .await;
    if let Err(e) = wired {
        let _ = remove_ingress(handle, veth.index).await;
        return Err(e);
    }
    Ok(endpoint)
}

/// Moves link `name` of this netns (`netns` names it in errors) into the netns open
/// as `target`.
pub async fn move_link(netns: &Path, name: &str, target: RawFd) -> Result<(), NetworkError> {
    let handle = connect(netns)?;
    let link = links(&handle, netns)
        .await?
        .into_iter()
        .find(|l| l.name == name)
        .ok_or_else(|| NetworkError::BadInterface {
            netns: netns.to_path_buf(),
            name: name.to_string(),
            what: "is gone".into(),
        })?;
    handle
        .link()
        .change(
            LinkUnspec::new_with_index(link.index)
                .setns_by_fd(target)
                .build(),
        )
        .execute()
        .await
        .map_err(netlink_failed(
            netns,
            format!("moving {name} to another netns"),
        ))
}

/// How many veths [`setup`] would wire.
pub async fn veth_count(netns: &Path) -> Result<usize, NetworkError> {
    let handle = connect(netns)?;
    Ok(plan(netns, links(&handle, netns).await?, None)?.len())
}

/// Wires every veth of the netns (the first to `pool_tap` when given, a tap already in
/// the netns); on error removes what it made.
pub async fn setup(
    netns: &Path,
    mut pool_tap: Option<(String, std::os::fd::OwnedFd)>,
) -> Result<(Vec<Endpoint>, Vec<GuestRoute>), NetworkError> {
    let handle = connect(netns)?;
    let ours = pool_tap.as_ref().map(|(name, _)| name.clone());
    let veths = plan(netns, links(&handle, netns).await?, ours.as_deref())?;
    let routes = routes(&handle, netns, &veths).await?;
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (i, veth) in veths.iter().enumerate() {
        match wire_one(&handle, netns, i, veth, pool_tap.take()).await {
            Ok(e) => endpoints.push(e),
            Err(e) => {
                let made: Vec<_> = endpoints
                    .iter()
                    .map(|e| (e.veth_index, e.tap_name.clone()))
                    .collect();
                drop(endpoints);
                if let Err(t) = teardown_with(&handle, netns, &made).await {
                    tracing::warn!(error = %t, "removing a half-wired pod network");
                }
                return Err(e);
            }
        }
    }
    Ok((endpoints, routes))
}

async fn teardown_with(
    handle: &Handle,
    netns: &Path,
    made: &[(u32, String)],
) -> Result<(), NetworkError> {
    let mut first = None;
    for (veth, tap) in made {
        if let Err(e) = remove_ingress(handle, *veth).await {
            if !gone(&e) {
                first.get_or_insert(netlink_failed(
                    netns,
                    format!("removing the ingress qdisc of interface {veth}"),
                )(e));
            }
        }
        // Closed fds removed the tap already unless something else still holds it.
        let still: Vec<LinkMessage> = handle
            .link()
            .get()
            .match_name(tap.clone())
            .execute()
            .try_collect()
            .await
            .unwrap_or_default();
        for l in still {
            if let Err(e) = handle.link().del(l.header.index).execute().await {
                if !gone(&e) {
                    first.get_or_insert(netlink_failed(netns, format!("deleting {tap}"))(e));
                }
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// Removes the filters (with the veths' ingress qdiscs) and the taps `made`.
pub async fn teardown(netns: &Path, made: &[(u32, String)]) -> Result<(), NetworkError> {
    let handle = connect(netns)?;
    teardown_with(&handle, netns, made).await
}
