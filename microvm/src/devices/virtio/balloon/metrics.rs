//! Counters of the balloon device.

use crate::devices::virtio::counter::{pairs_to_json, Counter};

/// What the balloon device did so far.
#[derive(Debug, Default)]
pub struct BalloonMetrics {
    /// Free page report chains handled (each up to 32 ranges).
    pub report_chains: Counter,
    /// Bytes of guest RAM punched out of the memfd (whole pages of the reported ranges),
    /// including pages the host never held (the first report covers untouched memory too).
    pub reported_bytes: Counter,
    /// Report chains refused whole: malformed, too long, a device-readable or empty
    /// descriptor, or a range not inside one RAM region. Nothing of them is given back.
    pub rejected_reports: Counter,
    /// Ranges whose pages could not be given back (the hole punch failed).
    pub discard_errors: Counter,
    /// Chains on the inflate queue, completed unread (the host never asks to inflate).
    pub inflate_ignored: Counter,
    /// Chains on the deflate queue, completed unread.
    pub deflate_ignored: Counter,
    /// Queue notifications received before the device was activated.
    pub early_notifications: Counter,
    /// Interrupts raised to the guest.
    pub interrupts: Counter,
}

impl BalloonMetrics {
    /// The counters as (name, value) pairs.
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("report_chains", self.report_chains.get()),
            ("reported_bytes", self.reported_bytes.get()),
            ("rejected_reports", self.rejected_reports.get()),
            ("discard_errors", self.discard_errors.get()),
            ("inflate_ignored", self.inflate_ignored.get()),
            ("deflate_ignored", self.deflate_ignored.get()),
            ("early_notifications", self.early_notifications.get()),
            ("interrupts", self.interrupts.get()),
        ]
    }

    /// The counters as JSON for the VMM control API.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(pairs_to_json(self.pairs()))
    }
}
