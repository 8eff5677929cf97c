//! Counters of one vsock device.

use crate::devices::virtio::counter::Counter;

/// What the vsock device did so far.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Packets put into the guest's receive queue.
    pub rx_packets: Counter,
    /// Payload bytes sent to the guest.
    pub rx_bytes: Counter,
    /// Packets the guest transmitted.
    pub tx_packets: Counter,
    /// Payload bytes the guest transmitted.
    pub tx_bytes: Counter,
    /// Connections established (either direction).
    pub conns_opened: Counter,
    /// Connection attempts refused (no listener, bad CONNECT line, limit reached).
    pub conns_refused: Counter,
    /// Malformed chains or packets and protocol violations.
    pub errors: Counter,
    /// Queue notifications received before the device was activated.
    pub early_notifications: Counter,
}

impl VsockMetrics {
    /// The counters as (name, value) pairs.
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_packets", self.rx_packets.get()),
            ("rx_bytes", self.rx_bytes.get()),
            ("tx_packets", self.tx_packets.get()),
            ("tx_bytes", self.tx_bytes.get()),
            ("conns_opened", self.conns_opened.get()),
            ("conns_refused", self.conns_refused.get()),
            ("errors", self.errors.get()),
            ("early_notifications", self.early_notifications.get()),
        ]
    }

    /// The counters as JSON for the VMM control API.
    pub fn to_json(&self, connections: usize) -> serde_json::Value {
        serde_json::json!({
            "rx_packets": self.rx_packets.get(),
            "rx_bytes": self.rx_bytes.get(),
            "tx_packets": self.tx_packets.get(),
            "tx_bytes": self.tx_bytes.get(),
            "conns_opened": self.conns_opened.get(),
            "conns_refused": self.conns_refused.get(),
            "errors": self.errors.get(),
            "early_notifications": self.early_notifications.get(),
            "connections": connections,
        })
    }
}
