//! Counters of one disk.

use crate::devices::virtio::counter::{pairs_to_json, Counter};

/// What one disk did so far.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Requests taken from the queue, whatever their type or outcome.
    pub requests: Counter,
    /// Read requests completed.
    pub reads: Counter,
    /// Write requests completed.
    pub writes: Counter,
    /// Flushes completed.
    pub flushes: Counter,
    /// Bytes read from the image.
    pub read_bytes: Counter,
    /// Bytes written to the image.
    pub write_bytes: Counter,
    /// Requests that failed (I/O error, out of range, read-only, malformed).
    pub errors: Counter,
    /// Queue notifications received before the device was activated.
    pub early_notifications: Counter,
    /// Images attached to this slot through the API.
    pub attaches: Counter,
    /// Images detached from this slot through the API.
    pub detaches: Counter,
    /// Attach and detach requests refused or failed (occupied, empty, unusable image...).
    pub hotplug_errors: Counter,
}

impl BlockMetrics {
    /// The counters as (name, value) pairs.
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("requests", self.requests.get()),
            ("reads", self.reads.get()),
            ("writes", self.writes.get()),
            ("flushes", self.flushes.get()),
            ("read_bytes", self.read_bytes.get()),
            ("write_bytes", self.write_bytes.get()),
            ("errors", self.errors.get()),
            ("early_notifications", self.early_notifications.get()),
            ("attaches", self.attaches.get()),
            ("detaches", self.detaches.get()),
            ("hotplug_errors", self.hotplug_errors.get()),
        ]
    }

    /// The counters as JSON for the VMM control API.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(pairs_to_json(self.pairs()))
    }
}
