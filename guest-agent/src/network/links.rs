//! Links and their addresses over rtnetlink: find one by MAC, move it into another network
//! namespace, name, size, address and raise it.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::rtnl::Rtnl;

/// A link of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its hardware address.
    pub mac: Vec<u8>,
}

/// Every link of the socket's namespace.
pub fn list(rtnl: &mut Rtnl) -> io::Result<Vec<Link>> {
    let msgs = rtnl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewLink(l) = m else { continue };
        let mut link = Link { index: l.header.index, name: String::new(), mac: Vec::new() };
        for a in l.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Address(b) => link.mac = b,
                _ => {}
            }
        }
        out.push(link);
    }
    Ok(out)
}

fn set(rtnl: &mut Rtnl, index: u32, f: impl FnOnce(&mut LinkMessage)) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    f(&mut m);
    rtnl.ack(RouteNetlinkMessage::SetLink(m), 0)
}

/// Moves link `index` into network namespace `ns`.
pub fn move_to(rtnl: &mut Rtnl, index: u32, ns: BorrowedFd<'_>) -> io::Result<()> {
    set(rtnl, index, |m| m.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd())))
}

/// Sets or clears IFF_UP.
pub fn set_up(rtnl: &mut Rtnl, index: u32, up: bool) -> io::Result<()> {
    set(rtnl, index, |m| {
        m.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
        m.header.change_mask = LinkFlags::Up;
    })
}

/// Renames link `index` (it must be down).
pub fn rename(rtnl: &mut Rtnl, index: u32, name: &str) -> io::Result<()> {
    set(rtnl, index, |m| m.attributes.push(LinkAttribute::IfName(name.into())))
}

/// Sets the hardware address.
pub fn set_mac(rtnl: &mut Rtnl, index: u32, mac: [u8; 6]) -> io::Result<()> {
    set(rtnl, index, |m| m.attributes.push(LinkAttribute::Address(mac.to_vec())))
}

/// Sets the MTU.
pub fn set_mtu(rtnl: &mut Rtnl, index: u32, mtu: u32) -> io::Result<()> {
    set(rtnl, index, |m| m.attributes.push(LinkAttribute::Mtu(mtu)))
}

/// Adds (or keeps) address `ip/prefix` on link `index`. IPv6 addresses skip duplicate address
/// detection: CNI's side of the pod network already owns them.
pub fn add_address(rtnl: &mut Rtnl, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
    let mut m = AddressMessage::default();
    m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.prefix_len = prefix;
    m.header.scope = AddressScope::Universe;
    m.header.index = index;
    if ip.is_ipv6() {
        m.header.flags = AddressHeaderFlags::Nodad;
    }
    m.attributes.push(AddressAttribute::Local(ip));
    m.attributes.push(AddressAttribute::Address(ip));
    rtnl.ack(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_REPLACE)
}
