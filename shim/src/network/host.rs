//! The host side of a new sandbox's network, in this order: the namespace holder (for a spec
//! that asks for a new network namespace, or one with host hooks), the Create-time hooks with
//! the holder's pid, then the taps in the namespace. A new namespace may be configured only
//! after Create (`ctr run --cni`): it gets a spare tap (see [`super::PodNetwork::attach_late`]).

use std::path::Path;

use oci_spec::runtime::Spec;

use super::holder::{HolderNs, NetnsHolder};
use super::{namespace_of, netns, PodNetwork, TapFds};
use crate::error::{Result, ShimError};

fn net_err(op: &'static str) -> impl FnOnce(super::NetworkError) -> ShimError {
    move |source| ShimError::Network { op, source }
}

/// Prepares the network of sandbox `id` (bundle `bundle`) and runs its Create-time hooks.
/// Returns the network with its taps, none for a container in the host's network namespace.
/// On error nothing is left (the holder is killed, the hooks' work is theirs to undo).
pub fn prepare(spec: &Spec, id: &str, bundle: &Path) -> Result<Option<(PodNetwork, TapFds)>> {
    let ns = namespace_of(spec);
    let hooks = crate::hooks::any_at_create(spec);
    let holder = match (&ns, hooks) {
        (Some(None), _) => Some(NetnsHolder::spawn(HolderNs::New).map_err(net_err("make the container's network namespace"))?),
        (Some(Some(path)), true) => {
            let f = netns::open(path).map_err(net_err("open the container's network namespace"))?;
            Some(NetnsHolder::spawn(HolderNs::Join(&f)).map_err(net_err("join the container's network namespace"))?)
        }
        _ => None,
    };
    let pid = holder.as_ref().map_or(std::process::id(), NetnsHolder::pid);
    crate::hooks::run_at_create(spec, id, bundle, pid)?;
    let path = match (&holder, &ns) {
        (Some(h), _) => h.netns_path(),
        (None, Some(Some(p))) => p.clone(),
        _ => return Ok(None),
    };
    let late = matches!(ns, Some(None));
    let (mut net, fds) = PodNetwork::setup(&path, late).map_err(net_err("set up the pod's network"))?;
    net.holder = holder;
    Ok(Some((net, fds)))
}
