//! vCPU threads: one named thread (`vcpu-N`) per vCPU running KVM_RUN and routing I/O exits
//! to the buses; pause/resume by kicking threads out of KVM_RUN with a signal.
//!
//! Pausing: the controller sets a flag, then signals every vCPU thread (SIGRTMIN, whose
//! handler does nothing) until each has acknowledged. The signal makes a KVM_RUN in progress
//! return EINTR; a signal that lands just before KVM_RUN is entered is lost, so the controller
//! signals again every few milliseconds until all vCPUs are parked. Parked vCPUs wait on a
//! condition variable until resumed.
//!
//! Probing for the halt (a power-off line on the console, see [`crate::exit`]): a pause in
//! which each vCPU thread, before it parks, reads its own vCPU's state (KVM_GET_MP_STATE and
//! KVM_GET_REGS) and answers whether it is halted with interrupts disabled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::Bus;
use crate::exit::{ExitReason, VmExit};
use crate::snapshot::cpu::VcpuState;

/// Signal (offset from SIGRTMIN) used to kick vCPUs out of KVM_RUN.
pub const KICK_SIGNAL_OFFSET: i32 = 0;

/// Errors starting vCPU threads.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The thread could not be spawned.
    #[error("cannot spawn thread vcpu-{0}")]
    Spawn(u8, #[source] std::io::Error),
}

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// One vCPU's answer to a snapshot: none yet, its state, or why it could not be read.
type SaveAnswer = Option<Result<VcpuState, String>>;

/// Shared run control of all vCPUs.
#[derive(Default)]
pub struct RunControl {
    pause: AtomicBool,
    parked: Mutex<usize>,
    cond: Condvar,
    /// The current pause is a halt probe: vCPUs answer before parking.
    probe: AtomicBool,
    /// Answers of the current probe: (answered, halted with interrupts off).
    answers: Mutex<(usize, usize)>,
    /// A snapshot in progress: each parked vCPU saves its state into its entry.
    saves: Mutex<Option<Vec<SaveAnswer>>>,
    /// The MSRs a snapshot saves.
    msr_list: Vec<u32>,
}

impl RunControl {
    /// True while a pause is requested.
    pub fn pause_requested(&self) -> bool {
        self.pause.load(Ordering::SeqCst)
    }

    fn answer(&self, halted: bool) {
        let mut a = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        a.0 += 1;
        a.1 += usize::from(halted);
    }

    /// Whether vCPU `id` has to save its state for a snapshot.
    fn save_pending(&self, id: u8) -> bool {
        self.saves.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|v| v.get(usize::from(id)).is_some_and(Option::is_none))
    }

    fn store_save(&self, id: u8, state: Result<VcpuState, String>) {
        let mut saves = self.saves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = saves.as_mut().and_then(|v| v.get_mut(usize::from(id))) {
            *slot = Some(state);
        }
        drop(saves);
        let _guard = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        self.cond.notify_all();
    }

    fn park(&self, id: u8) {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        *parked += 1;
        self.cond.notify_all();
        while self.pause.load(Ordering::SeqCst) && !self.save_pending(id) {
            parked = self.cond.wait(parked).unwrap_or_else(|e| e.into_inner());
        }
        *parked -= 1;
        self.cond.notify_all();
    }
}

/// Handles on the vCPU threads.
pub struct Vcpus {
    threads: Vec<JoinHandle<()>>,
    control: Arc<RunControl>,
    /// Serialises pause, resume and probes (the API thread and the main thread use them).
    ctl: Mutex<()>,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

impl Vcpus {
    /// Starts one thread per vCPU. The buses are shared read-only.
    pub fn start(
        vcpus: Vec<VcpuFd>,
        io_bus: Arc<Bus>,
        mmio_bus: Arc<Bus>,
        exit: Arc<VmExit>,
        seccomp: Option<Arc<seccompiler::BpfProgram>>,
        msr_list: Vec<u32>,
    ) -> Result<Self, VcpuError> {
        register_signal_handler(SIGRTMIN() + KICK_SIGNAL_OFFSET, kick_handler).map_err(VcpuError::Signal)?;
        let control = Arc::new(RunControl { msr_list, ..Default::default() });
        let mut threads = Vec::with_capacity(vcpus.len());
        for (i, fd) in vcpus.into_iter().enumerate() {
            let id = i as u8;
            let (io, mmio, ex, ctl, filter) = (io_bus.clone(), mmio_bus.clone(), exit.clone(), control.clone(), seccomp.clone());
            let t = crate::thread_builder(format!("vcpu-{id}"))
                .spawn(move || {
                    if let Some(f) = filter {
                        if let Err(e) = crate::seccomp::apply(&f, crate::seccomp::ThreadKind::Vcpu) {
                            ex.request(ExitReason::Error(format!("vcpu-{id}: cannot install seccomp filter: {e}")));
                            return;
                        }
                    }
                    run_loop(id, fd, &io, &mmio, &ex, &ctl)
                })
                .map_err(|e| VcpuError::Spawn(id, e))?;
            threads.push(t);
        }
        Ok(Vcpus { threads, control, ctl: Mutex::new(()) })
    }

