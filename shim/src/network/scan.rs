//! What a pod's network namespace holds: its interfaces (kind, MAC, MTU, addresses) and the
//! routes through them, read over rtnetlink.

use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType};
use netlink_packet_route::RouteNetlinkMessage;

use super::rtnl::Rtnl;
use super::NetworkError;

/// The main routing table (RT_TABLE_MAIN).
const MAIN_TABLE: u32 = 254;

/// Kinds of interface whose traffic a tc redirect can carry to a tap: Ethernet-like devices.
/// An interface without a kind (a physical NIC moved into the namespace) is one too.
const SUPPORTED_KINDS: [InfoKind; 4] = [InfoKind::Veth, InfoKind::MacVlan, InfoKind::IpVlan, InfoKind::Vlan];

/// One interface of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index in the namespace.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its kind ("veth", "macvlan", ...; "" for a device without one).
    pub kind: String,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Link layer type (ARPHRD_*).
    pub link_type: LinkLayerType,
}

/// An address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
}

/// A route of the main table through one of the interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination and prefix length (prefix 0: the default route).
    pub dst: Addr,
    /// Gateway, if any (a route without one is on-link).
    pub gateway: Option<IpAddr>,
    /// The interface's index.
    pub oif: u32,
    /// Its metric (RTA_PRIORITY; 0 if none).
    pub metric: u32,
}

/// An interface to hand to the guest, with its addresses and routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The link.
    pub link: Link,
    /// Its global addresses (link-local ones are left out: the guest makes its own).
    pub addrs: Vec<Addr>,
    /// Routes through it, on-link ones first.
    pub routes: Vec<Route>,
}

/// Formats a MAC address as aa:bb:cc:dd:ee:ff.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn link_of(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        kind: String::new(),
        mac: [0; 6],
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        link_type: m.header.link_layer_type,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(v) => link.mtu = *v,
            LinkAttribute::Address(b) if b.len() == 6 => link.mac.copy_from_slice(b),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// Every interface of the namespace.
pub fn links(rtnl: &mut Rtnl) -> Result<Vec<Link>, NetworkError> {
    let msgs =
        rtnl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default())).map_err(|source| NetworkError::Netlink { op: "list the interfaces".into(), source })?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
            _ => None,
        })
        .collect())
}

/// The interface named `name`, if there is one.
pub fn link_by_name(rtnl: &mut Rtnl, name: &str) -> Result<Option<Link>, NetworkError> {
    Ok(links(rtnl)?.into_iter().find(|l| l.name == name))
}

fn addrs(rtnl: &mut Rtnl) -> Result<Vec<(u32, Addr)>, NetworkError> {
    let msgs = rtnl
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(|source| NetworkError::Netlink { op: "list the addresses".into(), source })?;
    let mut out = Vec::new();
    for m in &msgs {
        let RouteNetlinkMessage::NewAddress(a) = m else { continue };
        if a.header.scope != AddressScope::Universe {
            continue;
        }
        // IFA_LOCAL is the interface's own address where both are given (point-to-point).
        let local = a.attributes.iter().find_map(|x| if let AddressAttribute::Local(ip) = x { Some(*ip) } else { None });
        let addr = a.attributes.iter().find_map(|x| if let AddressAttribute::Address(ip) = x { Some(*ip) } else { None });
        if let Some(ip) = local.or(addr) {
            out.push((a.header.index, Addr { ip, prefix: a.header.prefix_len }));
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

/// The routes of the main table that the guest must get: unicast ones the kernel did not make
/// from an address (those it makes itself) and not learned from router advertisements.
fn routes(rtnl: &mut Rtnl) -> Result<Vec<Route>, NetworkError> {
    let msgs =
        rtnl.dump(RouteNetlinkMessage::GetRoute(RouteMessage::default())).map_err(|source| NetworkError::Netlink { op: "list the routes".into(), source })?;
    let mut out = Vec::new();
    for m in &msgs {
        let RouteNetlinkMessage::NewRoute(r) = m else { continue };
        let table = r.attributes.iter().find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None }).unwrap_or(u32::from(r.header.table));
        if table != MAIN_TABLE || r.header.kind != RouteType::Unicast || matches!(r.header.protocol, RouteProtocol::Kernel | RouteProtocol::Ra) {
            continue;
        }
        let mut dst = None;
        let mut gateway = None;
        let mut oif = None;
        let mut metric = 0;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = route_ip(d),
                RouteAttribute::Gateway(g) => gateway = route_ip(g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Priority(p) => metric = *p,
                _ => {}
            }
        }
        let ipv6 = matches!(r.header.address_family, netlink_packet_route::AddressFamily::Inet6);
        let unspecified = if ipv6 { IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) };
        // A route without an output interface (multipath, blackhole-like) has no place in
        // the guest; the caller sees only routes through the interfaces it hands over.
        let Some(oif) = oif else { continue };
        out.push(Route { dst: Addr { ip: dst.unwrap_or(unspecified), prefix: r.header.destination_prefix_length }, gateway, oif, metric });
    }
    Ok(out)
}

/// Whether a link of this kind and type can be carried to a tap by a tc redirect.
fn supported(link: &Link) -> bool {
    link.link_type == LinkLayerType::Ether && (link.kind.is_empty() || SUPPORTED_KINDS.iter().any(|k| k.to_string() == link.kind))
}

/// The interfaces of the namespace the guest must get, with their addresses and routes.
/// Loopback and interfaces that are down (such as the tunl0/sit0 fallback devices every new
/// namespace gets when their modules are loaded) are left out; an up interface of another
/// kind, or without an address, is an error: the guest could not get what CNI made.
/// `netns` names the namespace in errors; interfaces whose index is in `skip` (those handed
/// over already, and husk's taps) are left out.
pub fn interfaces(rtnl: &mut Rtnl, netns: &str, skip: &[u32]) -> Result<Vec<Interface>, NetworkError> {
    let links = links(rtnl)?;
    let addrs = addrs(rtnl)?;
    let routes = routes(rtnl)?;
    let mut out = Vec::new();
    for link in links {
        if link.link_type == LinkLayerType::Loopback || !link.up || skip.contains(&link.index) {
            continue;
        }
        if !supported(&link) {
            let kind = if link.kind.is_empty() { format!("{:?}", link.link_type).to_lowercase() } else { link.kind.clone() };
            return Err(NetworkError::Unsupported { netns: netns.into(), name: link.name, kind });
        }
        let mine: Vec<Addr> = addrs.iter().filter(|(i, _)| *i == link.index).map(|(_, a)| *a).collect();
        if mine.is_empty() {
            return Err(NetworkError::NoAddress { netns: netns.into(), name: link.name });
        }
        let mut through: Vec<Route> = routes.iter().filter(|r| r.oif == link.index).cloned().collect();
        // On-link routes first: a gateway must be reachable when its route is added.
        through.sort_by_key(|r| r.gateway.is_some());
        out.push(Interface { link, addrs: mine, routes: through });
    }
    Ok(out)
}
