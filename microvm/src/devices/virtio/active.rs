//! State every activated device holds: guest memory, the interrupt and its queues, with the
//! pop/validate/complete/notify steps shared by all devices.

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::chain::{Chain, ChainError};
use super::Interrupt;
use crate::guest_warn;
use crate::memory::GuestMemoryMmap;

/// A queue can no longer be used: the guest corrupted its rings.
#[derive(Debug, thiserror::Error)]
#[error("queue {queue} is broken")]
pub struct QueueBroken {
    /// Queue index.
    pub queue: usize,
    /// What virtio-queue reported.
    #[source]
    pub source: virtio_queue::Error,
}

/// A popped chain: its head index and the validation result.
pub type Popped = (u16, Result<Chain, ChainError>);

/// Guest memory, interrupt and queues of an activated device.
#[derive(Debug)]
pub struct Active {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// The queues, in device order.
    pub queues: Vec<Queue>,
    /// Set once the guest corrupted a ring; the device then stops processing until reset.
    pub broken: bool,
}

impl Active {
    /// Wraps the activation arguments.
    pub fn new(mem: GuestMemoryMmap, interrupt: Arc<Interrupt>, queues: Vec<Queue>) -> Self {
        Self { mem, interrupt, queues, broken: false }
    }

    /// Each queue's progress (for a snapshot).
    pub fn progress(&self) -> Vec<super::QueueProgress> {
        self.queues.iter().map(|q| super::QueueProgress { next_avail: q.next_avail(), next_used: q.next_used() }).collect()
    }

    /// Pops and validates the next chain of queue `q`. `Ok(None)`: the queue is empty.
    /// `Ok(Some(Err))`: a malformed chain (its head must still be completed). `Err`: the ring
    /// itself is corrupt; the device is marked broken.
    pub fn pop(&mut self, q: usize, max_descs: usize) -> Result<Option<Popped>, QueueBroken> {
        if self.broken {
            return Ok(None);
        }
        let mem = &self.mem;
        let Some(queue) = self.queues.get_mut(q) else {
            return Ok(None);
        };
        let mut next = Self::next_chain(queue, mem);
        if matches!(next, Ok(None)) {
            // Drained: ask the driver to notify at its next chain (with EVENT_IDX this moves
            // `avail_event` up to here; until then the driver does not notify), then look
            // again, since a chain may have arrived before the request was visible.
            match queue.enable_notification(mem) {
                Ok(true) => next = Self::next_chain(queue, mem),
                Ok(false) => {}
                Err(source) => next = Err(source),
            }
        }
        let next = match next {
            Ok(n) => n,
            Err(source) => {
                self.broken = true;
                guest_warn!("virtio: queue {q} is broken ({source}); device stops until reset");
                return Err(QueueBroken { queue: q, source });
            }
        };
        Ok(next.map(|c| {
            let head = c.head_index();
            (head, Chain::parse(c, mem, max_descs))
        }))
    }

    fn next_chain<'m>(queue: &mut Queue, mem: &'m GuestMemoryMmap) -> Result<Option<virtio_queue::DescriptorChain<&'m GuestMemoryMmap>>, virtio_queue::Error> {
        queue.iter(mem).map(|mut it| it.next())
    }

    /// Gives the chain last popped from queue `q` back, unused: the next `pop` returns it again.
    pub fn unpop(&mut self, q: usize) {
        if let Some(queue) = self.queues.get_mut(q) {
            queue.go_to_previous_position();
        }
    }

    /// Puts the chain `head` into the used ring with `len` bytes written.
    pub fn add_used(&mut self, q: usize, head: u16, len: u32) {
        let mem = &self.mem;
        if let Some(queue) = self.queues.get_mut(q) {
            if let Err(e) = queue.add_used(mem, head, len) {
                guest_warn!("virtio: cannot complete chain {head} on queue {q}: {e}");
                self.broken = true;
            }
        }
    }

    /// Raises the interrupt if the driver wants one for queue `q`; returns whether it did.
    pub fn notify(&mut self, q: usize) -> bool {
        let mem = &self.mem;
        let Some(queue) = self.queues.get_mut(q) else { return false };
        match queue.needs_notification(mem) {
            Ok(false) => false,
            // On error, notify anyway: a spurious interrupt is harmless.
            Ok(true) | Err(_) => {
                if let Err(e) = self.interrupt.signal_used_queue() {
                    log::error!("virtio: cannot raise interrupt: {e}");
                }
                true
            }
        }
    }

    /// Whether queue `q` has chains the device has not taken yet.
    pub fn has_available(&self, q: usize) -> bool {
        self.queues
            .get(q)
            .is_some_and(|queue| queue.avail_idx(&self.mem, std::sync::atomic::Ordering::Acquire).map(|idx| idx.0 != queue.next_avail()).unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::test_utils::{guest_mem, interrupt, TestQueue};

    const SIZE: u16 = 16;

    /// Where the device's used ring goes: apart from the mock's, which overlaps the end of
    /// its avail ring (and so `used_event`) for small queues.
    const USED: u64 = 0x5000;

    fn queue(tq: &TestQueue) -> Queue {
        let mut q = tq.queue();
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_event_idx(true);
        q
    }

    fn avail_event(mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(USED + 4 + 8 * u64::from(SIZE))).unwrap()
    }

    #[test]
    fn draining_a_queue_with_event_idx_asks_for_the_next_notification() {
        let mem = guest_mem();
        let mut tq = TestQueue::new(&mem, 0x1000, SIZE);
        tq.add(&[(0x8000, 16, false)]);
        tq.add(&[(0x9000, 16, false)]);
        let mut a = Active::new(mem.clone(), interrupt(), vec![queue(&tq)]);
        assert!(a.pop(0, 8).unwrap().is_some());
        assert!(a.pop(0, 8).unwrap().is_some());
        assert_eq!(avail_event(&mem), 0, "not moved while chains remain");
        assert!(a.pop(0, 8).unwrap().is_none());
        assert_eq!(avail_event(&mem), 2, "driver notifies when it adds chain 2");
        // A chain that arrives after the drain is found by the next pop.
        tq.add(&[(0xa000, 16, false)]);
        assert!(a.pop(0, 8).unwrap().is_some());
    }

    #[test]
    fn used_event_suppresses_interrupts_until_reached() {
        let mem = guest_mem();
        let mut tq = TestQueue::new(&mem, 0x1000, SIZE);
        for i in 0..3 {
            tq.add(&[(0x8000 + i * 0x100, 16, true)]);
        }
        let irq = interrupt();
        let mut a = Active::new(mem.clone(), irq.clone(), vec![queue(&tq)]);
        // The driver wants an interrupt once used entry 2 (the third) is written.
        let used_event = tq.vq.avail_addr().0 + 4 + 2 * u64::from(SIZE);
        mem.write_obj(2u16, GuestAddress(used_event)).unwrap();
        for _ in 0..2 {
            let (head, _) = a.pop(0, 8).unwrap().unwrap();
            a.add_used(0, head, 0);
            a.notify(0);
        }
        assert!(irq.event().read().is_err(), "no interrupt before used_event");
        let (head, _) = a.pop(0, 8).unwrap().unwrap();
        a.add_used(0, head, 0);
        a.notify(0);
        assert_eq!(irq.event().read().unwrap(), 1);
    }
}
