//! Counters of one network device.

use crate::devices::virtio::counter::{pairs_to_json, Counter};

/// What one network device did so far.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames delivered to the guest.
    pub rx_frames: Counter,
    /// Bytes delivered to the guest (frames, without the virtio header).
    pub rx_bytes: Counter,
    /// Frames the guest sent.
    pub tx_frames: Counter,
    /// Bytes the guest sent.
    pub tx_bytes: Counter,
    /// Frames dropped (tap full, frame too large for the guest buffer).
    pub dropped: Counter,
    /// Malformed chains and tap errors.
    pub errors: Counter,
    /// Queue notifications received before the device was activated.
    pub early_notifications: Counter,
}

impl NetMetrics {
    /// The counters as (name, value) pairs.
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_frames", self.rx_frames.get()),
            ("rx_bytes", self.rx_bytes.get()),
            ("tx_frames", self.tx_frames.get()),
            ("tx_bytes", self.tx_bytes.get()),
            ("dropped", self.dropped.get()),
            ("errors", self.errors.get()),
            ("early_notifications", self.early_notifications.get()),
        ]
    }

    /// The counters as JSON for the VMM control API.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(pairs_to_json(self.pairs()))
    }
}
