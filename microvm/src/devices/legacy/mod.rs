//! Legacy PC devices: the 16550 serial console and the i8042 reset line.

pub mod console;
pub mod i8042;
pub mod serial;
pub mod stdin;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An EventFd (registered as an irqfd) used as a vm-superio interrupt trigger.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
