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
        Self {
            mem,
            interrupt,
            queues,
            broken: false,
        }
    }

    /// Pops and validates the next chain of queue `q`. `Ok(None)`: the queue is empty.
    /// `Ok(Some(Err))`: a malformed chain (its head must still be completed). `Err`: the ring
    /// itself is corrupt; the device is marked broken.
    pub fn pop(
        &mut self,
        q: usize,
        max_descs: usize,
    ) -> Result<Option<Popped>, QueueBroken> {
        if self.broken {
            return Ok(None);
        }
        let mem = &self.mem;
        let Some(queue) = self.queues.get_mut(q) else {
            return Ok(None);
        };
        let next = match queue.iter(mem) {
            Ok(mut it) => it.next(),
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

    /// Raises the interrupt if the driver wants one for queue `q`.
    pub fn notify(&mut self, q: usize) {
        let mem = &self.mem;
        let Some(queue) = self.queues.get_mut(q) else { return };
        match queue.needs_notification(mem) {
            Ok(false) => {}
            // On error, notify anyway: a spurious interrupt is harmless.
            Ok(true) | Err(_) => {
                if let Err(e) = self.interrupt.signal_used_queue() {
                    log::error!("virtio: cannot raise interrupt: {e}");
                }
            }
        }
    }

    /// Whether queue `q` has chains the device has not taken yet.
    pub fn has_available(&self, q: usize) -> bool {
        self.queues.get(q).is_some_and(|queue| {
            queue
                .avail_idx(&self.mem, std::sync::atomic::Ordering::Acquire)
                .map(|idx| idx.0 != queue.next_avail())
                .unwrap_or(false)
        })
    }
}
