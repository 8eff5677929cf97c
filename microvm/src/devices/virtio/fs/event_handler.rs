//! The virtio-fs device on the event loop: backend work after activate and reset, the
//! backend's call EventFds, its socket (any event there means it hung up or misbehaved),
//! and queue notifications while the backend is gone.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Fs, Phase};

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in self.call_evts.iter().chain(std::iter::once(&self.control_evt)) {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-fs {}: cannot register an EventFd: {e}", self.cfg.tag);
            }
        }
        if let Some(fd) = self.backend.as_ref().map(|b| b.as_raw_fd()) {
            match ops.add(Events::new_raw(fd, EventSet::IN)) {
                Ok(()) => self.backend_registered = true,
                Err(e) => log::error!("virtio-fs {}: cannot watch the backend socket: {e}", self.cfg.tag),
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.control_evt.as_raw_fd() {
            let _ = self.control_evt.read();
            self.on_control(ops);
        } else if let Some(q) = self.call_evts.iter().position(|e| e.as_raw_fd() == fd) {
            let _ = self.call_evts[q].read();
            if self.relaying && self.phase == Phase::Running {
                self.relay_complete(q, ops);
            } else if let Some(active) = self.active.as_ref() {
                if let Err(e) = active.interrupt.signal_used_queue() {
                    log::error!("virtio-fs {}: cannot raise the interrupt: {e}", self.cfg.tag);
                }
                self.metrics.interrupts.inc();
            }
        } else if self.backend.as_ref().is_some_and(|b| b.as_raw_fd() == fd) {
            // The backend only ever answers requests, which are read where they are made.
            let why = if events.event_set().intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR) {
                "hung up"
            } else {
                "sent a message nobody asked for"
            };
            self.backend_lost(why, ops);
        } else if let Some(q) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) {
            let _ = self.queue_evts[q].read();
            if self.phase == Phase::Failed {
                self.metrics.kicks.inc();
                self.answer_with_errors(q);
            } else if self.relaying && self.phase == Phase::Running {
                self.metrics.kicks.inc();
                self.relay_forward(q);
            }
        } else {
            let _ = ops.remove(events);
        }
    }
}
