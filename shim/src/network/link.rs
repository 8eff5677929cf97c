//! Link changes the shim makes in the pod's namespace: only on the taps it created.

use netlink_packet_route::link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::rtnl::{Rtnl, RtnlError};

/// Gives tap `index` the pod interface's `mtu`, keeps the namespace's own IPv6 stack off it
/// (no link-local address, so the namespace sends nothing of its own to the guest) and brings
/// it up.
pub fn prepare_tap(rtnl: &mut Rtnl, index: u32, mtu: u32) -> Result<(), RtnlError> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::Mtu(mtu));
    m.attributes.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)])]));
    rtnl.ack(RouteNetlinkMessage::SetLink(m), 0)?;
    let mut up = LinkMessage::default();
    up.header.index = index;
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;
    rtnl.ack(RouteNetlinkMessage::SetLink(up), 0)
}

/// Deletes interface `index`.
pub fn delete(rtnl: &mut Rtnl, index: u32) -> Result<(), RtnlError> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    rtnl.ack(RouteNetlinkMessage::DelLink(m), 0)
}
