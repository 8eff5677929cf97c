//! Guest networking, in the pod's network namespace: the virtio-net devices show up in the
//! guest's root namespace; UpdateInterfaces moves each one (found by MAC) into the pod's
//! namespace and gives it the name, MTU and addresses of the pod interface it stands for;
//! UpdateRoutes adds the pod's routes there. Everything goes over rtnetlink (any number of
//! IPv4 and IPv6 addresses, moving a link with IFLA_NET_NS_FD).
//!
//! Every request is checked whole before anything changes; counts are bounded.
mod links;
mod routes;
mod rtnl;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;

use husk_protocol::agent::{Interface, Route};

use crate::error::{AgentError, Result};
use routes::NewRoute;
use rtnl::Rtnl;

/// Most interfaces, addresses per interface, or routes in one request.
const MAX_ITEMS: usize = 64;

fn invalid(msg: String) -> AgentError {
    AgentError::InvalidArgument(msg)
}

fn kernel(what: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |e| AgentError::io(what, e)
}

fn parse_mac(mac: &str) -> Result<[u8; 6]> {
    let bad = || invalid(format!("hw_addr {mac:?} is not a MAC address like aa:bb:cc:dd:ee:ff"));
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for b in &mut out {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty() && name.len() <= 15 && name != "." && name != ".." && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("interface name {name:?} is not valid")))
    }
}

fn parse_addr(what: &str, addr: &str, prefix: u32) -> Result<(IpAddr, u8)> {
    let ip: IpAddr = addr.parse().map_err(|_| invalid(format!("{what} {addr:?} is not an IP address")))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(invalid(format!("{what} {addr}/{prefix}: prefix longer than {max}")));
    }
    Ok((ip, prefix as u8))
}

/// One checked interface of a request.
struct Plan {
    mac: [u8; 6],
    shown: String,
    name: Option<String>,
    new_mac: Option<[u8; 6]>,
    mtu: u32,
    addrs: Vec<(IpAddr, u8)>,
}

fn plan(i: &Interface) -> Result<Plan> {
    let mac = parse_mac(&i.hw_addr)?;
    if i.addresses.len() > MAX_ITEMS {
        return Err(invalid(format!("{} addresses on {}, more than {MAX_ITEMS}", i.addresses.len(), i.hw_addr)));
    }
    let addrs = i.addresses.iter().map(|a| parse_addr("address", &a.address, a.prefix_len)).collect::<Result<Vec<_>>>()?;
    let name = (!i.name.is_empty()).then(|| check_ifname(&i.name).map(|()| i.name.clone())).transpose()?;
    let new_mac = (!i.new_hw_addr.is_empty()).then(|| parse_mac(&i.new_hw_addr)).transpose()?;
    if new_mac.is_some_and(|m| m[0] & 1 != 0 || m == [0; 6]) {
        return Err(invalid(format!("new_hw_addr {:?} is not a unicast MAC address", i.new_hw_addr)));
    }
    Ok(Plan { mac, shown: i.hw_addr.clone(), name, new_mac, mtu: i.mtu, addrs })
}

/// Checks every interface of an UpdateInterfaces request without touching any (the fuzz
/// target's entry; `update_interfaces` checks the same way before it changes anything).
pub fn plan_interfaces(ifs: &[Interface]) -> Result<()> {
    if ifs.len() > MAX_ITEMS {
        return Err(invalid(format!("{} interfaces, more than {MAX_ITEMS}", ifs.len())));
    }
    ifs.iter().try_for_each(|i| plan(i).map(drop))
}

/// Checks every route of an UpdateRoutes request without adding any.
pub fn plan_routes(routes: &[Route]) -> Result<()> {
    if routes.len() > MAX_ITEMS {
        return Err(invalid(format!("{} routes, more than {MAX_ITEMS}", routes.len())));
    }
    routes.iter().try_for_each(|r| route_plan(r).map(drop))
}

/// Whether `ns` is the network namespace the agent's threads live in.
fn is_own_namespace(ns: BorrowedFd<'_>) -> Result<bool> {
    let own = std::fs::metadata("/proc/thread-self/ns/net").map_err(kernel("reading the agent's network namespace".into()))?;
    let pod = nix::sys::stat::fstat(ns).map_err(|e| AgentError::sys("reading the pod's network namespace", e))?;
    Ok(own.ino() == pod.st_ino && own.dev() == pod.st_dev)
}

