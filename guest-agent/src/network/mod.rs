//! Guest networking: interfaces found by MAC get their name, MTU and addresses; routes added.
//! Limit of the ioctl interface: one IPv4 address per interface (any number of IPv6).
mod ioctl;

use std::net::IpAddr;

use husk_protocol::agent::{Interface, Route};

use crate::error::{AgentError, Result};

pub use ioctl::set_up;

const MAX_ITEMS: usize = 64;

fn invalid(msg: String) -> AgentError {
    AgentError::InvalidArgument(msg)
}

/// Checks a MAC address text (`aa:bb:cc:dd:ee:ff`); returns it in lower case.
fn check_mac(mac: &str) -> Result<String> {
    let want = mac.to_ascii_lowercase();
    let valid = want.len() == 17
        && want.split(':').count() == 6
        && want.split(':').all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    if !valid {
        return Err(invalid(format!("hw_addr {mac:?} is not a MAC address like aa:bb:cc:dd:ee:ff")));
    }
    Ok(want)
}

/// Name of the interface whose MAC is `mac` (checked, lower case; /sys/class/net/*/address).
fn find_by_mac(mac: &str) -> Result<String> {
    let entries = std::fs::read_dir("/sys/class/net").map_err(|e| AgentError::io("listing /sys/class/net", e))?;
    for e in entries.flatten() {
        let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if addr.trim().eq_ignore_ascii_case(mac) {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    Err(invalid(format!("no network interface has MAC {mac}")))
}

fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
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

fn sys(what: String) -> impl FnOnce(nix::Error) -> AgentError {
    move |e| AgentError::sys(what, e)
}

/// One interface of UpdateInterfaces, checked.
#[derive(Debug)]
pub struct InterfacePlan {
    /// MAC address, lower case.
    pub mac: String,
    /// New name, if one is asked for.
    pub name: Option<String>,
    /// MTU (0: unchanged).
    pub mtu: u32,
    /// Addresses with their prefix lengths (at most one IPv4).
    pub addrs: Vec<(IpAddr, u8)>,
}

/// Checks every interface of an UpdateInterfaces request, before anything is changed.
pub fn plan_interfaces(ifs: &[Interface]) -> Result<Vec<InterfacePlan>> {
    if ifs.len() > MAX_ITEMS {
        return Err(invalid(format!("{} interfaces, more than {MAX_ITEMS}", ifs.len())));
    }
    ifs.iter()
        .map(|i| {
            let mac = check_mac(&i.hw_addr)?;
            if i.addresses.len() > MAX_ITEMS {
                return Err(invalid(format!("{} addresses on {}, more than {MAX_ITEMS}", i.addresses.len(), i.hw_addr)));
            }
            let addrs = i.addresses.iter().map(|a| parse_addr("address", &a.address, a.prefix_len)).collect::<Result<Vec<_>>>()?;
            if addrs.iter().filter(|(ip, _)| ip.is_ipv4()).count() > 1 {
                return Err(invalid(format!("interface {}: at most one IPv4 address is supported", i.hw_addr)));
            }
            let name = (!i.name.is_empty()).then(|| check_ifname(&i.name).map(|()| i.name.clone())).transpose()?;
            Ok(InterfacePlan { mac, name, mtu: i.mtu, addrs })
        })
        .collect()
}

/// Configures interfaces and brings them up (all are checked first).
pub fn update_interfaces(ifs: &[Interface]) -> Result<()> {
    for i in plan_interfaces(ifs)? {
        let mut name = find_by_mac(&i.mac)?;
        if let Some(new) = i.name.filter(|n| *n != name) {
            ioctl::set_up(&name, false).map_err(sys(format!("setting {name} down")))?;
            ioctl::rename(&name, &new).map_err(sys(format!("renaming {name} to {new}")))?;
            name = new;
        }
        if i.mtu != 0 {
            ioctl::set_mtu(&name, i.mtu).map_err(sys(format!("setting MTU {} on {name}", i.mtu)))?;
        }
        ioctl::set_up(&name, true).map_err(sys(format!("bringing {name} up")))?;
        for (ip, prefix) in i.addrs {
            match ip {
                IpAddr::V4(v4) => ioctl::set_ipv4(&name, v4, prefix),
                IpAddr::V6(v6) => ioctl::add_ipv6(&name, v6, prefix),
            }
            .map_err(sys(format!("adding {ip}/{prefix} to {name}")))?;
        }
        log::info!("interface {name} ({}) configured", i.mac);
    }
    Ok(())
}

/// One route of UpdateRoutes, checked.
#[derive(Debug)]
pub struct RoutePlan {
    /// Destination network.
    pub dst: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// Gateway, of the destination's family.
    pub gateway: Option<IpAddr>,
    /// Device ("" for none).
    pub device: String,
    /// Metric.
    pub metric: u32,
}

/// Checks every route of an UpdateRoutes request, before anything is changed.
pub fn plan_routes(routes: &[Route]) -> Result<Vec<RoutePlan>> {
    if routes.len() > MAX_ITEMS {
        return Err(invalid(format!("{} routes, more than {MAX_ITEMS}", routes.len())));
    }
    routes
        .iter()
        .map(|r| {
            let gateway = (!r.gateway.is_empty()).then(|| parse_addr("gateway", &r.gateway, 0).map(|(ip, _)| ip)).transpose()?;
            let (dst, prefix) = match r.destination.as_str() {
                "" | "default" => match gateway {
                    Some(IpAddr::V6(_)) => (IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
                    _ => (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
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
            Ok(RoutePlan { dst, prefix, gateway, device: r.device.clone(), metric: r.metric })
        })
        .collect()
}

/// Adds routes (all are checked first).
pub fn update_routes(routes: &[Route]) -> Result<()> {
    for r in plan_routes(routes)? {
        let (dst, prefix) = (r.dst, r.prefix);
        let what = format!("adding route {dst}/{prefix} via {:?} dev {:?}", r.gateway, r.device);
        match (dst, r.gateway) {
            (IpAddr::V4(d), None) => ioctl::add_route_v4(d, prefix, None, &r.device, r.metric),
            (IpAddr::V4(d), Some(IpAddr::V4(g))) => ioctl::add_route_v4(d, prefix, Some(g), &r.device, r.metric),
            (IpAddr::V6(d), None) => ioctl::add_route_v6(d, prefix, None, &r.device, r.metric),
            (IpAddr::V6(d), Some(IpAddr::V6(g))) => ioctl::add_route_v6(d, prefix, Some(g), &r.device, r.metric),
            _ => return Err(invalid(format!("route {dst}/{prefix}: gateway {:?} is of another IP family", r.gateway))),
        }
        .map_err(sys(what))?;
    }
    Ok(())
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
    fn every_interface_is_checked_before_any_is_touched() {
        let good = iface("02:AA:bb:cc:dd:ee", "eth0", &[("10.0.0.2", 24), ("fd00::2", 64)]);
        let plan = plan_interfaces(std::slice::from_ref(&good)).unwrap();
        assert_eq!((plan[0].mac.as_str(), plan[0].name.as_deref(), plan[0].addrs.len()), ("02:aa:bb:cc:dd:ee", Some("eth0"), 2));
        for (bad, needle) in [
            (iface("02:aa:bb:cc:dd", "", &[]), "MAC"),
            (iface("02:aa:bb:cc:dd:ee", "a/b", &[]), "a/b"),
            (iface("02:aa:bb:cc:dd:ee", "", &[("10.0.0.2", 33)]), "prefix"),
            (iface("02:aa:bb:cc:dd:ee", "", &[("10.0.0.2", 24), ("10.0.0.3", 24)]), "one IPv4"),
        ] {
            // The bad one second: nothing is applied for the good first one either.
            let err = plan_interfaces(&[good.clone(), bad]).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
        assert!(plan_interfaces(&vec![good; MAX_ITEMS + 1]).is_err());
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
        let plan = plan_routes(&[route("default", "10.0.0.1", ""), route("fd00::/64", "", "eth0")]).unwrap();
        assert_eq!((plan[0].dst.to_string().as_str(), plan[0].prefix), ("0.0.0.0", 0));
        for (bad, needle) in [
            (route("10.1.0.0", "10.0.0.1", ""), "CIDR"),
            (route("10.1.0.0/16", "", ""), "neither gateway nor device"),
            (route("10.1.0.0/16", "fd00::1", ""), "another IP family"),
            (route("10.1.0.0/40", "10.0.0.1", ""), "prefix"),
        ] {
            let err = plan_routes(&[route("default", "10.0.0.1", ""), bad]).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