    fn kick_all(&self) {
        for t in &self.threads {
            if let Err(e) = t.kill(SIGRTMIN() + KICK_SIGNAL_OFFSET) {
                log::debug!("kick failed: {e}");
            }
        }
    }

    /// Stops every vCPU; returns once all are parked (or `timeout` passed: false).
    pub fn pause(&self, timeout: Duration) -> bool {
        let _ctl = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        self.pause_locked(timeout)
    }

    fn pause_locked(&self, timeout: Duration) -> bool {
        self.control.pause.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        let live = self.threads.iter().filter(|t| !t.is_finished()).count();
        let mut parked = self.control.parked.lock().unwrap_or_else(|e| e.into_inner());
        while *parked < live {
            drop(parked);
            self.kick_all();
            parked = self.control.parked.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            parked = self.control.cond.wait_timeout(parked, Duration::from_millis(5)).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        let _ctl = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        self.resume_locked();
    }

    fn resume_locked(&self) {
        self.control.pause.store(false, Ordering::SeqCst);
        let _guard = self.control.parked.lock().unwrap_or_else(|e| e.into_inner());
        self.control.cond.notify_all();
    }

    /// The state of every vCPU, in order, read by each vCPU's own thread. Only while paused
    /// (None otherwise); waits at most `timeout` for the answers.
    pub fn save_states(&self, timeout: Duration) -> Option<Result<Vec<VcpuState>, String>> {
        let _ctl = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        if !self.control.pause_requested() {
            return None;
        }
        *self.control.saves.lock().unwrap_or_else(|e| e.into_inner()) = Some((0..self.threads.len()).map(|_| None).collect());
        let deadline = std::time::Instant::now() + timeout;
        let mut parked = self.control.parked.lock().unwrap_or_else(|e| e.into_inner());
        self.control.cond.notify_all();
        let result = loop {
            let done = {
                let saves = self.control.saves.lock().unwrap_or_else(|e| e.into_inner());
                saves.as_ref().is_some_and(|v| v.iter().all(Option::is_some))
            };
            if done {
                let all = self.control.saves.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
                break all.into_iter().map(|s| s.unwrap_or_else(|| Err("no answer".into()))).collect::<Result<Vec<_>, _>>();
            }
            let now = std::time::Instant::now();
            if now >= deadline || self.threads.iter().any(|t| t.is_finished()) {
                *self.control.saves.lock().unwrap_or_else(|e| e.into_inner()) = None;
                break Err(format!("the vCPUs did not save their state within {timeout:?}"));
            }
            parked = self.control.cond.wait_timeout(parked, Duration::from_millis(5)).unwrap_or_else(|e| e.into_inner()).0;
        };
        drop(parked);
        Some(result)
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.control.pause_requested()
    }

    /// Whether every vCPU is halted with interrupts disabled, as the guest kernel leaves them
    /// when it halts for power-off: pauses the VM briefly, and leaves it paused only when they
    /// all are (the VM is then ending). None when that cannot be told now (the VM is paused
    /// through the API, or a vCPU did not park within `timeout`).
    pub fn probe_halted(&self, timeout: Duration) -> Option<bool> {
        let _ctl = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        if self.control.pause_requested() {
            return None;
        }
        *self.control.answers.lock().unwrap_or_else(|e| e.into_inner()) = (0, 0);
        // Before the pause flag: a vCPU that sees the pause sees the probe.
        self.control.probe.store(true, Ordering::SeqCst);
        let parked = self.pause_locked(timeout);
        self.control.probe.store(false, Ordering::SeqCst);
        let (answered, halted) = *self.control.answers.lock().unwrap_or_else(|e| e.into_inner());
        let all = parked && answered == self.threads.len() && halted == answered;
        if !all {
            self.resume_locked();
        }
        parked.then_some(all)
    }
}

/// Whether this vCPU is stopped for good: halted (HLT) with RFLAGS.IF clear, or an
/// application processor the guest never started (waiting for INIT/SIPI, e.g. with `nosmp`).
/// Only guest kernel code can get a vCPU there (`hlt` is privileged, `cli` needs I/O
/// privilege, the guest kernel has no iopl/ioperm for processes).
fn halted_with_irqs_off(fd: &VcpuFd) -> bool {
    match fd.get_mp_state().map(|s| s.mp_state) {
        Ok(kvm_bindings::KVM_MP_STATE_HALTED) => fd.get_regs().is_ok_and(|r| r.rflags & RFLAGS_IF == 0),
        Ok(kvm_bindings::KVM_MP_STATE_UNINITIALIZED | kvm_bindings::KVM_MP_STATE_INIT_RECEIVED) => true,
        _ => false,
    }
}

/// Completes a port or MMIO read the guest is waiting for (KVM finishes it only on the next
/// KVM_RUN, which `immediate_exit` returns from before the guest runs), then reads the state.
fn save_own_state(fd: &mut VcpuFd, msr_list: &[u32]) -> Result<VcpuState, String> {
    fd.set_kvm_immediate_exit(1);
    let r = fd.run().map(|_| ()).map_err(|e| e.errno());
    fd.set_kvm_immediate_exit(0);
    match r {
        Err(libc::EINTR) | Ok(()) => {}
        Err(e) => return Err(format!("KVM_RUN to complete pending I/O failed: errno {e}")),
    }
    crate::snapshot::cpu::save(fd, msr_list).map_err(|e| crate::api::routes::error_chain(&e))
}

fn run_loop(id: u8, mut fd: VcpuFd, io: &Bus, mmio: &Bus, exit: &VmExit, control: &RunControl) {
    let mut first = true;
    loop {
        if exit.is_stopping() {
            return;
        }
        if control.pause_requested() {
            if control.probe.load(Ordering::SeqCst) {
                control.answer(halted_with_irqs_off(&fd));
            }
            if control.save_pending(id) {
                control.store_save(id, save_own_state(&mut fd, &control.msr_list));
                continue;
            }
            control.park(id);
            continue;
        }
        if first {
            first = false;
            log::debug!("vcpu-{id}: first KVM_RUN at {:?} after process start", crate::since_start());
        }
        match fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if !io.write(u64::from(port), data) {
                    log::trace!("vcpu-{id}: out {port:#x} unhandled");
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if !io.read(u64::from(port), data) {
                    log::trace!("vcpu-{id}: in {port:#x} unhandled");
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !mmio.read(addr, data) {
                    log::trace!("vcpu-{id}: mmio read {addr:#x} unhandled");
                    data.fill(0);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !mmio.write(addr, data) {
                    log::trace!("vcpu-{id}: mmio write {addr:#x} unhandled");
                }
            }
            Ok(VcpuExit::Hlt) => {
                // Only without an in-kernel LAPIC; ours has one. Treat like an idle spin.
                std::thread::yield_now();
            }
            Ok(VcpuExit::Shutdown) => {
                exit.request(ExitReason::TripleFault);
                return;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                exit.request(ExitReason::Error(format!("vcpu-{id}: KVM entry failed (reason {reason:#x}, cpu {cpu})")));
                return;
            }
            Ok(VcpuExit::InternalError) => {
                exit.request(ExitReason::Error(format!("vcpu-{id}: KVM internal error (KVM could not emulate a guest instruction)")));
                return;
            }
            Ok(other) => {
                exit.request(ExitReason::Error(format!("vcpu-{id}: unexpected exit {other:?}")));
                return;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
            }
            Err(e) => {
                exit.request(ExitReason::Error(format!("vcpu-{id}: KVM_RUN failed: {e}")));
                return;
            }
        }
    }
}
