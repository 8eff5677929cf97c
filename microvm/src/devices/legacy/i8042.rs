//! The i8042 keyboard controller, only as far as its CPU reset line: a write of 0xFE to port
//! 0x64 (Linux `reboot=k`) resets the machine, which stops the VM (see [`crate::exit`]).

use std::sync::{Arc, Mutex};

use vm_superio::{I8042Device, Trigger};

use crate::devices::BusDevice;
use crate::exit::VmExit;

/// Reports a reset to the VM's exit coordinator.
pub struct ResetTrigger(pub Arc<VmExit>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.on_reset();
        Ok(())
    }
}

/// The controller at ports 0x60-0x64.
pub struct I8042 {
    inner: Mutex<I8042Device<ResetTrigger>>,
}

impl I8042 {
    /// A controller reporting resets to `exit`.
    pub fn new(exit: Arc<VmExit>) -> Self {
        I8042 { inner: Mutex::new(I8042Device::new(ResetTrigger(exit))) }
    }
}

impl BusDevice for I8042 {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.inner.lock().unwrap_or_else(|e| e.into_inner()).read(off);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // The trigger cannot fail.
            let _ = self.inner.lock().unwrap_or_else(|e| e.into_inner()).write(off, b);
        }
    }
}
