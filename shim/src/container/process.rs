//! One process of the container as containerd sees it: the init process (exec id "") or an
//! exec'd one; its state, exit status and stdio pumps.

use std::sync::{Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;

use crate::io::{Pumps, StdioPaths};

/// Exit status reported when the VM died under a process (as runc reports a process it could
/// not account for).
pub const VM_DIED_EXIT_STATUS: u32 = 255;

/// The mutable part of a process.
#[derive(Debug, Clone)]
pub struct ProcState {
    /// CREATED, RUNNING, STOPPED.
    pub status: Status,
    /// Pid in the guest (0 before it exists).
    pub pid: u32,
    /// Exit status (exit code or 128+signal) once stopped.
    pub exit_status: u32,
    /// When it exited.
    pub exited_at: Option<Timestamp>,
}

/// A process.
#[derive(Debug)]
pub struct Process {
    /// "" for the init process.
    pub exec_id: String,
    /// containerd's stdio for it.
    pub stdio: StdioPaths,
    /// For exec processes: the OCI `Process` JSON.
    pub spec_json: Vec<u8>,
    state: Mutex<ProcState>,
    cond: Condvar,
    pumps: Mutex<Option<Pumps>>,
}

impl Process {
    /// A process that does not run yet.
    pub fn new(exec_id: &str, stdio: StdioPaths, spec_json: Vec<u8>) -> Process {
        Process {
            exec_id: exec_id.into(),
            stdio,
            spec_json,
            state: Mutex::new(ProcState { status: Status::CREATED, pid: 0, exit_status: 0, exited_at: None }),
            cond: Condvar::new(),
            pumps: Mutex::new(None),
        }
    }

    /// A copy of the state.
    pub fn state(&self) -> ProcState {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the guest pid.
    pub fn set_pid(&self, pid: u32) {
        self.lock().pid = pid;
    }

    /// Marks the process running with `pid` (unless it already stopped).
    pub fn set_running(&self, pid: u32) {
        let mut s = self.lock();
        if s.status != Status::STOPPED {
            s.status = Status::RUNNING;
            s.pid = pid;
        }
    }

    /// Records the exit. Returns false if it was already recorded (first report wins).
    pub fn set_exited(&self, exit_status: u32, exited_at: Timestamp) -> bool {
        let mut s = self.lock();
        if s.status == Status::STOPPED {
            return false;
        }
        s.status = Status::STOPPED;
        s.exit_status = exit_status;
        s.exited_at = Some(exited_at);
        self.cond.notify_all();
        true
    }

    /// Whether it stopped.
    pub fn exited(&self) -> bool {
        self.lock().status == Status::STOPPED
    }

    /// Blocks until the process stopped; returns its final state.
    pub fn wait(&self) -> ProcState {
        let mut s = self.lock();
        while s.status != Status::STOPPED {
            s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.clone()
    }

    /// Stores the stdio pumps.
    pub fn set_pumps(&self, p: Pumps) {
        *self.pumps.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
    }

    /// The stdio pumps, once started.
    pub fn pumps(&self) -> Option<Pumps> {
        self.pumps.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Now as a protobuf timestamp.
pub fn now() -> Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32, ..Default::default() }
}

/// A guest timestamp (ns since the epoch) as protobuf; 0 means "unknown" and gives now.
pub fn from_unix_nanos(ns: u64) -> Timestamp {
    if ns == 0 {
        return now();
    }
    Timestamp { seconds: (ns / 1_000_000_000) as i64, nanos: (ns % 1_000_000_000) as i32, ..Default::default() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_exit_wins_and_wakes_waiters() {
        let p = Arc::new(Process::new("", StdioPaths::default(), Vec::new()));
        p.set_running(7);
        let p2 = p.clone();
        let h = std::thread::spawn(move || p2.wait());
        assert!(p.set_exited(137, from_unix_nanos(1_500_000_000)));
        assert!(!p.set_exited(255, now()));
        let s = h.join().unwrap();
        assert_eq!((s.status, s.pid, s.exit_status), (Status::STOPPED, 7, 137));
        assert_eq!(s.exited_at.unwrap().seconds, 1);
        p.set_running(9);
        assert_eq!(p.state().status, Status::STOPPED);
    }
}
