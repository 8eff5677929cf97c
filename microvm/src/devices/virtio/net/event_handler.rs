//! The net device on the event loop: queue notifications and tap readiness.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Net;
use super::{RXQ, TXQ};
use crate::guest_warn;

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in self.queue_evts.iter().chain([&self.activate_evt, &self.hold.evt]) {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-net: cannot register an EventFd: {e}");
            }
        }
        if let Err(e) = ops.add(Events::new(&self.hold.timer, EventSet::IN)) {
            log::error!("virtio-net: cannot register the snapshot timer: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            self.apply_offload();
            if !self.backend_registered {
                // Edge-triggered: the device reads until EAGAIN whenever it has buffers, and
                // an unread frame must not keep the loop spinning while the guest has none.
                let ev = Events::new_raw(self.backend_fd(), EventSet::IN | EventSet::EDGE_TRIGGERED);
                match ops.add(ev) {
                    Ok(()) => self.backend_registered = true,
                    Err(e) => log::error!("virtio-net: cannot register the tap: {e}"),
                }
            }
            self.process_rx();
        } else if fd == self.hold.evt.as_raw_fd() {
            self.hold_started();
        } else if fd == self.hold.timer.as_raw_fd() {
            self.hold_tick();
        } else if fd == self.backend_fd() {
            self.backend_readable = true;
            self.process_rx();
        } else if let Some(q) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) {
            let _ = self.queue_evts[q].read();
            if self.active.is_none() {
                self.metrics.early_notifications.inc();
                guest_warn!("virtio-net: queue {q} notified before the device is active");
                return;
            }
            match q {
                RXQ => self.process_rx(),
                TXQ => self.process_tx(),
                _ => {}
            }
        }
    }
}
