//! Feeds husk-vmm's standard input to the serial console (`--console stdio`), on the device
//! event loop. Bytes that arrive while the UART's receive FIFO is full are dropped, as a real
//! UART overruns. On end of input the subscription ends.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::serial::SerialDevice;

/// The stdin → serial subscriber.
pub struct StdinInput {
    serial: Arc<SerialDevice>,
    dropped: u64,
}

impl StdinInput {
    /// A subscriber feeding `serial`, or none if standard input cannot be polled (a regular
    /// file or /dev/null).
    pub fn new(serial: Arc<SerialDevice>) -> Option<Self> {
        // SAFETY: fstat on fd 0 into a zeroed stat buffer owned here.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; the buffer is valid for writes.
        if unsafe { libc::fstat(0, &mut st) } != 0 {
            return None;
        }
        let kind = st.st_mode & libc::S_IFMT;
        let pollable = kind == libc::S_IFIFO || kind == libc::S_IFSOCK || (kind == libc::S_IFCHR && std::io::IsTerminal::is_terminal(&std::io::stdin()));
        pollable.then_some(StdinInput { serial, dropped: 0 })
    }
}

impl MutEventSubscriber for StdinInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = if events.event_set().contains(EventSet::IN) { std::io::stdin().lock().read(&mut buf).unwrap_or(0) } else { 0 };
        if n == 0 {
            let _ = ops.remove(Events::new(&std::io::stdin(), EventSet::IN));
            return;
        }
        let taken = self.serial.enqueue_input(&buf[..n]);
        if taken < n {
            self.dropped += (n - taken) as u64;
            if self.dropped.is_power_of_two() {
                log::warn!("serial input overrun: {} bytes dropped so far", self.dropped);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&std::io::stdin(), EventSet::IN)) {
            log::warn!("standard input (fd {}) not forwarded to the console: {e}", std::io::stdin().as_raw_fd());
        }
    }
}
