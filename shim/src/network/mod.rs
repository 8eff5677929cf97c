//! The pod's network, carried into the VM the way Kata's `tcfilter` mode does: for each
//! interface that CNI set up in the pod's network namespace, the shim creates a tap beside it
//! in that namespace and redirects every frame both ways between the two with tc (an ingress
//! qdisc and a mirred redirect on each). The interface keeps its addresses; no bridge is made.
//! husk-vmm gets the taps as open descriptors (it never enters the namespace), and the guest's
//! interface gets the interface's MAC, MTU, addresses and routes through the agent, so the
//! address CNI assigned answers from inside the VM, ARP included.
//!
//! * [`scan`]: the namespace's interfaces, addresses and routes;
//! * [`tap`], [`link`], [`tc`]: what is made there; [`netns`]: entering the namespace;
//!   [`rtnl`]: the netlink socket.
//!
//! The taps are not persistent: a VMM that dies closes the last descriptor and the kernel
//! removes its tap (and the tap's qdisc). [`PodNetwork::teardown`] removes the rest: the
//! ingress qdiscs on the pod's interfaces, only where they still redirect to husk's taps.

pub mod link;
pub mod netns;
pub mod rtnl;
pub mod scan;
pub mod tap;
pub mod tc;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use husk_config::{MacAddr, NetConfig};
use husk_protocol::agent;
use husk_protocol::agent_ttrpc::AgentClient;

use rtnl::{Rtnl, RtnlError};
use scan::Interface;

/// Longest interface name (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// Errors setting up or tearing down a pod's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The namespace file cannot be opened or entered (e.g. it vanished).
    #[error("cannot use network namespace {path:?}")]
    Netns {
        /// Its path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a network namespace.
    #[error("{path:?} is not a network namespace (expected an nsfs file like /var/run/netns/NAME or /proc/PID/ns/net)")]
    NotANetns {
        /// The path.
        path: PathBuf,
    },
    /// The helper thread could not run.
    #[error("cannot run the network namespace helper thread")]
    Thread {
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("cannot {op}")]
    Netlink {
        /// What was asked, with its object.
        op: String,
        /// Cause.
        #[source]
        source: RtnlError,
    },
    /// An interface that cannot be redirected to a tap.
    #[error("interface {name} in network namespace {netns} is of type {kind}, which husk cannot carry into the VM (supported: veth, macvlan, ipvlan, vlan and physical Ethernet devices)")]
    Unsupported {
        /// The namespace.
        netns: String,
        /// The interface.
        name: String,
        /// Its kind.
        kind: String,
    },
    /// An up interface without a global address.
    #[error("interface {name} in network namespace {netns} has no IP address: the guest gets the addresses CNI assigned, and there are none")]
    NoAddress {
        /// The namespace.
        netns: String,
        /// The interface.
        name: String,
    },
    /// The tap's name is taken.
    #[error("cannot create tap {name} in network namespace {netns}: an interface of that name exists")]
    TapNameClash {
        /// The namespace.
        netns: String,
        /// The tap name.
        name: String,
    },
    /// The pod interface already has an ingress qdisc that husk did not make.
    #[error("interface {name} in network namespace {netns} already has an ingress qdisc, which husk does not take over")]
    IngressExists {
        /// The namespace.
        netns: String,
        /// The interface.
        name: String,
    },
    /// Creating a tap failed.
    #[error("cannot create tap {name}")]
    Tap {
        /// The tap name.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent refused the guest's network configuration.
    #[error("agent {op} failed")]
    Agent {
        /// The agent call.
        op: &'static str,
        /// Cause.
        #[source]
        source: ttrpc::Error,
    },
}

fn nl(op: impl Into<String>) -> impl FnOnce(RtnlError) -> NetworkError {
    let op = op.into();
    move |source| NetworkError::Netlink { op, source }
}

/// The name of the tap of the `i`-th interface.
pub fn tap_name(i: usize) -> String {
    format!("tap{i}_husk")
}

/// One pod interface and the tap that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The interface CNI made, with its addresses and routes.
    pub iface: Interface,
    /// The tap's name.
    pub tap: String,
    /// The tap's interface index.
    pub tap_index: u32,
}

/// The taps' descriptors, for husk-vmm. Dropping them (after the VMM inherited them) leaves
/// the VMM the only holder.
#[derive(Debug, Default)]
pub struct TapFds(pub Vec<OwnedFd>);

