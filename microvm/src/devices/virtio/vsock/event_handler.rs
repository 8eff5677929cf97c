//! The vsock device on the event loop: queue notifications, the listener and host sockets.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Vsock;
use super::muxer::FdOp;
use super::{EVQ, RXQ, TXQ};
use crate::guest_warn;

impl Vsock {
    fn apply_fd_ops(&mut self, ops: &mut EventOps) {
        for op in self.muxer.fd_ops.drain(..) {
            let r = match op {
                FdOp::Add(fd, ev) => ops.add(Events::new_raw(fd, ev)),
                FdOp::Modify(fd, ev) => ops.modify(Events::new_raw(fd, ev)),
                FdOp::Remove(fd, stream) => {
                    let r = ops.remove(Events::new_raw(fd, EventSet::empty()));
                    drop(stream);
                    r
                }
            };
            if let Err(e) = r {
                log::error!("vsock: epoll registration change failed: {e}");
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in self.queue_evts.iter().chain(std::iter::once(&self.activate_evt)) {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("vsock: cannot register an EventFd: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            match ops.add(Events::new(&self.muxer.listener, EventSet::IN)) {
                // Still registered from before a reset: fine.
                Ok(()) | Err(event_manager::Error::FdAlreadyRegistered) => {}
                Err(e) => log::error!("vsock: cannot register the unix listener: {e}"),
            }
            self.process_rx();
        } else if let Some(q) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) {
            let _ = self.queue_evts[q].read();
            if self.active.is_none() {
                self.metrics.early_notifications.inc();
                guest_warn!("vsock: queue {q} notified before the device is active");
                return;
            }
            match q {
                TXQ => {
                    self.metrics.tx_kicks.inc();
                    self.process_tx();
                }
                RXQ => self.process_rx(),
                EVQ => {}
                _ => {}
            }
        } else if fd == self.muxer.listener.as_raw_fd() {
            if self.active.is_none() {
                // Reset: stop accepting until the driver is back; clients wait in the backlog.
                let _ = ops.remove(events);
                return;
            }
            self.muxer.accept();
        } else {
            self.muxer.handle_fd(fd, events.event_set(), &self.metrics);
            self.process_rx();
        }
        self.apply_fd_ops(ops);
    }
}
