//! Why a VM stopped, and the process exit status that tells the caller.
//!
//! How husk-vmm recognises what the guest did (the husk guest kernel has neither ACPI nor
//! PCI, so there is no ACPI power-off, no pvpanic):
//!
//! | guest event | how it is seen | status |
//! |---|---|---|
//! | power-off (`poweroff -f`, `reboot(RB_POWER_OFF)`) | without `pm_power_off` Linux turns power-off into halt and prints `reboot: System halted` (or `reboot: Power down`) on the console, then halts every CPU; the VMM watches the serial output for those lines | 0 |
//! | reboot (`reboot -f`) | with `reboot=k` Linux writes 0xFE to port 0x64 (i8042 reset) | 1 |
//! | kernel panic | the line `Kernel panic - not syncing` on the console, then (with `panic=-1`) the i8042 reset, or the `---[ end Kernel panic` line without it | 3 |
//! | triple fault | `KVM_EXIT_SHUTDOWN` | 3 |
//! | VMM failure, KVM internal error | | 2 |
//! | `kill` through the API | | 0 (reason `killed through the API`) |
//!
//! The kernel command line therefore needs `console=ttyS0 reboot=k` (the default has them,
//! plus `panic=-1`). A guest that writes these lines to its console itself chooses its own
//! exit status; it cannot do more than stop its own VM with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// Status: the guest powered off.
pub const EXIT_POWER_OFF: i32 = 0;
/// Status: the guest rebooted.
pub const EXIT_REBOOT: i32 = 1;
/// Status: the VMM failed (also for bad configuration).
pub const EXIT_VMM_ERROR: i32 = 2;
/// Status: the guest panicked or triple-faulted.
pub const EXIT_GUEST_CRASH: i32 = 3;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest halted for power-off.
    PoweredOff,
    /// The guest asked for a reset (not after a panic).
    Rebooted,
    /// The guest kernel panicked; the panic line.
    Panicked(String),
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// Stopped by the `kill` API request.
    Killed,
    /// The VMM failed.
    Error(String),
}

impl ExitReason {
    /// Process exit status.
    pub fn status(&self) -> i32 {
        match self {
            ExitReason::PoweredOff | ExitReason::Killed => EXIT_POWER_OFF,
            ExitReason::Rebooted => EXIT_REBOOT,
            ExitReason::Panicked(_) | ExitReason::TripleFault => EXIT_GUEST_CRASH,
            ExitReason::Error(_) => EXIT_VMM_ERROR,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::PoweredOff => f.write_str("guest powered off"),
            ExitReason::Rebooted => f.write_str("guest rebooted"),
            ExitReason::Panicked(line) => write!(f, "guest kernel panicked: {line}"),
            ExitReason::TripleFault => f.write_str("guest triple-faulted (KVM_EXIT_SHUTDOWN)"),
            ExitReason::Killed => f.write_str("killed through the API"),
            ExitReason::Error(e) => write!(f, "VMM error: {e}"),
        }
    }
}

/// The first reason anyone reports wins; the main thread waits for it.
#[derive(Default)]
pub struct VmExit {
    reason: Mutex<Option<ExitReason>>,
    cond: Condvar,
    panic_line: Mutex<Option<String>>,
    stopping: AtomicBool,
}

impl VmExit {
    /// Reports `reason` unless another one came first.
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            log::debug!("exit requested: {reason}");
            *r = Some(reason);
            self.stopping.store(true, Ordering::SeqCst);
            self.cond.notify_all();
        }
    }

    /// True once a reason was reported (vCPUs stop running).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Records that the guest printed a panic line.
    pub fn note_panic(&self, line: &str) {
        let mut p = self.panic_line.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            *p = Some(line.to_string());
        }
    }

    /// The guest reset the machine (i8042 0xFE): a reboot, or the end of a panic.
    pub fn on_reset(&self) {
        let panic = self.panic_line.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.request(match panic {
            Some(line) => ExitReason::Panicked(line),
            None => ExitReason::Rebooted,
        });
    }

    /// Blocks until a reason is reported.
    pub fn wait(&self) -> ExitReason {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(reason) = r.clone() {
                return reason;
            }
            r = self.cond.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_panic_turns_reset_into_crash() {
        let e = VmExit::default();
        e.note_panic("Kernel panic - not syncing: boom");
        e.on_reset();
        e.request(ExitReason::PoweredOff);
        let r = e.wait();
        assert_eq!(r.status(), EXIT_GUEST_CRASH);
        assert!(r.to_string().contains("boom"));
        let e = VmExit::default();
        e.on_reset();
        assert_eq!(e.wait(), ExitReason::Rebooted);
    }
}
