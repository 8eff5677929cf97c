//! The containerd Task API of one husk shim: one container in its own microVM.

mod container;
mod events;
mod process;
mod service;
mod stats;

use std::sync::{Arc, Mutex};

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::ExitSignal;

pub use container::Container;
pub use events::Events;
pub use process::{now, Process, VM_DIED_EXIT_STATUS};

/// The Task service registered with the shim's ttrpc server.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

/// Shared state of the service.
pub struct Inner {
    /// containerd namespace.
    pub namespace: String,
    /// Event queue to containerd.
    pub events: Events,
    /// Signalled when the shim should exit.
    pub exit: Arc<ExitSignal>,
    /// The container, between Create and Delete.
    pub container: Mutex<Option<Arc<Container>>>,
}

impl Service {
    /// A service publishing to `publisher` (none in tests).
    pub fn new(namespace: &str, publisher: Option<RemotePublisher>, exit: Arc<ExitSignal>) -> Service {
        Service {
            inner: Arc::new(Inner {
                namespace: namespace.into(),
                events: Events::new(publisher, namespace.into()),
                exit,
                container: Mutex::new(None),
            }),
        }
    }
}
