//! The i8042 keyboard controller at ports 0x60 (data) and 0x64 (status/command), emulated
//! far enough for Linux's i8042 and atkbd drivers to probe without timeouts, to reset the
//! machine (0xFE to port 0x64, Linux `reboot=k`) and to receive Ctrl-Alt-Del (the API's
//! graceful shutdown).
//!
//! vm-superio's i8042 only implements the reset line; Linux's probe then waits for a
//! controller configuration byte that never comes ("Can't read CTR"), and there is no way to
//! inject keys. Hence this small controller. No AUX (mouse) port: husk-vmm passes
//! `i8042.noaux i8042.nomux` on the command line.
//!
//! Keys are delivered as scancode set 1 (what a controller with translation enabled, the
//! default in the configuration byte, hands to the CPU). The guest controls everything written
//! here: every command is bounded and the output queue holds at most [`MAX_QUEUE`] bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use vm_superio::Trigger;

use super::EventFdTrigger;
use crate::devices::BusDevice;
use crate::exit::VmExit;

/// Most bytes waiting in the output buffer.
pub const MAX_QUEUE: usize = 16;

const OFF_DATA: u64 = 0;
const OFF_CMD: u64 = 4;

const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM: u8 = 0x04;
const SB_LAST_WAS_CMD: u8 = 0x08;
const SB_UNLOCKED: u8 = 0x10;

const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_XLATE: u8 = 0x40;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_RESET_CPU: u8 = 0xfe;

const KBD_ACK: u8 = 0xfa;

/// Ctrl down, Alt down, Del down, Del up, Alt up, Ctrl up (scancode set 1).
const CTRL_ALT_DEL: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// The controller's registers and output queue (plain data: a snapshot saves it).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct State {
    status: u8,
    ctr: u8,
    outp: u8,
    /// A command waiting for its data byte.
    pending: Option<u8>,
    queue: VecDeque<u8>,
}

/// The controller.
pub struct I8042 {
    state: Mutex<State>,
    irq: EventFdTrigger,
    exit: Arc<VmExit>,
}

impl I8042 {
    /// A controller raising `irq` (GSI 1) and reporting resets to `exit`.
    pub fn new(irq: EventFdTrigger, exit: Arc<VmExit>) -> Self {
        I8042 {
            state: Mutex::new(State {
                status: SB_UNLOCKED | SB_SYSTEM,
                ctr: CTR_KBD_INT | CTR_SYSTEM | CTR_XLATE,
                outp: 0x01,
                pending: None,
                queue: VecDeque::new(),
            }),
            irq,
            exit,
        }
    }

    /// The registers and the output queue.
    pub fn state(&self) -> State {
        self.lock().clone()
    }

    /// Takes over `state` (from [`I8042::state`] of a saved VM); refuses a queue longer than
    /// the controller's.
    pub fn set_state(&self, state: State) -> Result<(), String> {
        if state.queue.len() > MAX_QUEUE {
            return Err(format!("i8042 output queue of {} bytes (at most {MAX_QUEUE})", state.queue.len()));
        }
        *self.lock() = state;
        Ok(())
    }

    /// Types Ctrl-Alt-Del on the keyboard. Linux then reboots at once, or, if PID 1 disabled
    /// that with `reboot(LINUX_REBOOT_CMD_CAD_OFF)`, sends SIGINT to PID 1.
    pub fn ctrl_alt_del(&self) -> bool {
        let mut s = self.lock();
        if s.ctr & CTR_KBD_DISABLE != 0 || s.queue.len() + CTRL_ALT_DEL.len() > MAX_QUEUE {
            return false;
        }
        s.queue.extend(CTRL_ALT_DEL);
        self.update(&mut s);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, s: &mut State, b: u8) {
        if s.queue.len() < MAX_QUEUE {
            s.queue.push_back(b);
        }
        self.update(s);
    }

    /// Sets the output-full flag and raises the interrupt if a byte is waiting.
    fn update(&self, s: &mut State) {
        if s.queue.is_empty() {
            s.status &= !SB_OUT_FULL;
        } else {
            s.status |= SB_OUT_FULL;
            if s.ctr & CTR_KBD_INT != 0 {
                if let Err(e) = self.irq.trigger() {
                    log::warn!("i8042 interrupt failed: {e}");
                }
            }
        }
    }

