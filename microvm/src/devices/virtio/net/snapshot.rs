//! The net device in a snapshot of the paused VM: its progress in each queue with nothing of
//! the guest's held, then a hold on guest memory until the guest runs again.
//!
//! Why the hold: the API thread asks every device for its progress first and writes guest
//! memory afterwards, while the event loop goes on. A frame from the tap delivered in between
//! would be in the saved memory (its used entry, its data in a buffer the snapshot gives
//! back) but not in the saved progress: the restored device would fill that buffer again
//! after the guest had taken it. So from [`Net::save_queues`] on, the device leaves guest
//! memory alone: frames wait in the tap, notifications wait.
//!
//! The hold ends once the guest has run again, which it can only do after the snapshot is
//! written (the API serves the resume after the snapshot request): the event loop raises the
//! device's interrupt and looks every [`THAW_POLL`] whether the guest has acknowledged it.
//! A VM that is never resumed (a template, killed after its snapshot) keeps the hold; a
//! guest that resets the device drops it.

use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::device::Net;
use super::{NetError, RXQ, TXQ};
use crate::devices::virtio::interrupt::INT_VRING;
use crate::devices::virtio::QueueProgress;

/// How often a held device looks whether the guest acknowledged its interrupt.
const THAW_POLL: Duration = Duration::from_millis(20);

/// The hold a snapshot puts on the device.
#[derive(Debug)]
pub(super) struct Hold {
    /// Set by a snapshot: the device leaves guest memory alone.
    pub(super) on: bool,
    /// Written by the API thread when the hold starts: the event loop raises the interrupt
    /// and starts looking for its acknowledgement.
    pub(super) evt: EventFd,
    /// Ticks every [`THAW_POLL`] while the hold is on (non-blocking).
    pub(super) timer: TimerFd,
}

impl Hold {
    pub(super) fn new(tap: &str) -> Result<Self, NetError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| NetError::EventFd(tap.to_string(), e))?;
        let timer = TimerFd::new().map_err(|e| NetError::TimerFd(tap.to_string(), e.into()))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&timer);
        // SAFETY: fcntl on the timer's own open descriptor; F_GETFL/F_SETFL take an int.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(NetError::TimerFd(tap.to_string(), std::io::Error::last_os_error()));
        }
        Ok(Self { on: false, evt, timer })
    }
}

impl Net {
    /// The progress of each queue for a snapshot, with the receive chains the device holds
    /// given back; starts the hold (see the module doc). Runs under the device lock, so no
    /// queue processing is half done.
    ///
    /// Transmit: [`Net::process_tx`] completes every chain it takes before it returns, so
    /// none is outstanding. Receive: without mergeable buffers every chain taken is filled,
    /// completed or given back (`unpop`) in the same call; with them the held chains are the
    /// last ones taken, in order (see [`super::rx`]), and rewinding the next available entry
    /// by their count gives exactly them back. Both are checked, not assumed: the chains
    /// taken and not completed (next available minus next used) must be the held ones.
    ///
    /// A frame read from the tap that waits for receive buffers is not saved: the restored
    /// VM never gets it, as if the network had dropped it (this VM still gets it after the
    /// hold). Frames in the tap stay there for this VM; the restored one has a new tap.
    pub(super) fn save_queues(&mut self) -> Result<Vec<QueueProgress>, String> {
        let tap = &self.cfg.tap;
        let Some(active) = self.active.as_ref() else { return Ok(Vec::new()) };
        if active.broken {
            return Err(format!("virtio-net on tap {tap}: the guest corrupted a queue; the device waits for the guest to reset it"));
        }
        let mut progress = active.progress();
        let (Some(rx), Some(tx)) = (progress.get(RXQ).copied(), progress.get(TXQ).copied()) else {
            return Err(format!("virtio-net on tap {tap}: {} queues, not 2", progress.len()));
        };
        let tx_open = tx.next_avail.wrapping_sub(tx.next_used);
        if tx_open != 0 {
            return Err(format!("virtio-net on tap {tap}: {tx_open} transmit chains taken and not completed"));
        }
        let rx_open = rx.next_avail.wrapping_sub(rx.next_used);
        let held = self.held.len();
        match self.held.rewind(rx.next_avail) {
            Some(n) if n == rx_open => {
                if let Some(p) = progress.get_mut(RXQ) {
                    p.next_avail = rx.next_avail.wrapping_sub(n);
                }
            }
            Some(_) => return Err(format!("virtio-net on tap {tap}: {rx_open} receive chains taken and not completed, {held} of them held")),
            None => {
                return Err(format!(
                    "virtio-net on tap {tap}: the {held} receive chains it holds are not the last ones taken (a malformed one was completed after them); try again after some traffic"
                ))
            }
        }
        self.hold.evt.write(1).map_err(|e| format!("virtio-net on tap {tap}: cannot hold the device for the snapshot: {e}"))?;
        self.hold.on = true;
        Ok(progress)
    }

    /// The hold started (event loop): raises the interrupt the guest acknowledges when it
    /// runs again, and starts looking for that.
    pub(super) fn hold_started(&mut self) {
        let _ = self.hold.evt.read();
        if !self.hold.on {
            return;
        }
        if let Some(a) = &self.active {
            if let Err(e) = a.interrupt.signal_used_queue() {
                log::error!("virtio-net: cannot raise the interrupt of tap {}: {e}", self.cfg.tap);
            }
        }
        if let Err(e) = self.hold.timer.reset(THAW_POLL, Some(THAW_POLL)) {
            log::error!("virtio-net: cannot start the timer of tap {}: {e}", self.cfg.tap);
        }
    }

    /// A tick of the hold's timer (event loop): once the guest has acknowledged the
    /// interrupt, or reset the device, the hold ends and the device catches up on the
    /// frames and notifications that waited. Returns whether the hold ended.
    pub(super) fn hold_tick(&mut self) -> bool {
        let _ = self.hold.timer.wait();
        let acked = self.active.as_ref().is_none_or(|a| a.interrupt.status() & INT_VRING == 0);
        if self.hold.on && !acked {
            return false;
        }
        if let Err(e) = self.hold.timer.clear() {
            log::error!("virtio-net: cannot stop the timer of tap {}: {e}", self.cfg.tap);
        }
        let was_on = std::mem::replace(&mut self.hold.on, false);
        if was_on {
            self.process_tx();
            self.process_rx();
        }
        was_on
    }
}
