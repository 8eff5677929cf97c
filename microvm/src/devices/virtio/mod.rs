//! Virtio 1.x devices (modern only) behind the virtio-mmio transport.
//!
//! - [`VirtioDevice`] is what a device implements: its type, queues, features, config space,
//!   and `activate`/`reset`. It never sees MMIO registers.
//! - [`mmio::MmioTransport`] owns the register file, the queue configuration the driver
//!   writes, the interrupt status and the interrupt EventFd; it implements
//!   [`BusDevice`](crate::devices::BusDevice).
//! - Each device also implements `event_manager::MutEventSubscriber`: its queue-notify
//!   EventFds (ioeventfds) and backend fds are served on the VMM's event-loop thread, never on a
//!   vCPU thread.
//! - Queue processing (`*::device.rs`) is plain code over guest memory, testable against
//!   `virtio_queue::mock::MockSplitQueue` without KVM.

pub mod active;
pub mod balloon;
pub mod block;
pub mod chain;
pub mod counter;
pub mod fs;
#[doc(hidden)]
pub mod fuzz_api;
pub mod interrupt;
pub mod iov;
pub mod mmio;
pub mod net;
pub mod ratelimit;
pub mod vsock;
pub mod wiring;

#[cfg(test)]
pub(crate) mod test_utils;

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;
pub use interrupt::Interrupt;

/// Virtio device type: network card.
pub const TYPE_NET: u32 = 1;
/// Virtio device type: block device.
pub const TYPE_BLOCK: u32 = 2;
/// Virtio device type: memory balloon (here only free page reporting).
pub const TYPE_BALLOON: u32 = 5;
/// Virtio device type: socket device.
pub const TYPE_VSOCK: u32 = 19;
/// Virtio device type: file system device (virtio-fs).
pub const TYPE_FS: u32 = 26;

/// Feature bit: the device follows virtio 1.x (mandatory here, legacy is not offered).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: the driver may use indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: used/avail event index suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Device status bit: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status bit: the guest has a driver for it.
pub const STATUS_DRIVER: u32 = 2;
/// Device status bit: the driver is ready and the device is live.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status bit: the device hit an error and needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
/// Device status bit: the driver gave up on the device.
pub const STATUS_FAILED: u32 = 128;

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver handed over a different number of queues than the device uses.
    #[error("device expects {expected} queues, the driver configured {got}")]
    QueueCount {
        /// Queues the device uses.
        expected: usize,
        /// Queues handed over.
        got: usize,
    },
    /// A backend thread or descriptor could not be set up.
    #[error("cannot start the backend of the {device} device")]
    Backend {
        /// Device name.
        device: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The device was activated twice without a reset.
    #[error("device is already active")]
    AlreadyActive,
}

impl ActivateError {
    /// The preconditions every device checks in `activate`: it is not active yet and the
    /// driver configured exactly `expected` queues.
    pub(crate) fn check(already_active: bool, queues: &[Queue], expected: usize) -> Result<(), Self> {
        if already_active {
            return Err(Self::AlreadyActive);
        }
        if queues.len() != expected {
            return Err(Self::QueueCount { expected, got: queues.len() });
        }
        Ok(())
    }
}

/// Where a device stands in one queue, for a snapshot: the next available entry it will take
/// and the next used entry it will write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueProgress {
    /// Next available ring index the device takes.
    pub next_avail: u16,
    /// Next used ring index the device writes.
    pub next_used: u16,
}

/// A virtio device, independent of the transport that exposes it.
pub trait VirtioDevice: Send {
    /// The virtio device type (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue, one entry per queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// The notification EventFd of each queue, in queue order. The transport keeps duplicates
    /// of them and the VMM registers them as ioeventfds.
    fn queue_events(&self) -> &[EventFd];
    /// Features offered to the driver (bit N = feature N).
    fn avail_features(&self) -> u64;
    /// Features the driver accepted (a subset of `avail_features`), set before `activate`.
    fn set_acked_features(&mut self, features: u64);
    /// Reads `data.len()` bytes of the device config space at `offset`. Out-of-range bytes
    /// read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device config space. Out-of-range or read-only writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device: it now owns the queues and may use guest memory and interrupts.
    fn activate(&mut self, mem: GuestMemoryMmap, interrupt: Arc<Interrupt>, queues: Vec<Queue>) -> Result<(), ActivateError>;
    /// Stops the device and drops the queues; the driver may configure it again.
    fn reset(&mut self);
    /// Whether `activate` succeeded and no reset followed.
    fn is_activated(&self) -> bool;
    /// Per-device counters for the VMM control API.
    fn metrics(&self) -> serde_json::Value;
    /// For a snapshot of the paused VM: the progress of each queue of the activated device,
    /// with nothing of the guest's held in the device (chains it took but did not use are
    /// given back by rewinding). An error says why the device cannot be saved now.
    fn save_progress(&mut self) -> Result<Vec<QueueProgress>, String> {
        Err("saving this kind of device is not supported yet".into())
    }
}

/// Returns bit `bit` of a feature word.
pub(crate) const fn feature(bit: u32) -> u64 {
    1u64 << bit
}

/// Features every device here offers: virtio 1.x, indirect descriptors and event-index
/// notification suppression ([`active::Active::pop`] moves `avail_event` when a queue is
/// drained; [`active::Active::notify`] honours `used_event`).
pub(crate) const COMMON_FEATURES: u64 = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_INDIRECT_DESC) | feature(VIRTIO_RING_F_EVENT_IDX);

/// Copies the config bytes at `offset` out of `config` into `data`; bytes past the end read
/// as zero (a guest reading out of range gets zeros, never VMM memory).
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}
