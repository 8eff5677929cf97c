//! COM1: a vm-superio 16550 UART at port 0x3f8, IRQ 4.

use std::sync::Mutex;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::console::ConsoleWriter;
use super::EventFdTrigger;
use crate::devices::BusDevice;

/// The serial console device.
pub struct SerialDevice {
    inner: Mutex<Serial<EventFdTrigger, NoEvents, ConsoleWriter>>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFdTrigger, out: ConsoleWriter) -> Self {
        SerialDevice { inner: Mutex::new(Serial::new(irq, out)) }
    }

    /// A UART continuing from `state` (a saved VM's).
    pub fn from_state(irq: EventFdTrigger, out: ConsoleWriter, state: &vm_superio::serial::SerialState) -> Result<Self, String> {
        let s = Serial::from_state(state, irq, NoEvents, out).map_err(|e| format!("serial state: {e:?}"))?;
        Ok(SerialDevice { inner: Mutex::new(s) })
    }

    /// The UART's registers and input FIFO.
    pub fn state(&self) -> vm_superio::serial::SerialState {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).state()
    }

    /// Queues input bytes for the guest; returns how many fit in the FIFO.
    pub fn enqueue_input(&self, bytes: &[u8]) -> usize {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = s.fifo_capacity();
        let n = bytes.len().min(room);
        if n == 0 {
            return 0;
        }
        match s.enqueue_raw_bytes(&bytes[..n]) {
            Ok(k) => k,
            Err(e) => {
                log::warn!("serial input dropped: {e}");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= 8 {
            data.fill(0xff);
            return;
        }
        data[0] = self.inner.lock().unwrap_or_else(|e| e.into_inner()).read(offset as u8);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= 8 {
            return;
        }
        if let Err(e) = self.inner.lock().unwrap_or_else(|e| e.into_inner()).write(offset as u8, data[0]) {
            log::warn!("serial write failed: {e}");
        }
    }
}
