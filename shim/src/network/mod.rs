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

mod guest;
pub mod holder;
mod host;
pub mod link;
pub mod netns;
pub mod rtnl;
pub mod scan;
mod setup;
pub mod tap;
pub mod tc;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use husk_config::{MacAddr, NetConfig};
use husk_protocol::agent_ttrpc::AgentClient;

use holder::NetnsHolder;
pub use host::prepare;
use rtnl::{Rtnl, RtnlError};
use scan::Interface;

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
    /// An interface appeared after the boot and no spare tap is left for it.
    #[error("interface {name} appeared in network namespace {netns} after the VM booted, and the VM has no spare network device left for it (a VM whose namespace is configured after Create boots with one)")]
    NoSpareTap {
        /// The namespace.
        netns: String,
        /// The interface.
        name: String,
    },
    /// The process holding a container's network namespace could not be started.
    #[error("cannot start the process that holds the container's network namespace")]
    Holder {
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

/// The name of the `i`-th tap of a pod.
pub fn tap_name(i: usize) -> String {
    format!("tap{i}_husk")
}

/// A tap the shim made, and the MAC the guest's device for it booted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// Its name.
    pub name: String,
    /// Its interface index.
    pub index: u32,
    /// The guest device's MAC at boot: the pod interface's, or a placeholder for a tap that
    /// waits for an interface appearing after the boot.
    pub guest_mac: [u8; 6],
}

/// One pod interface and the tap that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The interface CNI made, with its addresses and routes.
    pub iface: Interface,
    /// Its tap.
    pub tap: Tap,
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
    /// Taps without an interface yet (in a namespace that is configured after the boot).
    spares: Vec<Tap>,
    /// Whether interfaces may appear after the setup.
    late: bool,
    /// The host process standing for the container in the namespace, if the shim made one.
    holder: Option<NetnsHolder>,
}

impl PodNetwork {
    /// Makes a tap for every interface of the network namespace at `path` and redirects
    /// traffic between them; with `late` (a namespace that a client may configure only after
    /// Create, as `ctr run --cni` does) and no interface yet, one spare tap that
    /// [`PodNetwork::attach_late`] connects at Start. Returns the network and the taps'
    /// descriptors (endpoints' first, then spares', the order of [`PodNetwork::net_configs`]).
    /// On error nothing it made is left.
    pub fn setup(path: &Path, late: bool) -> Result<(PodNetwork, TapFds), NetworkError> {
        let ns = netns::open(path)?;
        let shown = path.display().to_string();
        let (endpoints, spares, fds) = netns::run(&ns, path, || {
            let mut rtnl = Rtnl::open().map_err(nl(format!("open a netlink socket in {shown}")))?;
            let mut made = setup::Made::default();
            match setup::setup_here(&mut rtnl, &shown, late, &mut made) {
                Ok((eps, spares)) => Ok((eps, spares, made.into_fds())),
                Err(e) => {
                    made.undo(&mut rtnl);
                    Err(e)
                }
            }
        })?;
        Ok((PodNetwork { path: path.to_path_buf(), ns, endpoints, spares, late, holder: None }, TapFds(fds)))
    }

    /// The namespace's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The interfaces and their taps.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The pid of the host process standing for the container in the namespace, if any.
    pub fn host_pid(&self) -> Option<u32> {
        self.holder.as_ref().map(NetnsHolder::pid)
    }

    /// The taps still waiting for an interface.
    pub fn spares(&self) -> &[Tap] {
        &self.spares
    }

    /// How many taps, so net devices, the VM gets (the interfaces' and the spares').
    pub fn tap_count(&self) -> usize {
        self.endpoints.len() + self.spares.len()
    }

    /// Records that the VM's net devices have the MACs `mac(i)` (the i-th tap's device, in the
    /// order of [`PodNetwork::net_configs`]) instead of the pod's: a VM restored from a
    /// template has the template's, and the agent finds the interfaces by them.
    pub fn set_guest_macs(&mut self, mac: impl Fn(usize) -> [u8; 6]) {
        let taps = self.endpoints.iter_mut().map(|e| &mut e.tap).chain(self.spares.iter_mut());
        for (i, t) in taps.enumerate() {
            t.guest_mac = mac(i);
        }
    }

