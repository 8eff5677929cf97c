//! Counters of one vsock device.

use crate::devices::virtio::counter::{pairs_to_json, Counter};

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
    /// Transmit-queue notifications from the guest (each a guest exit).
    pub tx_kicks: Counter,
    /// Interrupts raised to the guest.
    pub interrupts: Counter,
    /// Credit updates sent to the guest.
    pub credit_updates: Counter,
    /// Guest data a host socket did not take at once (buffered until it is writable).
    pub tx_buffered_bytes: Counter,
    /// Readiness events of host sockets handled.
    pub host_events: Counter,
    /// Reads from host sockets (each fills one or more receive buffers).
    pub host_reads: Counter,
    /// Times the transmit queue had to wait because the guest left too many control
    /// packets unread (`MAX_CONTROL_BACKLOG`).
    pub tx_stalls: Counter,
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
            ("tx_kicks", self.tx_kicks.get()),
            ("interrupts", self.interrupts.get()),
            ("credit_updates", self.credit_updates.get()),
            ("tx_buffered_bytes", self.tx_buffered_bytes.get()),
            ("host_events", self.host_events.get()),
            ("host_reads", self.host_reads.get()),
            ("tx_stalls", self.tx_stalls.get()),
        ]
    }

    /// The counters as JSON for the VMM control API.
    pub fn to_json(&self, connections: usize) -> serde_json::Value {
        let mut map = pairs_to_json(self.pairs());
        map.insert("connections".into(), connections.into());
        serde_json::Value::Object(map)
    }
}
