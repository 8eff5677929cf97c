//! Devices of the microVM and the bus they sit on.
//!
//! Contract between the VMM core and the devices:
//! - Every device that the guest reaches through port or memory-mapped I/O implements
//!   [`BusDevice`]. It takes `&self`: a device that has state keeps it behind its own
//!   interior mutability, so vCPUs touching different devices never serialise on one lock.
//! - Offsets are relative to the base of the range the device was inserted at.

pub mod virtio;

pub mod legacy;

/// A device reached by vCPU port or MMIO exits.
pub trait BusDevice: Send + Sync {
    /// The guest reads `data.len()` bytes at `offset` into the device's range.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` into the device's range.
    fn write(&self, offset: u64, data: &[u8]);
}