fn configure(pod: &mut Rtnl, p: &Plan, index: u32, current: &str) -> Result<()> {
    let mut name = current.to_string();
    if let Some(new) = p.name.as_deref().filter(|n| *n != current) {
        links::set_up(pod, index, false).map_err(kernel(format!("setting {name} down")))?;
        links::rename(pod, index, new).map_err(kernel(format!("renaming {name} to {new}")))?;
        name = new.to_string();
    }
    if let Some(mac) = p.new_mac {
        let shown = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        links::set_mac(pod, index, mac).map_err(kernel(format!("setting MAC {shown} on {name}")))?;
    }
    if p.mtu != 0 {
        links::set_mtu(pod, index, p.mtu).map_err(kernel(format!("setting MTU {} on {name}", p.mtu)))?;
    }
    for (ip, prefix) in &p.addrs {
        links::add_address(pod, index, *ip, *prefix).map_err(kernel(format!("adding {ip}/{prefix} to {name}")))?;
    }
    links::set_up(pod, index, true).map_err(kernel(format!("bringing {name} up")))?;
    log::info!("interface {name} ({}) configured in the pod's network namespace", p.shown);
    Ok(())
}

/// Moves each interface (found by MAC in the guest's namespace, or already in the pod's) into
/// the pod's network namespace `pod_net`, names it, sets its MTU and addresses and brings it up.
pub fn update_interfaces(pod_net: BorrowedFd<'_>, ifs: &[Interface]) -> Result<()> {
    if ifs.len() > MAX_ITEMS {
        return Err(invalid(format!("{} interfaces, more than {MAX_ITEMS}", ifs.len())));
    }
    let plans = ifs.iter().map(plan).collect::<Result<Vec<_>>>()?;
    let mut own = Rtnl::open().map_err(kernel("opening a netlink socket".into()))?;
    let mut pod = Rtnl::open_in(pod_net).map_err(kernel("opening a netlink socket in the pod's network namespace".into()))?;
    let separate = !is_own_namespace(pod_net)?;
    for p in &plans {
        if separate {
            let here = links::list(&mut own).map_err(kernel("listing the guest's interfaces".into()))?;
            if let Some(l) = here.iter().find(|l| l.mac == p.mac || p.new_mac.is_some_and(|m| l.mac == m)) {
                links::move_to(&mut own, l.index, pod_net.as_fd())
                    .map_err(kernel(format!("moving {} ({}) into the pod's network namespace", l.name, p.shown)))?;
            }
        }
        let there = links::list(&mut pod).map_err(kernel("listing the pod's interfaces".into()))?;
        // A retry finds the interface with its new MAC.
        let Some(l) = there.iter().find(|l| l.mac == p.mac || p.new_mac.is_some_and(|m| l.mac == m)) else {
            return Err(invalid(format!("no network interface has MAC {}", p.shown)));
        };
        configure(&mut pod, p, l.index, &l.name)?;
    }
    Ok(())
}

fn route_plan(r: &Route) -> Result<(NewRoute, &str)> {
    let gateway = (!r.gateway.is_empty()).then(|| parse_addr("gateway", &r.gateway, 0).map(|(ip, _)| ip)).transpose()?;
    let (dst, prefix) = match r.destination.as_str() {
        "" | "default" => match gateway {
            Some(IpAddr::V6(_)) => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            _ => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        },
        d => {
            let (addr, prefix) = d.split_once('/').ok_or_else(|| invalid(format!("route destination {d:?} is not in CIDR form")))?;
            let prefix: u32 = prefix.parse().map_err(|_| invalid(format!("route destination {d:?} has a bad prefix")))?;
            parse_addr("route destination", addr, prefix)?
        }
    };
    if !r.device.is_empty() {
        check_ifname(&r.device)?;
    }
    if gateway.is_none() && r.device.is_empty() {
        return Err(invalid(format!("route to {dst}/{prefix} has neither gateway nor device")));
    }
    if gateway.is_some_and(|g| g.is_ipv4() != dst.is_ipv4()) {
        return Err(invalid(format!("route {dst}/{prefix}: gateway {:?} is of another IP family", r.gateway)));
    }
    Ok((NewRoute { dst, prefix, gateway, oif: None, metric: r.metric }, r.device.as_str()))
}

