//! Adding a route of the main table over rtnetlink.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::rtnl::Rtnl;

/// A route to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRoute {
    /// Destination network (unspecified address with prefix 0: the default route).
    pub dst: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// Gateway (none: on-link).
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Metric (0: none).
    pub metric: u32,
}

/// Adds `r` to the main table, replacing a route to the same destination.
pub fn add(rtnl: &mut Rtnl, r: &NewRoute) -> io::Result<()> {
    let mut m = RouteMessage::default();
    m.header.address_family = if r.dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.destination_prefix_length = r.prefix;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = if r.gateway.is_some() { RouteScope::Universe } else { RouteScope::Link };
    m.header.kind = RouteType::Unicast;
    if r.prefix > 0 {
        m.attributes.push(RouteAttribute::Destination(RouteAddress::from(r.dst)));
    }
    if let Some(g) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    if let Some(i) = r.oif {
        m.attributes.push(RouteAttribute::Oif(i));
    }
    if r.metric != 0 {
        m.attributes.push(RouteAttribute::Priority(r.metric));
    }
    rtnl.ack(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_REPLACE)
}
