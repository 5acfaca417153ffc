//! Typed requests about the guest's network: the pod's interfaces (UpdateInterface)
//! and routes (UpdateRoutes), from what `crate::network` read in the pod's netns.
//! Replies are checked against the request: the guest is not trusted.

use std::time::Duration;

use super::{AgentClient, AgentError};
use crate::network::{GuestInterface, GuestRoute};

fn interface(i: &GuestInterface) -> hull_proto::Interface {
    let mut p = hull_proto::Interface::new();
    p.name = i.name.clone();
    p.hw_addr = i.mac.clone();
    p.device_hw_addr = i.device_mac.clone().unwrap_or_default();
    p.mtu = u64::from(i.mtu);
    p.up = true;
    p.addresses = i
        .addresses
        .iter()
        .map(|(ip, prefix)| {
            let mut a = hull_proto::IpAddress::new();
            a.address = ip.to_string();
            a.prefix_len = u32::from(*prefix);
            a.ipv6 = ip.is_ipv6();
            a
        })
        .collect();
    p
}

fn route(r: &GuestRoute) -> hull_proto::Route {
    let mut p = hull_proto::Route::new();
    p.dest = r
        .dest
        .map(|(ip, len)| format!("{ip}/{len}"))
        .unwrap_or_default();
    p.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
    p.device = r.device.clone();
    p.source = r.source.map(|s| s.to_string()).unwrap_or_default();
    p.scope = u32::from(r.scope);
    p.ipv6 = match (r.dest, r.gateway) {
        (Some((ip, _)), _) | (None, Some(ip)) => ip.is_ipv6(),
        (None, None) => false,
    };
    p
}

impl AgentClient {
    /// Configures the guest interface with `iface.mac` as `iface` says (renamed, MTU,
    /// addresses, up).
    pub async fn update_interface(&self, iface: &GuestInterface) -> Result<(), AgentError> {
        let mut req = hull_proto::UpdateInterfaceRequest::new();
        req.interface = protobuf::MessageField::some(interface(iface));
        let reply = call!(self, update_interface, req)?;
        if reply.name != iface.name || !reply.hw_addr.eq_ignore_ascii_case(&iface.mac) {
            return Err(AgentError::BadReply {
                rpc: "update_interface",
                what: format!(
                    "asked for {} ({}), the agent configured {:.16} ({:.17})",
                    iface.name, iface.mac, reply.name, reply.hw_addr
                ),
            });
        }
        Ok(())
    }

    /// Replaces the guest's routes with `routes`.
    pub async fn update_routes(&self, routes: &[GuestRoute]) -> Result<(), AgentError> {
        let mut req = hull_proto::UpdateRoutesRequest::new();
        let mut r = hull_proto::Routes::new();
        r.routes = routes.iter().map(route).collect();
        req.routes = protobuf::MessageField::some(r);
        let reply = call!(self, update_routes, req)?;
        if reply.routes.len() != routes.len() {
            return Err(AgentError::BadReply {
                rpc: "update_routes",
                what: format!(
                    "asked for {} routes, the agent set {}",
                    routes.len(),
                    reply.routes.len()
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_and_link_route_convert() {
        let r = route(&GuestRoute {
            dest: None,
            gateway: Some("10.244.0.1".parse().expect("ip")),
            device: "eth0".into(),
            source: None,
            scope: 0,
        });
        assert_eq!(
            (
                r.dest.as_str(),
                r.gateway.as_str(),
                r.device.as_str(),
                r.ipv6
            ),
            ("", "10.244.0.1", "eth0", false)
        );
        let r = route(&GuestRoute {
            dest: Some(("fd00::".parse().expect("ip"), 64)),
            gateway: None,
            device: "eth0".into(),
            source: None,
            scope: 253,
        });
        assert_eq!((r.dest.as_str(), r.scope, r.ipv6), ("fd00::/64", 253, true));
        let i = interface(&GuestInterface {
            name: "eth0".into(),
            mac: "0a:58:0a:f4:00:05".into(),
            device_mac: Some("02:00:00:00:00:01".into()),
            mtu: 1500,
            addresses: vec![("10.244.0.5".parse().expect("ip"), 24)],
        });
        assert_eq!(i.device_hw_addr, "02:00:00:00:00:01");
        assert_eq!(
            (
                i.mtu,
                i.addresses[0].address.as_str(),
                i.addresses[0].prefix_len,
                i.up
            ),
            (1500, "10.244.0.5", 24, true)
        );
    }
}