/// Adds routes in the pod's network namespace `pod_net` (after UpdateInterfaces; a route
/// to an existing destination replaces it).
pub fn update_routes(pod_net: BorrowedFd<'_>, routes: &[Route]) -> Result<()> {
    if routes.len() > MAX_ITEMS {
        return Err(invalid(format!("{} routes, more than {MAX_ITEMS}", routes.len())));
    }
    let plans = routes.iter().map(route_plan).collect::<Result<Vec<_>>>()?;
    let mut pod = Rtnl::open_in(pod_net).map_err(kernel("opening a netlink socket in the pod's network namespace".into()))?;
    let there = links::list(&mut pod).map_err(kernel("listing the pod's interfaces".into()))?;
    for (mut r, dev) in plans {
        if !dev.is_empty() {
            let l = there
                .iter()
                .find(|l| l.name == dev)
                .ok_or_else(|| invalid(format!("route to {}/{}: no interface {dev:?} in the pod's network namespace", r.dst, r.prefix)))?;
            r.oif = Some(l.index);
        }
        let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        routes::add(&mut pod, &r).map_err(kernel(format!("adding route {}/{}{via} dev {dev:?}", r.dst, r.prefix)))?;
    }
    Ok(())
}

/// Brings up `lo` in network namespace `ns` (a new namespace has it down; runc raises it too).
pub fn loopback_up_in(ns: BorrowedFd<'_>) -> Result<()> {
    let mut rtnl = Rtnl::open_in(ns).map_err(kernel("opening a netlink socket in the pod's network namespace".into()))?;
    set_up_named(&mut rtnl, "lo", true).map_err(kernel("bringing up lo in the pod's network namespace".into()))
}

fn set_up_named(rtnl: &mut Rtnl, name: &str, up: bool) -> std::io::Result<()> {
    let all = links::list(rtnl)?;
    let l = all.iter().find(|l| l.name == name).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENODEV))?;
    links::set_up(rtnl, l.index, up)
}

/// Sets or clears IFF_UP on interface `name` of the agent's own namespace.
pub fn set_up(name: &str, up: bool) -> nix::Result<()> {
    let mut rtnl = Rtnl::open().map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    set_up_named(&mut rtnl, name, up).map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use husk_protocol::agent::IpAddress;

    fn iface(mac: &str, name: &str, addrs: &[(&str, u32)]) -> Interface {
        let mut i = Interface::new();
        i.hw_addr = mac.into();
        i.name = name.into();
        i.addresses = addrs
            .iter()
            .map(|(a, p)| {
                let mut x = IpAddress::new();
                x.address = a.to_string();
                x.prefix_len = *p;
                x
            })
            .collect();
        i
    }

    #[test]
    fn interfaces_are_checked_before_anything_is_touched() {
        let p = plan(&iface("02:AA:bb:cc:dd:ee", "eth0", &[("10.0.0.2", 24), ("fd00::2", 64)])).unwrap();
        assert_eq!((p.mac, p.name.as_deref(), p.addrs.len()), ([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee], Some("eth0"), 2));
        for (bad, needle) in [
            (iface("02:aa:bb:cc:dd", "", &[]), "MAC"),
            (iface("02:aa:bb:cc:dd:ee:ff", "", &[]), "MAC"),
            (iface("02:aa:bb:cc:dd:zz", "", &[]), "MAC"),
            (iface("02:aa:bb:cc:dd:ee", "a/b", &[]), "a/b"),
            (iface("02:aa:bb:cc:dd:ee", "", &[("10.0.0.2", 33)]), "prefix"),
        ] {
            let err = plan(&bad).err().unwrap();
            assert!(err.to_string().contains(needle), "{err}");
        }
        let mut multicast = iface("02:aa:bb:cc:dd:ee", "", &[]);
        multicast.new_hw_addr = "01:00:5e:00:00:01".into();
        assert!(plan(&multicast).err().unwrap().to_string().contains("unicast"));
        let many = iface("02:aa:bb:cc:dd:ee", "", &vec![("10.0.0.2", 24); MAX_ITEMS + 1]);
        assert!(plan(&many).is_err());
    }

    #[test]
    fn routes_are_checked_before_any_is_added() {
        let route = |d: &str, g: &str, dev: &str| {
            let mut r = Route::new();
            r.destination = d.into();
            r.gateway = g.into();
            r.device = dev.into();
            r
        };
        let r = route("default", "10.0.0.1", "");
        let (p, dev) = route_plan(&r).unwrap();
        assert_eq!((p.dst.to_string().as_str(), p.prefix, dev), ("0.0.0.0", 0, ""));
        let r6 = route("default", "fd00::1", "");
        assert!(route_plan(&r6).unwrap().0.dst.is_ipv6());
        for (bad, needle) in [
            (route("10.1.0.0", "10.0.0.1", ""), "CIDR"),
            (route("10.1.0.0/16", "", ""), "neither gateway nor device"),
            (route("10.1.0.0/16", "fd00::1", ""), "another IP family"),
            (route("10.1.0.0/40", "10.0.0.1", ""), "prefix"),
        ] {
            let err = route_plan(&bad).err().unwrap();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
