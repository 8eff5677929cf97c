//! Making and removing taps and redirects inside the pod's namespace (on the netns thread).

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;

use super::rtnl::Rtnl;
use super::scan::{self, Interface, Link};
use super::{link, nl, tap, tap_name, tc, Endpoint, NetworkError, Tap};

/// What was made so far, undone on failure.
#[derive(Default)]
pub struct Made {
    ingress: Vec<u32>,
    taps: Vec<(u32, File)>,
}

impl Made {
    /// The taps' descriptors, in the order they were made.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.taps.into_iter().map(|(_, f)| OwnedFd::from(f)).collect()
    }

    /// Removes the ingress qdiscs added and the taps made.
    pub fn undo(self, rtnl: &mut Rtnl) {
        for index in self.ingress {
            if let Err(e) = tc::del_ingress(rtnl, index) {
                log::warn!("removing the ingress qdisc of interface {index} after a failed setup: {}", crate::error::chain(&e));
            }
        }
        for (index, file) in self.taps {
            drop(file);
            // Gone with its last descriptor; deleting it explicitly covers a copy kept elsewhere.
            match link::delete(rtnl, index) {
                Err(e) if e.errno() != Some(libc::ENODEV) => log::warn!("removing tap {index} after a failed setup: {}", crate::error::chain(&e)),
                _ => {}
            }
        }
    }
}

/// A random locally administered unicast MAC, for a guest device booted before its pod
/// interface exists.
fn placeholder_mac() -> Result<[u8; 6], NetworkError> {
    let mut mac = [0u8; 6];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut mac)).map_err(|source| NetworkError::Tap { name: "(placeholder MAC)".into(), source })?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// Creates tap number `n` with `mtu`, up, in the current namespace.
fn new_tap(rtnl: &mut Rtnl, netns: &str, n: usize, mtu: u32, guest_mac: [u8; 6], made: &mut Made) -> Result<Tap, NetworkError> {
    let name = tap_name(n);
    if scan::link_by_name(rtnl, &name)?.is_some() {
        return Err(NetworkError::TapNameClash { netns: netns.into(), name });
    }
    let file = tap::create(&name)?;
    let index = scan::link_by_name(rtnl, &name)?
        .map(|l| l.index)
        .ok_or_else(|| NetworkError::Tap { name: name.clone(), source: std::io::Error::other("the new tap is not listed") })?;
    made.taps.push((index, file));
    link::prepare_tap(rtnl, index, mtu).map_err(nl(format!("set up tap {name} (MTU {mtu})")))?;
    Ok(Tap { name, index, guest_mac })
}

/// Redirects `iface` and `tap` to each other.
fn redirect(rtnl: &mut Rtnl, netns: &str, iface: &Link, tap: &Tap, made: &mut Made) -> Result<(), NetworkError> {
    tc::add_ingress(rtnl, iface.index).map_err(|e| match e.errno() {
        Some(libc::EEXIST) => NetworkError::IngressExists { netns: netns.into(), name: iface.name.clone() },
        _ => NetworkError::Netlink { op: format!("add an ingress qdisc to {}", iface.name), source: e },
    })?;
    made.ingress.push(iface.index);
    tc::add_ingress(rtnl, tap.index).map_err(nl(format!("add an ingress qdisc to tap {}", tap.name)))?;
    tc::add_redirect(rtnl, iface.index, tap.index).map_err(nl(format!("redirect {} to tap {}", iface.name, tap.name)))?;
    tc::add_redirect(rtnl, tap.index, iface.index).map_err(nl(format!("redirect tap {} to {}", tap.name, iface.name)))?;
    log::info!("{netns}: {} ({}, {}) redirected to tap {}", iface.name, iface.kind, scan::mac_string(&iface.mac), tap.name);
    Ok(())
}

/// A tap for every interface of the namespace, redirected both ways; with `late` and no
/// interface, one spare tap with a placeholder MAC.
pub fn setup_here(rtnl: &mut Rtnl, netns: &str, late: bool, made: &mut Made) -> Result<(Vec<Endpoint>, Vec<Tap>), NetworkError> {
    let ifaces = scan::interfaces(rtnl, netns, &[])?;
    let mut endpoints = Vec::new();
    for (i, iface) in ifaces.into_iter().enumerate() {
        let tap = new_tap(rtnl, netns, i, iface.link.mtu, iface.link.mac, made)?;
        redirect(rtnl, netns, &iface.link, &tap, made)?;
        endpoints.push(Endpoint { iface, tap });
    }
    let mut spares = Vec::new();
    if late && endpoints.is_empty() {
        let tap = new_tap(rtnl, netns, 0, DEFAULT_MTU, placeholder_mac()?, made)?;
        log::info!("{netns}: no interface yet; spare tap {} waits for one", tap.name);
        spares.push(tap);
    }
    Ok((endpoints, spares))
}

/// The MTU of a spare tap until its interface is known.
const DEFAULT_MTU: u32 = 1500;

/// Connects each interface that is not in `known` (the interfaces and taps so far) to the
/// next of `spares`, in order.
pub fn attach_here(rtnl: &mut Rtnl, netns: &str, known: &[u32], spares: &[Tap], made: &mut Made) -> Result<Vec<Endpoint>, NetworkError> {
    let new: Vec<Interface> = scan::interfaces(rtnl, netns, known)?;
    let mut out = Vec::new();
    for (i, iface) in new.into_iter().enumerate() {
        let Some(tap) = spares.get(i).cloned() else {
            return Err(NetworkError::NoSpareTap { netns: netns.into(), name: iface.link.name });
        };
        link::prepare_tap(rtnl, tap.index, iface.link.mtu).map_err(nl(format!("set MTU {} on tap {}", iface.link.mtu, tap.name)))?;
        redirect(rtnl, netns, &iface.link, &tap, made)?;
        out.push(Endpoint { iface, tap });
    }
    Ok(out)
}

/// Removes the ingress qdisc of `e`'s interface if it is still the one husk made: its filter
/// redirects to `e`'s tap, or to nothing once that tap is gone.
pub fn remove_redirect(rtnl: &mut Rtnl, netns: &str, present: &[Link], e: &Endpoint) -> Result<(), NetworkError> {
    let (iface, index) = (&e.iface.link.name, e.iface.link.index);
    if !present.iter().any(|l| l.index == index) {
        return Ok(());
    }
    let tap_present = present.iter().any(|l| l.index == e.tap.index && l.name == e.tap.name);
    let targets = tc::redirect_targets(rtnl, index).map_err(nl(format!("list the filters of {iface}")))?;
    if targets == [e.tap.index] || (!tap_present && targets == [0]) {
        tc::del_ingress(rtnl, index).map_err(nl(format!("remove the ingress qdisc of {iface}")))?;
    } else if !targets.is_empty() || tc::has_ingress(rtnl, index).map_err(nl(format!("list the qdiscs of {iface}")))? {
        log::warn!("{netns}: the ingress qdisc of {iface} is not the one husk made (it redirects to {targets:?}, not to tap {}): left alone", e.tap.name);
    }
    Ok(())
}
