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

/// Name of the interface whose MAC is `mac` (/sys/class/net/*/address).
fn find_by_mac(mac: &str) -> Result<String> {
    let want = mac.to_ascii_lowercase();
    let valid = want.len() == 17
        && want.split(':').count() == 6
        && want.split(':').all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    if !valid {
        return Err(invalid(format!("hw_addr {mac:?} is not a MAC address like aa:bb:cc:dd:ee:ff")));
    }
    let entries = std::fs::read_dir("/sys/class/net").map_err(|e| AgentError::io("listing /sys/class/net", e))?;
    for e in entries.flatten() {
        let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if addr.trim().eq_ignore_ascii_case(&want) {
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

/// Configures interfaces and brings them up.
pub fn update_interfaces(ifs: &[Interface]) -> Result<()> {
    if ifs.len() > MAX_ITEMS {
        return Err(invalid(format!("{} interfaces, more than {MAX_ITEMS}", ifs.len())));
    }
    for i in ifs {
        let mut name = find_by_mac(&i.hw_addr)?;
        if i.addresses.len() > MAX_ITEMS {
            return Err(invalid(format!("{} addresses on {}, more than {MAX_ITEMS}", i.addresses.len(), i.hw_addr)));
        }
        let addrs = i
            .addresses
            .iter()
            .map(|a| parse_addr("address", &a.address, a.prefix_len))
            .collect::<Result<Vec<_>>>()?;
        if addrs.iter().filter(|(ip, _)| ip.is_ipv4()).count() > 1 {
            return Err(invalid(format!("interface {}: at most one IPv4 address is supported", i.hw_addr)));
        }
        if !i.name.is_empty() && i.name != name {
            check_ifname(&i.name)?;
            ioctl::set_up(&name, false).map_err(sys(format!("setting {name} down")))?;
            ioctl::rename(&name, &i.name).map_err(sys(format!("renaming {name} to {}", i.name)))?;
            name = i.name.clone();
        }
        if i.mtu != 0 {
            ioctl::set_mtu(&name, i.mtu).map_err(sys(format!("setting MTU {} on {name}", i.mtu)))?;
        }
        ioctl::set_up(&name, true).map_err(sys(format!("bringing {name} up")))?;
        for (ip, prefix) in addrs {
            match ip {
                IpAddr::V4(v4) => ioctl::set_ipv4(&name, v4, prefix),
                IpAddr::V6(v6) => ioctl::add_ipv6(&name, v6, prefix),
            }
            .map_err(sys(format!("adding {ip}/{prefix} to {name}")))?;
        }
        log::info!("interface {name} ({}) configured", i.hw_addr);
    }
    Ok(())
}

/// Adds routes.
pub fn update_routes(routes: &[Route]) -> Result<()> {
    if routes.len() > MAX_ITEMS {
        return Err(invalid(format!("{} routes, more than {MAX_ITEMS}", routes.len())));
    }
    for r in routes {
        let gateway = (!r.gateway.is_empty())
            .then(|| parse_addr("gateway", &r.gateway, 0).map(|(ip, _)| ip))
            .transpose()?;
        let (dst, prefix) = match r.destination.as_str() {
            "" | "default" => match gateway {
                Some(IpAddr::V6(_)) => (IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
                _ => (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
            },
            d => {
                let (addr, prefix) = d
                    .split_once('/')
                    .ok_or_else(|| invalid(format!("route destination {d:?} is not in CIDR form")))?;
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
        let what = format!("adding route {dst}/{prefix} via {:?} dev {:?}", r.gateway, r.device);
        match (dst, gateway) {
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