    fn command(&self, s: &mut State, cmd: u8) {
        s.status |= SB_LAST_WAS_CMD;
        match cmd {
            CMD_READ_CTR => {
                let c = s.ctr;
                self.push(s, c);
            }
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUT => s.pending = Some(cmd),
            CMD_SELF_TEST => {
                s.queue.clear();
                self.push(s, 0x55);
            }
            CMD_KBD_TEST => self.push(s, 0x00),
            CMD_KBD_DISABLE => s.ctr |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => s.ctr &= !CTR_KBD_DISABLE,
            CMD_READ_OUTP => {
                let o = s.outp;
                self.push(s, o);
            }
            CMD_RESET_CPU => self.exit.on_reset(),
            _ => {}
        }
    }

    fn data(&self, s: &mut State, b: u8) {
        s.status &= !SB_LAST_WAS_CMD;
        match s.pending.take() {
            Some(CMD_WRITE_CTR) => s.ctr = b,
            Some(CMD_WRITE_OUTP) => {
                s.outp = b;
                // Output port bit 0 low pulses the CPU reset line.
                if b & 1 == 0 {
                    self.exit.on_reset();
                }
            }
            Some(CMD_WRITE_KBD_OUT) => self.push(s, b),
            _ => {
                // A byte for the keyboard itself: acknowledge, and answer the two queries
                // atkbd relies on.
                self.push(s, KBD_ACK);
                match b {
                    0xf2 => {
                        self.push(s, 0xab);
                        self.push(s, 0x83);
                    }
                    0xff => self.push(s, 0xaa),
                    _ => {}
                }
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else { return };
        let mut s = self.lock();
        *first = match offset {
            OFF_DATA => {
                let b = s.queue.pop_front().unwrap_or(0);
                self.update(&mut s);
                b
            }
            OFF_CMD => s.status,
            _ => 0,
        };
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&b) = data.first() else { return };
        let mut s = self.lock();
        match offset {
            OFF_DATA => self.data(&mut s, b),
            OFF_CMD => self.command(&mut s, b),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitReason;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn dev() -> (I8042, Arc<VmExit>) {
        let exit = Arc::new(VmExit::default());
        (I8042::new(EventFdTrigger(EventFd::new(EFD_NONBLOCK).unwrap()), exit.clone()), exit)
    }

    fn rd(d: &I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn linux_probe_sequence_is_answered() {
        let (d, _) = dev();
        d.write(OFF_CMD, &[CMD_SELF_TEST]);
        assert_ne!(rd(&d, OFF_CMD) & SB_OUT_FULL, 0);
        assert_eq!(rd(&d, OFF_DATA), 0x55);
        assert_eq!(rd(&d, OFF_CMD) & SB_OUT_FULL, 0);
        d.write(OFF_CMD, &[CMD_READ_CTR]);
        let ctr = rd(&d, OFF_DATA);
        assert_eq!(ctr & CTR_XLATE, CTR_XLATE);
        d.write(OFF_CMD, &[CMD_WRITE_CTR]);
        d.write(OFF_DATA, &[0x45]);
        d.write(OFF_CMD, &[CMD_READ_CTR]);
        assert_eq!(rd(&d, OFF_DATA), 0x45);
        d.write(OFF_DATA, &[0xf2]);
        assert_eq!([rd(&d, OFF_DATA), rd(&d, OFF_DATA), rd(&d, OFF_DATA)], [KBD_ACK, 0xab, 0x83]);
    }

    #[test]
    fn reset_and_ctrl_alt_del() {
        let (d, exit) = dev();
        assert!(d.ctrl_alt_del());
        let keys: Vec<u8> = (0..8).map(|_| rd(&d, OFF_DATA)).collect();
        assert_eq!(keys, CTRL_ALT_DEL);
        assert!(!exit.is_stopping());
        d.write(OFF_CMD, &[CMD_RESET_CPU]);
        assert_eq!(exit.wait(), ExitReason::Rebooted);
    }

    #[test]
    fn hostile_writes_stay_bounded() {
        let (d, _) = dev();
        for _ in 0..1000 {
            d.write(OFF_DATA, &[0xf2]);
        }
        assert!(d.lock().queue.len() <= MAX_QUEUE);
        d.write(OFF_CMD, &[CMD_KBD_DISABLE]);
        assert!(!d.ctrl_alt_del());
        d.write(9, &[1]);
        d.write(OFF_DATA, &[]);
    }
}