    /// husk-vmm's net devices: one per tap, the i-th passed as descriptor number `fds[i]` of
    /// the VMM, with the MAC the guest device boots with.
    pub fn net_configs(&self, fds: &[RawFd]) -> Vec<NetConfig> {
        let taps = self.endpoints.iter().map(|e| &e.tap).chain(&self.spares);
        taps.zip(fds).map(|(t, fd)| NetConfig { tap: t.name.clone(), mac: Some(MacAddr(t.guest_mac)), netns: None, fd: Some(*fd) }).collect()
    }

    /// Adds the taps to a VM plan: one net device each, the VMM inheriting its descriptor
    /// (the shim's copy is closed once the VMM runs, so a VMM that dies takes the taps along).
    pub fn add_to(&self, plan: &mut crate::vm::VmPlan, fds: TapFds) {
        let numbers: Vec<RawFd> = fds.0.into_iter().map(|fd| plan.inherit(fd, "tap")).collect();
        plan.config.net.extend(self.net_configs(&numbers));
    }

    /// Connects the interfaces that appeared since the setup (CNI run by a client between
    /// Create and Start) to spare taps; returns them (also added to the endpoints) for
    /// [`configure_guest`]. Only for a network set up with `late`; more new interfaces than
    /// spare taps is an error that connects none.
    pub fn attach_late(&mut self) -> Result<Vec<Endpoint>, NetworkError> {
        if !self.late {
            return Ok(Vec::new());
        }
        let shown = self.path.display().to_string();
        let known: Vec<u32> = self.endpoints.iter().flat_map(|e| [e.iface.link.index, e.tap.index]).chain(self.spares.iter().map(|t| t.index)).collect();
        let spares = self.spares.clone();
        let new = netns::run(&self.ns, &self.path, || {
            let mut rtnl = Rtnl::open().map_err(nl(format!("open a netlink socket in {shown}")))?;
            let mut made = setup::Made::default();
            setup::attach_here(&mut rtnl, &shown, &known, &spares, &mut made).inspect_err(|_| made.undo(&mut rtnl))
        })?;
        self.spares.drain(..new.len());
        self.endpoints.extend(new.iter().cloned());
        Ok(new)
    }

    /// Removes what [`PodNetwork::setup`] made and is still there: the pod interfaces' ingress
    /// qdiscs where they still redirect to husk's tap (or, once the tap is gone with its VMM,
    /// to no interface: the kernel forgets a vanished target), and the taps; then stops the
    /// namespace holder. Interfaces that are gone leave nothing to remove.
    pub fn teardown(&self) -> Result<(), NetworkError> {
        let removed = self.remove_taps();
        if let Some(h) = &self.holder {
            h.stop();
        }
        removed
    }

    fn remove_taps(&self) -> Result<(), NetworkError> {
        let shown = self.path.display().to_string();
        netns::run(&self.ns, &self.path, || {
            let mut rtnl = Rtnl::open().map_err(nl(format!("open a netlink socket in {shown}")))?;
            let present = scan::links(&mut rtnl)?;
            for e in &self.endpoints {
                setup::remove_redirect(&mut rtnl, &shown, &present, e)?;
            }
            for t in self.endpoints.iter().map(|e| &e.tap).chain(&self.spares) {
                if present.iter().any(|l| l.index == t.index && l.name == t.name) {
                    match link::delete(&mut rtnl, t.index) {
                        Err(err) if err.errno() != Some(libc::ENODEV) => {
                            return Err(NetworkError::Netlink { op: format!("delete tap {}", t.name), source: err })
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        })
    }
}

/// Gives the guest `endpoints` (interfaces, then routes) in the pod's network namespace
/// there; the sandbox container must exist.
pub fn configure_guest(agent: &AgentClient, ctx: impl Fn() -> ttrpc::context::Context, endpoints: &[Endpoint]) -> Result<(), NetworkError> {
    guest::configure(agent, &ctx, endpoints)
}

/// The spec's network namespace: `None` without one (the host's), `Some(None)` for a new one,
/// `Some(Some(path))` for one given by path.
pub fn namespace_of(spec: &oci_spec::runtime::Spec) -> Option<Option<PathBuf>> {
    let namespaces = spec.linux().as_ref()?.namespaces().as_ref()?;
    namespaces.iter().find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network).map(|n| n.path().clone())
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
