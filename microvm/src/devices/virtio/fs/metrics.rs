//! Counters of one virtio-fs device.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::devices::virtio::counter::{pairs_to_json, Counter};

/// What the virtio-fs device and its backend did so far.
#[derive(Debug, Default)]
pub struct FsMetrics {
    /// Activations whose vhost-user handshake succeeded (the backend serves the queues).
    pub activations: Counter,
    /// Interrupts raised for the backend (its call EventFds fired, or, when relaying, the
    /// guest's requests it completed).
    pub interrupts: Counter,
    /// Times the backend hung up, failed a step of the protocol or could not be reached
    /// when the driver activated the device.
    pub backend_failures: Counter,
    /// Guest requests husk-vmm answered with EIO because the backend was gone.
    pub failed_requests: Counter,
    /// Malformed chains met while answering for a backend that is gone.
    pub errors: Counter,
    /// Queue notifications husk-vmm itself handled (while relaying, or while the backend is
    /// gone).
    pub kicks: Counter,
    /// Requests husk-vmm relayed to the backend through its shadow rings.
    pub relayed_requests: Counter,
    /// Whether a backend is connected now.
    pub connected: AtomicBool,
    /// Whether the backend's call EventFds raise the interrupt through KVM now (irqfds)
    /// rather than through husk-vmm (`interrupts` then stays still).
    pub routed_calls: AtomicBool,
    /// Whether husk-vmm relays the queues (RAM mapped copy-on-write: [`super::relay`]).
    pub relaying: AtomicBool,
}

impl FsMetrics {
    /// The counters as (name, value) pairs (`connected`, `routed_calls` and `relaying` are 0
    /// or 1).
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("activations", self.activations.get()),
            ("interrupts", self.interrupts.get()),
            ("backend_failures", self.backend_failures.get()),
            ("failed_requests", self.failed_requests.get()),
            ("errors", self.errors.get()),
            ("kicks", self.kicks.get()),
            ("relayed_requests", self.relayed_requests.get()),
            ("connected", u64::from(self.connected.load(Ordering::Relaxed))),
            ("routed_calls", u64::from(self.routed_calls.load(Ordering::Relaxed))),
            ("relaying", u64::from(self.relaying.load(Ordering::Relaxed))),
        ]
    }

    /// The counters as JSON for the VMM control API.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(pairs_to_json(self.pairs()))
    }
}
