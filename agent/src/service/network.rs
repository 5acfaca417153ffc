//! UpdateInterface and UpdateRoutes: every field checked (the host may be buggy or
//! hostile), then set through `crate::netlink`. The replies echo what was set.

use std::net::IpAddr;

use hull_proto::{Interface, Routes, UpdateInterfaceRequest, UpdateRoutesRequest};
use tracing::info;

use super::ServiceError;
use crate::netlink::{self, IfaceConfig, NetError, RouteConfig};

fn invalid(what: impl Into<String>) -> ServiceError {
    ServiceError::InvalidArgument(what.into())
}

impl From<NetError> for ServiceError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::NoSuchMac(_) | NetError::NoSuchDevice(_) => {
                ServiceError::NotFound(e.to_string())
            }
            NetError::BadRoute { .. } => ServiceError::InvalidArgument(e.to_string()),
            other => ServiceError::internal("guest network", other),
        }
    }
}

fn check_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "lo"
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "interface name {name:?} is not a valid name (1-15 of [A-Za-z0-9._-], not lo)"
        )))
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], ServiceError> {
    let bad = || {
        invalid(format!(
            "hw_addr {s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"
        ))
    };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr, ServiceError> {
    s.parse::<IpAddr>()
        .map_err(|_| invalid(format!("{field} {s:?} is not an IP address")))
}

fn check_prefix(field: &str, ip: &IpAddr, len: u32) -> Result<u8, ServiceError> {
    let max = if ip.is_ipv6() { 128 } else { 32 };
    u8::try_from(len)
        .ok()
        .filter(|l| u32::from(*l) <= max)
        .ok_or_else(|| invalid(format!("{field} {ip}/{len}: prefix length above {max}")))
}

/// The interface request, checked.
pub fn interface_config(req: &UpdateInterfaceRequest) -> Result<IfaceConfig, ServiceError> {
    let i = req
        .interface
        .as_ref()
        .ok_or_else(|| invalid("UpdateInterface without an interface"))?;
    check_name(&i.name)?;
    let mac = parse_mac(&i.hw_addr)?;
    let device_mac = match i.device_hw_addr.as_str() {
        "" => None,
        text => Some(parse_mac(text)?),
    };
    if !(68..=65535).contains(&i.mtu) {
        return Err(invalid(format!(
            "mtu {} of {} is outside 68..=65535",
            i.mtu, i.name
        )));
    }
    let mut addresses = Vec::new();
    for a in &i.addresses {
        let ip = parse_ip("address", &a.address)?;
        if ip.is_ipv6() != a.ipv6 {
            return Err(invalid(format!(
                "address {ip}: the ipv6 flag says {}",
                a.ipv6
            )));
        }
        addresses.push((ip, check_prefix("address", &ip, a.prefix_len)?));
    }
    if !i.up {
        return Err(invalid(format!(
            "interface {} asked down: hull only configures interfaces up",
            i.name
        )));
    }
    Ok(IfaceConfig {
        name: i.name.clone(),
        mac,
        device_mac,
        mtu: i.mtu as u32,
        addresses,
    })
}

/// The routes request, checked.
pub fn route_configs(req: &UpdateRoutesRequest) -> Result<Vec<RouteConfig>, ServiceError> {
    let routes = req
        .routes
        .as_ref()
        .map(|r| r.routes.as_slice())
        .unwrap_or_default();
    let mut out = Vec::new();
    for r in routes {
        check_name(&r.device)?;
        let dest = if r.dest.is_empty() {
            None
        } else {
            let (ip, len) = r
                .dest
                .split_once('/')
                .ok_or_else(|| invalid(format!("route dest {:?} is not a CIDR", r.dest)))?;
            let ip = parse_ip("route dest", ip)?;
            let len: u32 = len
                .parse()
                .map_err(|_| invalid(format!("route dest {:?} is not a CIDR", r.dest)))?;
            Some((ip, check_prefix("route dest", &ip, len)?))
        };
        let opt_ip = |field: &str, s: &str| (!s.is_empty()).then(|| parse_ip(field, s)).transpose();
        let gateway = opt_ip("route gateway", &r.gateway)?;
        let source = opt_ip("route source", &r.source)?;
        let scope = match r.scope {
            0 | 253 | 254 => r.scope as u8,
            s => {
                return Err(invalid(format!(
                    "route scope {s} (0 universe, 253 link, 254 host)"
                )))
            }
        };
        if dest.is_none() && gateway.is_none() {
            return Err(invalid(format!(
                "a default route on {} needs a gateway",
                r.device
            )));
        }
        out.push(RouteConfig {
            dest,
            gateway,
            device: r.device.clone(),
            source,
            scope,
            ipv6: r.ipv6,
        });
    }
    Ok(out)
}

pub async fn do_update_interface(req: &UpdateInterfaceRequest) -> Result<Interface, ServiceError> {
    let cfg = interface_config(req)?;
    netlink::loopback_up().await?;
    netlink::configure_interface(&cfg).await?;
    info!(name = %cfg.name, mac = %netlink::format_mac(&cfg.mac), mtu = cfg.mtu, addresses = ?cfg.addresses, "interface configured");
    Ok(req.interface.clone().unwrap_or_default())
}

pub async fn do_update_routes(req: &UpdateRoutesRequest) -> Result<Routes, ServiceError> {
    let routes = route_configs(req)?;
    netlink::replace_routes(&routes).await?;
    info!(count = routes.len(), "routes set");
    Ok(req.routes.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use hull_proto::{IpAddress, Route};

    use super::*;

    fn iface(name: &str, mac: &str, mtu: u64, addr: &str, len: u32) -> UpdateInterfaceRequest {
        let mut a = IpAddress::new();
        a.address = addr.into();
        a.prefix_len = len;
        a.ipv6 = addr.contains(':');
        let mut i = Interface::new();
        i.name = name.into();
        i.hw_addr = mac.into();
        i.mtu = mtu;
        i.up = true;
        i.addresses = vec![a];
        let mut req = UpdateInterfaceRequest::new();
        req.interface = protobuf::MessageField::some(i);
        req
    }

    #[test]
    fn a_nic_found_by_its_device_address_gets_a_unicast_one() {
        let mut req = iface("eth0", "0a:58:0a:00:00:05", 1500, "10.0.0.5", 24);
        let mut i = req.interface.take().expect("interface");
        i.device_hw_addr = "02:00:00:aa:bb:cc".into();
        req.interface = protobuf::MessageField::some(i.clone());
        let cfg = interface_config(&req).expect("valid");
        assert_eq!(cfg.device_mac, Some([2, 0, 0, 0xaa, 0xbb, 0xcc]));
        assert_eq!(cfg.mac, [0x0a, 0x58, 0x0a, 0, 0, 5]);
        i.hw_addr = "01:00:5e:00:00:01".into();
        req.interface = protobuf::MessageField::some(i.clone());
        let e = interface_config(&req).expect_err("multicast");
        assert!(e.to_string().contains("01:00:5e:00:00:01"), "{e}");
        i.hw_addr = "0a:58:0a:00:00:05".into();
        i.device_hw_addr = "nope".into();
        req.interface = protobuf::MessageField::some(i);
        assert!(interface_config(&req).is_err());
    }

    #[test]
    fn interfaces_are_checked_field_by_field() {
        let ok = interface_config(&iface("eth0", "0a:58:0a:f4:00:05", 1500, "10.244.0.5", 24))
            .expect("valid");
        assert_eq!(ok.mac, [0x0a, 0x58, 0x0a, 0xf4, 0, 5]);
        assert_eq!(ok.addresses, vec![("10.244.0.5".parse().expect("ip"), 24)]);
        for (req, needle) in [
            (
                iface("eth0/x", "0a:58:0a:f4:00:05", 1500, "10.0.0.1", 24),
                "interface name",
            ),
            (
                iface("lo", "0a:58:0a:f4:00:05", 1500, "10.0.0.1", 24),
                "interface name",
            ),
            (
                iface("eth0", "0a:58:0a:f4:00", 1500, "10.0.0.1", 24),
                "hw_addr",
            ),
            (
                iface("eth0", "01:58:0a:f4:00:05", 1500, "10.0.0.1", 24),
                "hw_addr",
            ),
            (
                iface("eth0", "0a:58:0a:f4:00:05", 10, "10.0.0.1", 24),
                "mtu 10",
            ),
            (
                iface("eth0", "0a:58:0a:f4:00:05", 1500, "10.0.0.300", 24),
                "not an IP address",
            ),
            (
                iface("eth0", "0a:58:0a:f4:00:05", 1500, "10.0.0.1", 33),
                "prefix length",
            ),
        ] {
            let e = interface_config(&req).expect_err(needle);
            assert!(e.to_string().contains(needle), "{e} should name {needle}");
        }
        assert!(interface_config(&UpdateInterfaceRequest::new()).is_err());
    }

    fn routes(list: &[(&str, &str, &str, u32)]) -> UpdateRoutesRequest {
        let mut rs = Routes::new();
        for (dest, gw, dev, scope) in list {
            let mut r = Route::new();
            r.dest = dest.to_string();
            r.gateway = gw.to_string();
            r.device = dev.to_string();
            r.scope = *scope;
            rs.routes.push(r);
        }
        let mut req = UpdateRoutesRequest::new();
        req.routes = protobuf::MessageField::some(rs);
        req
    }

    #[test]
    fn routes_are_checked() {
        let ok = route_configs(&routes(&[
            ("", "10.244.0.1", "eth0", 0),
            ("10.96.0.0/12", "", "eth0", 253),
        ]))
        .expect("valid");
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].dest, None);
        for (req, needle) in [
            (routes(&[("", "", "eth0", 0)]), "needs a gateway"),
            (routes(&[("10.0.0.0", "", "eth0", 253)]), "not a CIDR"),
            (routes(&[("10.0.0.0/40", "", "eth0", 253)]), "prefix length"),
            (routes(&[("", "10.0.0.1", "eth0", 7)]), "scope 7"),
            (routes(&[("", "10.0.0.1", "", 0)]), "interface name"),
            (routes(&[("", "gw", "eth0", 0)]), "not an IP address"),
        ] {
            let e = route_configs(&req).expect_err(needle);
            assert!(e.to_string().contains(needle), "{e} should name {needle}");
        }
    }
}
