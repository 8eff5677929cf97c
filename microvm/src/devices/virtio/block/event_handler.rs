//! The block device on the event loop: it only forwards queue notifications to the worker.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Block;
use crate::devices::virtio::VirtioDevice;
use crate::guest_warn;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-blk: cannot register the queue EventFd: {e}");
            }
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.queue_evts[0].read();
        if self.is_activated() {
            self.worker.kick();
        } else {
            self.metrics.early_notifications.inc();
            guest_warn!("virtio-blk: queue notified before the device is active");
        }
    }
}
