//! The block device and the VMM event loop: nothing to serve there. The queue's notification
//! EventFd is waited on by the disk's own I/O thread ([`super::worker`]), so a request costs
//! one thread wake-up and disk I/O never runs on the event loop.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::device::Block;

impl MutEventSubscriber for Block {
    fn init(&mut self, _ops: &mut EventOps) {}

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {}
}
