//! The containerd Task API of one husk shim, which serves one sandbox (a pod's VM, or a `ctr run`
//! container that is its own pod) and every container in it. The service only translates
//! requests onto [`crate::sandbox::Sandbox`] and [`crate::container::Container`].

mod events;
mod service;
mod stats;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use containerd_shim::ExitSignal;

pub use events::{Containerd, Events, Publish};

use crate::container::{Container, VM_DIED_EXIT_STATUS};
use crate::sandbox::Sandbox;

/// The Task service registered with the shim's ttrpc server.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

/// What the shim serves: its sandbox and the containers in it.
#[derive(Default)]
pub struct Registry {
    /// The sandbox, from its sandbox container's Create until that container's Delete.
    pub sandbox: Option<Arc<Sandbox>>,
    /// Containers by id, the sandbox container included.
    pub containers: HashMap<String, Arc<Container>>,
    /// Ids being created.
    pub creating: HashSet<String>,
}

impl Registry {
    /// Whether the shim serves nothing: no sandbox, no container, none being created.
    pub fn is_empty(&self) -> bool {
        self.sandbox.is_none() && self.containers.is_empty() && self.creating.is_empty()
    }
}

/// Shared state of the service.
pub struct Inner {
    /// containerd namespace.
    pub namespace: String,
    /// Event queue to containerd.
    pub events: Arc<Events>,
    /// Signalled when the shim should exit.
    pub exit: Arc<ExitSignal>,
    registry: Mutex<Registry>,
}

impl Inner {
    /// The registry, locked.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Service {
    /// A service publishing to `publisher` (none in tests).
    pub fn new(namespace: &str, publisher: Option<Box<dyn Publish>>, exit: Arc<ExitSignal>) -> Service {
        Service {
            inner: Arc::new(Inner {
                namespace: namespace.into(),
                events: Arc::new(Events::new(publisher, namespace.into())),
                exit,
                registry: Mutex::new(Registry::default()),
            }),
        }
    }
}

impl Service {
    /// Waits up to `timeout` for the queued events to reach containerd.
    pub fn flush_events(&self, timeout: std::time::Duration) -> bool {
        self.inner.events.flush(timeout)
    }

    /// Events not yet published.
    pub fn pending_events(&self) -> usize {
        self.inner.events.len()
    }
}

/// A VMM that exits while the shim did not stop it ends every process of the sandbox with an
/// error exit.
fn watch_vm(inner: &Arc<Inner>, sandbox: &Arc<Sandbox>) {
    let (inner, sb) = (inner.clone(), sandbox.clone());
    let spawned = std::thread::Builder::new().name("vm-watch".into()).spawn(move || {
        let Some(st) = sb.vm.exit_watch().wait(None) else { return };
        if sb.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        log::error!("husk-vmm of sandbox {} exited unexpectedly with {st}: {}", sb.id, sb.vm.exit_reason());
        let containers: Vec<_> = inner.registry().containers.values().filter(|c| Arc::ptr_eq(&c.sandbox, &sb)).cloned().collect();
        for c in containers {
            for p in c.processes() {
                c.report_exit(&inner.events, &p, VM_DIED_EXIT_STATUS, crate::container::now());
            }
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start the VM watch of sandbox {}: {e}", sandbox.id);
    }
}
