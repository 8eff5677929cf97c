//! The balloon device on the event loop: queue notifications only.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Balloon;
use super::{DEFLATEQ, INFLATEQ, REPORTQ};
use crate::guest_warn;

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-balloon: cannot register an EventFd: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        let Some(q) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) else { return };
        let _ = self.queue_evts[q].read();
        if self.active.is_none() {
            self.metrics.early_notifications.inc();
            guest_warn!("virtio-balloon: queue {q} notified before the device is active");
            return;
        }
        match q {
            REPORTQ => self.process_reports(),
            INFLATEQ | DEFLATEQ => self.process_ignored(q),
            _ => {}
        }
    }
}
