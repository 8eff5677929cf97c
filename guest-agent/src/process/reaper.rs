//! The reaper: the agent's main thread waits for every child (and, as PID 1, every orphan the
//! kernel hands it) and routes the exits of processes the agent started to their `Process`.
//! Exits of unknown pids (reparented orphans) are just reaped.
//!
//! Spawning happens while holding the table lock (`Reaper::lock`), so an exit can never be
//! reaped before its pid is registered.
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use super::{ExitInfo, Process};

/// pid → process waiting for its exit.
pub type Table = HashMap<i32, Arc<Process>>;

/// Routes child exits to processes.
#[derive(Default)]
pub struct Reaper {
    table: Mutex<Table>,
    spawned: Condvar,
}

impl Reaper {
    /// Locks the table; spawn and insert while holding it.
    pub fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the reaper after a spawn (it sleeps while there are no children).
    pub fn notify_spawned(&self) {
        self.spawned.notify_all();
    }

    /// Reaps forever. Run on the main thread.
    pub fn run(&self) -> ! {
        loop {
            match waitpid(None, Some(WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Exited(pid, code)) => self.exited(pid.as_raw(), ExitInfo::exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => self.exited(pid.as_raw(), ExitInfo::signaled(sig as i32)),
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(nix::Error::ECHILD) => {
                    let table = self.lock();
                    // Entries are only inserted under this lock, so a non-empty table means a
                    // child was forked after waitpid looked: try again at once.
                    if table.is_empty() {
                        // A spawn notifies; the timeout covers orphans handed to PID 1.
                        let _ = self.spawned.wait_timeout(table, Duration::from_millis(500));
                    }
                }
                Err(e) => {
                    log::error!("waitpid: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn exited(&self, pid: i32, info: ExitInfo) {
        let process = self.lock().remove(&pid);
        match process {
            Some(p) => {
                log::debug!("process {pid} (exec id {:?}) exited: {info:?}", p.exec_id);
                p.set_exited(info);
            }
            None => log::debug!("reaped orphan {pid}"),
        }
    }
}
