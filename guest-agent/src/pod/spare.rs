//! Namespaces made ahead for the VM's pod: a new network namespace (its loopback up), IPC and
//! UTS namespace, created by a thread of their own when the agent starts, so that the sandbox
//! container joins them instead of creating them while the pod waits. Creating a network
//! namespace is the slowest part of a sandbox's spawn in a nested guest (every registered
//! per-namespace subsystem initialises); a VM restored from a template has them ready in its
//! memory. A VM has one pod, so the set is made once and taken once; a container that does not
//! get it (the maker failed, or the set was taken) creates its namespaces itself, as before.
//!
//! They are fresh namespaces like any a container would create: nothing else ever enters them
//! before the sandbox container takes them. In the clones of a template they are the same
//! namespace as saved, so what the kernel drew at random when creating them (the network
//! namespace's hash seed) is the same in every clone, as the kernel's layout is.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sched::CloneFlags;

use crate::error::{AgentError, Result};

/// The namespaces made ahead, with their /proc/thread-self/ns entries.
pub const SPARE_NAMESPACES: [(CloneFlags, &str); 3] = [(CloneFlags::CLONE_NEWNET, "net"), (CloneFlags::CLONE_NEWIPC, "ipc"), (CloneFlags::CLONE_NEWUTS, "uts")];

/// How long a sandbox's create waits for a set still being made (then it makes its own).
const TAKE_WAIT: Duration = Duration::from_secs(10);

/// A set of new namespaces, held open by descriptor.
#[derive(Debug)]
pub struct NamespaceSet(Vec<(CloneFlags, OwnedFd)>);

impl NamespaceSet {
    /// Creates the set on the calling thread (which then lives in them: call it on a thread
    /// that ends afterwards) and brings the network namespace's loopback up.
    fn make_here() -> Result<NamespaceSet> {
        let all = SPARE_NAMESPACES.iter().fold(CloneFlags::empty(), |a, (f, _)| a | *f);
        nix::sched::unshare(all).map_err(|e| AgentError::sys(format!("creating namespaces {all:?} ahead for the pod"), e))?;
        crate::network::set_up("lo", true).map_err(|e| AgentError::sys("bringing up lo in the pod's network namespace made ahead", e))?;
        let mut fds = Vec::with_capacity(SPARE_NAMESPACES.len());
        for (flag, name) in SPARE_NAMESPACES {
            let path = format!("/proc/thread-self/ns/{name}");
            let f = std::fs::File::open(&path).map_err(|e| AgentError::io(format!("opening {path}"), e))?;
            fds.push((flag, OwnedFd::from(f)));
        }
        Ok(NamespaceSet(fds))
    }

    /// A set of the given descriptors (tests).
    #[cfg(test)]
    pub(crate) fn from_fds(fds: Vec<(CloneFlags, OwnedFd)>) -> NamespaceSet {
        NamespaceSet(fds)
    }

    /// Takes the namespace of kind `flag` out of the set.
    pub fn take(&mut self, flag: CloneFlags) -> Option<OwnedFd> {
        let i = self.0.iter().position(|(f, _)| *f == flag)?;
        Some(self.0.swap_remove(i).1)
    }
}

#[derive(Debug)]
enum State {
    Making,
    Ready(NamespaceSet),
    Gone,
}

/// The VM's one set of namespaces made ahead.
#[derive(Debug)]
pub struct Spare {
    state: Mutex<State>,
    changed: Condvar,
}

impl Spare {
    /// Starts making the set on a thread of its own.
    pub fn start() -> Arc<Spare> {
        let spare = Arc::new(Spare { state: Mutex::new(State::Making), changed: Condvar::new() });
        let s = spare.clone();
        let spawned = std::thread::Builder::new().name("pod-namespaces".into()).spawn(move || {
            let made = NamespaceSet::make_here();
            let next = match made {
                Ok(set) => State::Ready(set),
                Err(e) => {
                    log::warn!("{}; the pod's sandbox container creates its namespaces itself", crate::error::chain(&e));
                    State::Gone
                }
            };
            *s.state.lock().unwrap_or_else(|p| p.into_inner()) = next;
            s.changed.notify_all();
        });
        if let Err(e) = spawned {
            log::warn!("starting the thread that makes the pod's namespaces ahead: {e}");
            *spare.state.lock().unwrap_or_else(|p| p.into_inner()) = State::Gone;
        }
        spare
    }

    /// A set that was never made (its containers create their namespaces themselves).
    pub fn none() -> Arc<Spare> {
        Arc::new(Spare { state: Mutex::new(State::Gone), changed: Condvar::new() })
    }

    /// Takes the set, waiting for it while it is being made (at most [`TAKE_WAIT`]); None once
    /// it was taken or could not be made.
    pub fn take(&self) -> Option<NamespaceSet> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (mut state, _) = self.changed.wait_timeout_while(state, TAKE_WAIT, |s| matches!(s, State::Making)).unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *state, State::Gone) {
            State::Ready(set) => Some(set),
            State::Making | State::Gone => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn own(name: &str) -> OwnedFd {
        OwnedFd::from(std::fs::File::open(format!("/proc/self/ns/{name}")).unwrap())
    }

    #[test]
    fn a_set_is_taken_once_and_by_kind() {
        let spare = Spare { state: Mutex::new(State::Ready(NamespaceSet::from_fds(vec![(CloneFlags::CLONE_NEWNET, own("net"))]))), changed: Condvar::new() };
        let mut set = spare.take().unwrap();
        assert!(set.take(CloneFlags::CLONE_NEWIPC).is_none());
        assert!(set.take(CloneFlags::CLONE_NEWNET).is_some());
        assert!(set.take(CloneFlags::CLONE_NEWNET).is_none());
        assert!(spare.take().is_none(), "taken already");
        assert!(Spare::none().take().is_none());
    }

    #[test]
    fn a_set_still_being_made_is_waited_for() {
        let spare = Arc::new(Spare { state: Mutex::new(State::Making), changed: Condvar::new() });
        let s = spare.clone();
        let maker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            *s.state.lock().unwrap() = State::Ready(NamespaceSet::from_fds(vec![(CloneFlags::CLONE_NEWUTS, own("uts"))]));
            s.changed.notify_all();
        });
        assert!(spare.take().unwrap().take(CloneFlags::CLONE_NEWUTS).is_some());
        maker.join().unwrap();
    }
}
