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
pub struct TestQueue<'a> {
    pub vq: MockSplitQueue<'a, GuestMemoryMmap>,
    next_slot: u16,
}

impl<'a> TestQueue<'a> {
    /// A queue of `size` entries whose rings start at `base`.
    pub fn new(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        Self {
            vq: MockSplitQueue::create(mem, GuestAddress(base), size),
            next_slot: 0,
        }
    }

    /// The device-side queue for the same rings.
    pub fn queue(&self) -> Queue {
        self.vq.create_queue::<Queue>().unwrap()
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
            self.vq
                .desc_table()
                .store(slot + i as u16, RawDescriptor::from(Descriptor::new(addr, len, flags, next)))
                .unwrap();
        }
        let idx = self.vq.avail().idx().load();
        self.vq.avail().ring().ref_at(idx as usize % 256).unwrap().store(slot);
        self.vq.avail().idx().store(idx.wrapping_add(1));
        self.next_slot = self.next_slot.max(slot + descs.len() as u16);
    }

    /// Entries in the used ring so far, as (head, len).
    pub fn used(&self) -> Vec<(u32, u32)> {
        let n = self.vq.used().idx().load();
        (0..n)
            .map(|i| {
                let e = self.vq.used().ring().ref_at(i as usize).unwrap().load();
                (e.id(), e.len())
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
