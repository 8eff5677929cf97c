//! What the guest gets of the pod's interfaces, through the agent.

use husk_protocol::agent;
use husk_protocol::agent_ttrpc::AgentClient;

use super::scan::{mac_string, Route};
use super::{Endpoint, NetworkError};

/// Longest interface name (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// The guest's interfaces: found by the MAC their device booted with, then named, addressed,
/// sized and given the MAC of the pod's interfaces.
pub fn interfaces(endpoints: &[Endpoint]) -> Vec<agent::Interface> {
    endpoints
        .iter()
        .map(|e| {
            let mac = e.iface.link.mac;
            agent::Interface {
                hw_addr: mac_string(&e.tap.guest_mac),
                new_hw_addr: if e.tap.guest_mac == mac { String::new() } else { mac_string(&mac) },
                name: e.iface.link.name.chars().take(MAX_IFNAME).collect(),
                mtu: e.iface.link.mtu,
                addresses: e
                    .iface
                    .addrs
                    .iter()
                    .map(|a| agent::IpAddress { address: a.ip.to_string(), prefix_len: a.prefix.into(), ..Default::default() })
                    .collect(),
                ..Default::default()
            }
        })
        .collect()
}

/// The guest's routes: on-link routes of every interface first, then those via a gateway.
pub fn routes(endpoints: &[Endpoint]) -> Vec<agent::Route> {
    let mut all: Vec<(&Endpoint, &Route)> = endpoints.iter().flat_map(|e| e.iface.routes.iter().map(move |r| (e, r))).collect();
    all.sort_by_key(|(_, r)| r.gateway.is_some());
    all.into_iter()
        .map(|(e, r)| agent::Route {
            destination: if r.dst.prefix == 0 { "default".into() } else { format!("{}/{}", r.dst.ip, r.dst.prefix) },
            gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
            device: e.iface.link.name.clone(),
            metric: r.metric,
            ..Default::default()
        })
        .collect()
}

/// Gives the guest `endpoints`: interfaces, then routes.
pub fn configure(agent: &AgentClient, ctx: &dyn Fn() -> ttrpc::context::Context, endpoints: &[Endpoint]) -> Result<(), NetworkError> {
    if endpoints.is_empty() {
        return Ok(());
    }
    let ifs = agent::UpdateInterfacesRequest { interfaces: interfaces(endpoints), ..Default::default() };
    agent.update_interfaces(ctx(), &ifs).map_err(|source| NetworkError::Agent { op: "UpdateInterfaces", source })?;
    let routes = agent::UpdateRoutesRequest { routes: routes(endpoints), ..Default::default() };
    agent.update_routes(ctx(), &routes).map_err(|source| NetworkError::Agent { op: "UpdateRoutes", source })?;
    Ok(())
}
