//! The interrupt line of one virtio-mmio device: status bits plus an irqfd EventFd.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// Interrupt status bit: a queue has new used buffers.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the device configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Interrupt status and trigger of one device, shared between the transport (vCPU side reads
/// and acknowledges the status) and the device (event loop side raises it).
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// Creates an interrupt with a fresh non-blocking EventFd.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The EventFd the VMM registers as irqfd on the device's GSI.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }

    /// Current interrupt status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears all bits (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// Raises the interrupt for used buffers.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(INT_VRING)
    }

    /// Raises the interrupt for a configuration change.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.raise(INT_CONFIG)
    }

    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.evt.write(1)
    }
}