/// What the shim made in a pod's network namespace.
#[derive(Debug)]
pub struct PodNetwork {
    path: PathBuf,
    ns: File,
    endpoints: Vec<Endpoint>,
}

/// What `setup` made so far, undone on failure.
#[derive(Default)]
struct Made {
    ingress: Vec<u32>,
    taps: Vec<(u32, File)>,
}

impl Made {
    fn undo(self, rtnl: &mut Rtnl) {
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

fn setup_here(rtnl: &mut Rtnl, netns: &str, made: &mut Made) -> Result<Vec<Endpoint>, NetworkError> {
    let ifaces = scan::interfaces(rtnl, netns)?;
    let mut endpoints = Vec::new();
    for (i, iface) in ifaces.into_iter().enumerate() {
        let name = tap_name(i);
        if scan::link_by_name(rtnl, &name)?.is_some() {
            return Err(NetworkError::TapNameClash { netns: netns.into(), name });
        }
        let file = tap::create(&name)?;
        let index = scan::link_by_name(rtnl, &name)?.map(|l| l.index).ok_or_else(|| NetworkError::Tap { name: name.clone(), source: std::io::Error::other("the new tap is not listed") })?;
        made.taps.push((index, file));
        link::prepare_tap(rtnl, index, iface.link.mtu).map_err(nl(format!("set up tap {name} (MTU {})", iface.link.mtu)))?;
        tc::add_ingress(rtnl, iface.link.index).map_err(|e| match e.errno() {
            Some(libc::EEXIST) => NetworkError::IngressExists { netns: netns.into(), name: iface.link.name.clone() },
            _ => NetworkError::Netlink { op: format!("add an ingress qdisc to {}", iface.link.name), source: e },
        })?;
        made.ingress.push(iface.link.index);
        tc::add_ingress(rtnl, index).map_err(nl(format!("add an ingress qdisc to tap {name}")))?;
        tc::add_redirect(rtnl, iface.link.index, index).map_err(nl(format!("redirect {} to tap {name}", iface.link.name)))?;
        tc::add_redirect(rtnl, index, iface.link.index).map_err(nl(format!("redirect tap {name} to {}", iface.link.name)))?;
        log::info!("{netns}: {} ({}, {}) redirected to tap {name}", iface.link.name, iface.link.kind, scan::mac_string(&iface.link.mac));
        endpoints.push(Endpoint { iface, tap: name, tap_index: index });
    }
    Ok(endpoints)
}

impl PodNetwork {
    /// Makes a tap for every interface of the network namespace at `path` and redirects
    /// traffic between them. Returns the network and the taps' descriptors (in the order of
    /// [`PodNetwork::endpoints`]). On error nothing it made is left.
    pub fn setup(path: &Path) -> Result<(PodNetwork, TapFds), NetworkError> {
        let ns = netns::open(path)?;
        let shown = path.display().to_string();
        let (endpoints, fds) = netns::run(&ns, path, || {
            let mut rtnl = Rtnl::open().map_err(nl(format!("open a netlink socket in {shown}")))?;
            let mut made = Made::default();
            match setup_here(&mut rtnl, &shown, &mut made) {
                Ok(eps) => Ok((eps, made.taps.into_iter().map(|(_, f)| OwnedFd::from(f)).collect())),
                Err(e) => {
                    made.undo(&mut rtnl);
                    Err(e)
                }
            }
        })?;
        Ok((PodNetwork { path: path.to_path_buf(), ns, endpoints }, TapFds(fds)))
    }

    /// The namespace's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The interfaces and their taps.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// husk-vmm's net devices: one per tap, passed as descriptor `fds[i]` (inherited at the
    /// same number), with the pod interface's MAC.
    pub fn net_configs(&self, fds: &TapFds) -> Vec<NetConfig> {
        self.endpoints.iter().zip(&fds.0).map(|(e, fd)| NetConfig { tap: e.tap.clone(), mac: Some(MacAddr(e.iface.link.mac)), netns: None, fd: Some(fd.as_raw_fd()) }).collect()
    }

    /// Adds the taps to a VM plan: one net device each, inheriting its descriptor.
    pub fn add_to(&self, plan: &mut crate::vm::VmPlan, fds: &TapFds) {
        plan.config.net.extend(self.net_configs(fds));
        plan.inherit_fds.extend(fds.0.iter().map(|f| f.as_raw_fd()));
    }

    /// The guest's interfaces: found by MAC, named, sized and addressed as the pod's.
    pub fn guest_interfaces(&self) -> Vec<agent::Interface> {
        self.endpoints
            .iter()
            .map(|e| agent::Interface {
                hw_addr: scan::mac_string(&e.iface.link.mac),
                name: e.iface.link.name.chars().take(MAX_IFNAME).collect(),
                mtu: e.iface.link.mtu,
                addresses: e.iface.addrs.iter().map(|a| agent::IpAddress { address: a.ip.to_string(), prefix_len: a.prefix.into(), ..Default::default() }).collect(),
                ..Default::default()
            })
            .collect()
    }

    /// The guest's routes: on-link routes of every interface first, then those via a gateway.
    pub fn guest_routes(&self) -> Vec<agent::Route> {
        let mut all: Vec<(&Endpoint, &scan::Route)> = self.endpoints.iter().flat_map(|e| e.iface.routes.iter().map(move |r| (e, r))).collect();
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

    /// Gives the guest the pod's interfaces and routes (in the pod's network namespace there;
    /// the sandbox container must exist).
    pub fn configure_guest(&self, agent: &AgentClient, ctx: impl Fn() -> ttrpc::context::Context) -> Result<(), NetworkError> {
        if self.endpoints.is_empty() {
            return Ok(());
        }
        let ifs = agent::UpdateInterfacesRequest { interfaces: self.guest_interfaces(), ..Default::default() };
        agent.update_interfaces(ctx(), &ifs).map_err(|source| NetworkError::Agent { op: "UpdateInterfaces", source })?;
        let routes = agent::UpdateRoutesRequest { routes: self.guest_routes(), ..Default::default() };
        agent.update_routes(ctx(), &routes).map_err(|source| NetworkError::Agent { op: "UpdateRoutes", source })?;
        Ok(())
    }

    /// Removes what [`PodNetwork::setup`] made and is still there: the pod interfaces' ingress
    /// qdiscs where they still redirect to husk's tap (or, once the tap is gone with its VMM,
    /// to no interface: the kernel forgets a vanished target), and the taps. Interfaces that
    /// are gone leave nothing to remove.
    pub fn teardown(&self) -> Result<(), NetworkError> {
        let shown = self.path.display().to_string();
        netns::run(&self.ns, &self.path, || {
            let mut rtnl = Rtnl::open().map_err(nl(format!("open a netlink socket in {shown}")))?;
            let present = scan::links(&mut rtnl)?;
            for e in &self.endpoints {
                let (iface, index) = (&e.iface.link.name, e.iface.link.index);
                let tap_present = present.iter().any(|l| l.index == e.tap_index && l.name == e.tap);
                if present.iter().any(|l| l.index == index) {
                    let targets = tc::redirect_targets(&mut rtnl, index).map_err(nl(format!("list the filters of {iface}")))?;
                    let ours = targets == [e.tap_index] || (!tap_present && targets == [0]);
                    if ours {
                        tc::del_ingress(&mut rtnl, index).map_err(nl(format!("remove the ingress qdisc of {iface}")))?;
                    } else if !targets.is_empty() || tc::has_ingress(&mut rtnl, index).map_err(nl(format!("list the qdiscs of {iface}")))? {
                        log::warn!("{shown}: the ingress qdisc of {iface} is not the one husk made (it redirects to {targets:?}, not to tap {}): left alone", e.tap);
                    }
                }
                if tap_present {
                    match link::delete(&mut rtnl, e.tap_index) {
                        Err(err) if err.errno() != Some(libc::ENODEV) => return Err(NetworkError::Netlink { op: format!("delete tap {}", e.tap), source: err }),
                        _ => {}
                    }
                }
            }
            Ok(())
        })
    }
}

/// The network namespace a spec names by path (`linux.namespaces[type=network].path`), such
/// as CNI's /var/run/netns/cni-… from containerd's CRI plugin or `ctr run --cni`.
pub fn namespace_path(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    let namespaces = spec.linux().as_ref()?.namespaces().as_ref()?;
    namespaces.iter().find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?.path().clone()
}

/// Tears down `network` after a failed start (errors are logged: the start's own error is
/// the one reported).
pub fn teardown_after_failure(network: Option<&PodNetwork>) {
    if let Some(n) = network {
        if let Err(e) = n.teardown() {
            log::error!("removing the taps and tc filters of {} after a failed start: {}", n.path().display(), crate::error::chain(&e));
        }
    }
}
