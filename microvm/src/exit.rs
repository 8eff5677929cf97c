//! Why a VM stopped, and the process exit status that tells the caller.
//!
//! How husk-vmm recognises what the guest did (the husk guest kernel has neither ACPI nor
//! PCI, so there is no ACPI power-off, no pvpanic):
//!
//! | guest event | how it is seen | status |
//! |---|---|---|
//! | power-off (`poweroff -f`, `reboot(RB_POWER_OFF)`) | without `pm_power_off` Linux turns power-off into halt: it prints `reboot: System halted` (or `reboot: Power down`) on the console, then stops every CPU with interrupts disabled (`cli; hlt`). The line only makes the VMM look: it pauses the vCPUs and checks that every one is halted with interrupts off, or was never started ([`crate::vcpu::Vcpus::probe_halted`]), retrying for [`HALT_CHECK_WINDOW`] | 0 |
//! | reboot (`reboot -f`) | with `reboot=k` Linux writes 0xFE to port 0x64 (i8042 reset) | 1 |
//! | kernel panic | the line `Kernel panic - not syncing` on the console, then (with `panic=-1`) the i8042 reset | 3 |
//! | triple fault | `KVM_EXIT_SHUTDOWN` | 3 |
//! | VMM failure, KVM internal error | | 2 |
//! | `kill` through the API | | 0 (reason `killed through the API`) |
//!
//! The kernel command line therefore needs `console=ttyS0 reboot=k panic=-1` (the default
//! has them). Console text alone never ends the VM: any guest process that reaches the
//! console (or /dev/kmsg, or names a cgroup the kernel prints) can write those lines. A
//! process cannot halt a vCPU (`hlt` and `cli` need kernel privilege, or port-I/O rights only
//! CAP_SYS_RAWIO grants), so a forged power-off line is found out and ignored; a forged panic
//! line only relabels a later reset (which also needs the kernel or CAP_SYS_RAWIO). Without
//! `panic=-1` a panicked guest spins and its VM stays until it is killed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long after a power-off line the vCPUs are checked for the halt before the line is
/// taken as forged (the kernel stops the other CPUs first, which under nested emulation
/// takes a while).
pub const HALT_CHECK_WINDOW: Duration = Duration::from_secs(10);

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

/// What the main thread waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The VM stops for this reason.
    Exit(ExitReason),
    /// The console showed a power-off line: check the vCPUs ([`VmExit::take_halt_claim`]).
    HaltClaim,
    /// Nothing before the timeout.
    Timeout,
}

#[derive(Default)]
struct State {
    reason: Option<ExitReason>,
    /// A power-off line came and was not checked yet.
    halt_claim: bool,
}

/// The first reason anyone reports wins; the main thread waits for it.
#[derive(Default)]
pub struct VmExit {
    state: Mutex<State>,
    cond: Condvar,
    panic_line: Mutex<Option<String>>,
    stopping: AtomicBool,
}

impl VmExit {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports `reason` unless another one came first.
    pub fn request(&self, reason: ExitReason) {
        let mut s = self.state();
        if s.reason.is_none() {
            log::debug!("exit requested: {reason}");
            s.reason = Some(reason);
            self.stopping.store(true, Ordering::SeqCst);
            self.cond.notify_all();
        }
    }

    /// True once a reason was reported (vCPUs stop running).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The console showed the kernel's power-off line: the main thread checks whether the
    /// vCPUs really halted (a guest process can print the line too).
    pub fn claim_halt(&self) {
        let mut s = self.state();
        if !s.halt_claim {
            s.halt_claim = true;
            self.cond.notify_all();
        }
    }

    /// Takes a pending power-off claim (true if there was one).
    pub fn take_halt_claim(&self) -> bool {
        std::mem::take(&mut self.state().halt_claim)
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
        loop {
            if let Event::Exit(r) = self.wait_event(None, false) {
                return r;
            }
        }
    }

    /// Blocks until a reason is reported, a power-off claim is pending (when `claims`), or
    /// `timeout` passed.
    pub fn wait_event(&self, timeout: Option<Duration>, claims: bool) -> Event {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = self.state();
        loop {
            if let Some(reason) = s.reason.clone() {
                return Event::Exit(reason);
            }
            if claims && s.halt_claim {
                return Event::HaltClaim;
            }
            s = match deadline {
                None => self.cond.wait(s).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Event::Timeout;
                    }
                    self.cond.wait_timeout(s, d - now).unwrap_or_else(|e| e.into_inner()).0
                }
            };
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

    #[test]
    fn a_halt_claim_wakes_the_waiter_but_is_no_exit() {
        let e = VmExit::default();
        assert_eq!(e.wait_event(Some(Duration::from_millis(10)), true), Event::Timeout);
        e.claim_halt();
        assert!(!e.is_stopping(), "a claim stops nothing");
        assert_eq!(e.wait_event(Some(Duration::from_millis(10)), false), Event::Timeout, "claims not asked for");
        assert_eq!(e.wait_event(None, true), Event::HaltClaim);
        assert!(e.take_halt_claim());
        assert!(!e.take_halt_claim());
        e.request(ExitReason::Rebooted);
        assert_eq!(e.wait_event(None, true), Event::Exit(ExitReason::Rebooted));
    }
}
