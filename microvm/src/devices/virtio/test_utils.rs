//! Helpers for device unit tests: guest memory, mock queues and chains.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::Interrupt;
use crate::memory::GuestMemoryMmap;

/// Descriptor flag: the chain continues.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const F_WRITE: u16 = 2;

/// 16 MiB of guest memory at address 0.
pub fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

/// A driver-side queue in guest memory, with chains written at increasing table slots.
///
/// The used ring is placed after the whole avail ring: virtio-queue's mock (0.18) puts it at
/// `avail ring start + queue size` bytes, inside the avail ring, so a device's used-ring
/// writes would land on avail entries from half the queue on (seen as bogus head indexes
/// once more than 128 chains of a 256-entry queue were in use).
pub struct TestQueue<'a> {
    pub vq: MockSplitQueue<'a, GuestMemoryMmap>,
    mem: &'a GuestMemoryMmap,
    size: u16,
    used_addr: u64,
    next_slot: u16,
}

impl<'a> TestQueue<'a> {
    /// A queue of `size` entries whose rings start at `base`.
    pub fn new(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        let vq = MockSplitQueue::create(mem, GuestAddress(base), size);
        // flags, idx, ring, used_event; then the used ring, 4-byte aligned.
        let avail_end = vq.avail_addr().0 + 4 + 2 * u64::from(size) + 2;
        let used_addr = (avail_end + 3) & !3;
        mem.write_slice(&[0u8; 4], GuestAddress(used_addr)).unwrap();
        Self { vq, mem, size, used_addr, next_slot: 0 }
    }

    /// The device-side queue for the same rings.
    pub fn queue(&self) -> Queue {
        use virtio_queue::QueueT;
        let mut q = self.vq.create_queue::<Queue>().unwrap();
        q.set_used_ring_address(Some(self.used_addr as u32), Some((self.used_addr >> 32) as u32));
        assert!(q.is_valid(self.mem), "test queue layout");
        q
    }

    /// Adds one chain of `(addr, len, writable)` buffers; returns its head index.
    pub fn add(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_slot;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let last = i + 1 == bufs.len();
                let mut flags = if w { F_WRITE } else { 0 };
                if !last {
                    flags |= F_NEXT;
                }
                let next = if last { 0 } else { head + i as u16 + 1 };
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
            })
            .collect();
        self.vq.add_desc_chains(&descs, head).unwrap();
        self.next_slot += bufs.len() as u16;
        head
    }

    /// Adds raw descriptors at `slot` (for malformed chains) and makes `slot` available.
    pub fn add_raw(&mut self, slot: u16, descs: &[(u64, u32, u16, u16)]) {
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            self.vq.desc_table().store(slot + i as u16, RawDescriptor::from(Descriptor::new(addr, len, flags, next))).unwrap();
        }
        let idx = self.vq.avail().idx().load();
        self.vq.avail().ring().ref_at(usize::from(idx % self.size)).unwrap().store(slot);
        self.vq.avail().idx().store(idx.wrapping_add(1));
        self.next_slot = self.next_slot.max(slot + descs.len() as u16);
    }

    /// The used ring's index: how many chains the device has completed (wrapping).
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used_addr + 2)).unwrap()
    }

    /// Entries in the used ring so far, as (head, len); at most the last `size` of them.
    pub fn used(&self) -> Vec<(u32, u32)> {
        let n = self.used_idx();
        let first = n.saturating_sub(self.size);
        (first..n)
            .map(|i| {
                let at = self.used_addr + 4 + 8 * u64::from(i % self.size);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                (id, len)
            })
            .collect()
    }
}

/// A fresh interrupt.
pub fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new().unwrap())
}

/// Writes `data` into guest memory at `addr`.
pub fn put(mem: &GuestMemoryMmap, addr: u64, data: &[u8]) {
    mem.write_slice(data, GuestAddress(addr)).unwrap();
}

/// Reads `len` bytes of guest memory at `addr`.
pub fn get(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// Checks that config-space writes the guest makes, in range, at its end, far past it and
/// at offsets that overflow, leave the device's config space as it was.
pub fn assert_config_writes_ignored(dev: &mut dyn super::VirtioDevice, len: u64) {
    let read_all = |dev: &dyn super::VirtioDevice| {
        let mut b = vec![0u8; len as usize + 8];
        dev.read_config(0, &mut b);
        b
    };
    let before = read_all(dev);
    for offset in [0, len.saturating_sub(1), len, 0x1000, u64::MAX - 3, u64::MAX] {
        dev.write_config(offset, &[0xa5; 4]);
        dev.write_config(offset, &[0xa5; 1]);
    }
    assert_eq!(read_all(dev), before, "config space changed by guest writes");
}

/// Runs `dev` on an event loop, notifies its queue `q` before any driver activated it, and
/// hands the device back once the loop has handled that notification.
pub fn notify_before_activation<D>(dev: D, q: usize) -> D
where
    D: event_manager::MutEventSubscriber + super::VirtioDevice,
{
    use event_manager::{EventManager, SubscriberOps};
    let mut em = EventManager::<D>::new().unwrap();
    let id = em.add_subscriber(dev);
    em.subscriber_mut(id).unwrap().queue_events()[q].write(1).unwrap();
    assert!(em.run_with_timeout(5000).unwrap() >= 1, "the event loop saw no notification");
    em.remove_subscriber(id).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::active::Active;

    #[test]
    fn used_ring_does_not_overlap_the_avail_ring() {
        let mem = guest_mem();
        let mut tq = TestQueue::new(&mem, 0x1000, 256);
        let mut a = Active::new(mem.clone(), interrupt(), vec![tq.queue()]);
        // More chains in flight than half the queue, completed in two rounds.
        for round in 0..2u16 {
            for i in 0..200u16 {
                tq.add_raw(i, &[(0x10_0000 + u64::from(i) * 0x100, 16, F_WRITE, 0)]);
            }
            for i in 0..200u16 {
                let (head, chain) = a.pop(0, 8).unwrap().unwrap();
                assert_eq!(head, i, "round {round}");
                assert!(chain.is_ok());
                a.add_used(0, head, u32::from(i));
            }
            assert!(a.pop(0, 8).unwrap().is_none());
        }
        assert_eq!(tq.used_idx(), 400);
        let used = tq.used();
        assert_eq!(used.len(), 256);
        assert_eq!(used[255], (199, 199));
    }
}
