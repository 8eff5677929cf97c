//! Relaying the queues for a VM whose RAM the backend cannot map: RAM mapped copy-on-write
//! from a template's memory file ([`crate::memory::map_private`]) is private to husk-vmm, so
//! virtiofsd, which maps guest memory from the descriptors of the memory table, would see the
//! template's bytes and write into the template. Instead husk-vmm serves the guest's queues
//! itself and hands each request on through a second, small set of rings in a memfd of its own
//! (the "shadow" memory, the only memory the backend is given), as QEMU does for vDPA:
//!
//! - a guest kick: each request is taken from the guest's queue, its readable bytes are
//!   copied into a buffer in the shadow pool, and a chain of at most two descriptors (the
//!   request, then room for as many reply bytes as the guest gave) goes on the shadow ring;
//! - the backend's call: each used entry's reply bytes (at most what the guest gave) are
//!   copied into the guest's writable buffers, and the guest's request is completed with that
//!   length and its interrupt raised;
//! - the backend gone: every request it held is answered with `EIO` here, exactly, since
//!   husk-vmm knows which it held (no guess from the used index as in [`super::failover`]).
//!
//! Each queue has a buffer pool of its own, so a queue waiting for room is always woken by a
//! completion on that same queue. A request larger than its queue's pool is malformed (FUSE
//! requests carry at most 1 MiB of data); it is completed with no reply bytes. One that does
//! not fit while others are in flight waits in the guest's queue until a completion frees
//! room. A pool that drained after holding more than [`KEEP_BYTES`] gives its pages back to
//! the host (a hole punched in the memfd). Written here rather than taken from a crate:
//! rust-vmm has the device side of virtqueues (virtio-queue) but no driver side.

use std::sync::atomic::{fence, Ordering};

use nix::fcntl::{fallocate, FallocateFlags};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::FsMetrics;
use super::{FsError, FUSE_OUT_HEADER_LEN, HIPRIO_QUEUE, NUM_QUEUES, QUEUE_SIZE};
use crate::devices::virtio::active::Active;
use crate::devices::virtio::chain::{write_to, Desc, MAX_CHAIN_DESCS};
use crate::devices::virtio::{feature, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use crate::guest_warn;
use crate::memory::{create_shared_memory, GuestMemoryMmap};

/// Name of the shadow memory's memfd (`/memfd:husk-fs-relay` in /proc/PID/maps).
const MEMFD_NAME: &str = "husk-fs-relay";

/// Size of each shadow ring. Each request takes two descriptors.
pub const RING_SIZE: u16 = 256;
/// Requests in flight per queue at most.
const SLOTS: u16 = RING_SIZE / 2;
const PAGE: u64 = 4096;
/// One queue's rings: the descriptor table (16 bytes each), the avail ring and the used ring,
/// a page each.
const RING_AREA: u64 = 3 * PAGE;
/// Where the buffer pools start in the shadow memory.
const POOL_START: u64 = 0x1_0000;
/// The request queue's pool: room for at least 15 requests of FUSE's largest (1 MiB of data
/// and headers) at once. Its pages exist only once used; a pool is used from its start.
pub const POOL_BYTES: u64 = 16 << 20;
/// The high-priority queue's pool (FORGET, BATCH_FORGET and INTERRUPT are small).
pub const HIPRIO_POOL_BYTES: u64 = 1 << 20;
/// The shadow memory: rings, then the high-priority queue's pool, then the request queue's.
pub const SHADOW_BYTES: u64 = POOL_START + HIPRIO_POOL_BYTES + POOL_BYTES;
/// A drained pool keeps this much of its start resident; more is given back.
pub const KEEP_BYTES: u64 = 256 << 10;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// Features the backend is not given in relay mode: the shadow rings use neither indirect
/// descriptors nor event indices (the guest's rings may; husk-vmm handles those).
pub const NOT_RELAYED_FEATURES: u64 = feature(VIRTIO_RING_F_INDIRECT_DESC) | feature(VIRTIO_RING_F_EVENT_IDX);

const _: () = assert!(NUM_QUEUES as u64 * RING_AREA <= POOL_START);
const _: () = assert!(16 * RING_SIZE as u64 <= PAGE && 6 + 8 * RING_SIZE as u64 <= PAGE);

/// A request the backend holds.
#[derive(Debug)]
struct InFlight {
    /// The guest's chain.
    head: u16,
    /// Where its reply goes in guest memory.
    writable: Vec<Desc>,
    /// Its buffer in its queue's pool: first page and page count.
    page: usize,
    pages: usize,
    /// Bytes of request and of reply room.
    rlen: u64,
    wlen: u64,
}

/// One shadow ring, as its driver sees it.
#[derive(Debug)]
struct Ring {
    /// Guest address (in the shadow memory) of the descriptor table; the avail and used
    /// rings follow a page apart.
    base: u64,
    /// The avail index published next.
    next_avail: u16,
    /// The used index up to which completions were taken.
    last_used: u16,
    /// Free slots (slot `s` owns descriptors `2s` and `2s+1`).
    free: Vec<u16>,
    /// What each slot holds.
    slots: Vec<Option<InFlight>>,
}

impl Ring {
    fn new(q: usize) -> Self {
        Ring { base: q as u64 * RING_AREA, next_avail: 0, last_used: 0, free: (0..SLOTS).rev().collect(), slots: (0..SLOTS).map(|_| None).collect() }
    }
    fn avail(&self) -> u64 {
        self.base + PAGE
    }
    fn used(&self) -> u64 {
        self.base + 2 * PAGE
    }
}

/// One queue's buffer pool: its pages, first fit.
#[derive(Debug)]
struct Pool {
    /// Where it starts in the shadow memory.
    start: u64,
    used: Vec<bool>,
    /// One past the highest page used since the pool was last given back.
    high: usize,
}

impl Pool {
    fn new(start: u64, bytes: u64) -> Self {
        Pool { start, used: vec![false; (bytes / PAGE) as usize], high: 0 }
    }

    /// The shadow address of page `page`.
    fn addr(&self, page: usize) -> u64 {
        self.start + page as u64 * PAGE
    }

    /// The first run of `n` free pages, taken.
    fn alloc(&mut self, n: usize) -> Option<usize> {
        let mut run = 0;
        for i in 0..self.used.len() {
            run = if self.used[i] { 0 } else { run + 1 };
            if run == n {
                let first = i + 1 - n;
                self.used[first..=i].iter_mut().for_each(|u| *u = true);
                self.high = self.high.max(i + 1);
                return Some(first);
            }
        }
        None
    }

    fn free(&mut self, first: usize, n: usize) {
        if let Some(pages) = self.used.get_mut(first..first + n) {
            pages.iter_mut().for_each(|u| *u = false);
        }
    }

    /// When nothing is allocated and more than [`KEEP_BYTES`] was used since the last time:
    /// the range past those bytes that was used, as (shadow address, length), to give back.
    fn take_unused(&mut self) -> Option<(u64, u64)> {
        let keep = (KEEP_BYTES / PAGE) as usize;
        if self.high <= keep || self.used.iter().any(|&u| u) {
            return None;
        }
        let range = (self.addr(keep), (self.high - keep) as u64 * PAGE);
        self.high = keep;
        Some(range)
    }
}

/// The backend broke the shadow rings' protocol.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The used index moved by more than the ring holds.
    #[error("moved the used index of queue {queue} from {from} to {to}")]
    UsedIndex {
        /// Queue index.
        queue: usize,
        /// Where it was.
        from: u16,
        /// Where it went.
        to: u16,
    },
    /// A used entry names no request the backend holds.
    #[error("completed descriptor {id} of queue {queue}, which it does not hold")]
    UnknownId {
        /// Queue index.
        queue: usize,
        /// The id it gave.
        id: u32,
    },
    /// The shadow memory could not be read or written.
    #[error("the shadow rings of queue {queue} cannot be accessed")]
    Memory {
        /// Queue index.
        queue: usize,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// The relay of one device: the shadow memory, its rings and pool, and the backend's kick
/// EventFds (the guest's kicks come to husk-vmm).
#[derive(Debug)]
pub struct Relay {
    mem: GuestMemoryMmap,
    kicks: Vec<EventFd>,
    rings: Vec<Ring>,
    /// Each queue's pool.
    pools: Vec<Pool>,
}

/// The pools of a fresh relay.
fn pools() -> Vec<Pool> {
    (0..NUM_QUEUES)
        .map(|q| match q {
            HIPRIO_QUEUE => Pool::new(POOL_START, HIPRIO_POOL_BYTES),
            _ => Pool::new(POOL_START + HIPRIO_POOL_BYTES, POOL_BYTES),
        })
        .collect()
}

impl Relay {
    /// Creates the shadow memory (a sealed memfd; no page is allocated until used) and the
    /// backend's kick EventFds.
    pub fn new() -> Result<Self, FsError> {
        let mem = create_shared_memory(SHADOW_BYTES, MEMFD_NAME).map_err(FsError::Shadow)?;
        let kicks = (0..NUM_QUEUES).map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)).collect::<Result<Vec<_>, _>>()?;
        Ok(Relay { mem, kicks, rings: (0..NUM_QUEUES).map(Ring::new).collect(), pools: pools() })
    }

    /// The memory the backend is given.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The backend's kick EventFds.
    pub fn kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// Forgets what the backend held (the driver reset the device: those requests are no
    /// longer the guest's, and their buffers may be anything now).
    pub fn forget(&mut self) {
        self.rings = (0..NUM_QUEUES).map(Ring::new).collect();
        for p in &mut self.pools {
            p.used.iter_mut().for_each(|u| *u = false);
        }
    }

    /// Empties the rings and the pools for a new activation (nothing in flight is kept: the
    /// backend's rings were stopped or it is gone) and returns the shadow queues to hand the
    /// backend.
    pub fn restart(&mut self) -> Result<Vec<Queue>, RelayError> {
        self.forget();
        let mut queues = Vec::with_capacity(NUM_QUEUES);
        for q in 0..NUM_QUEUES {
            let ring = &self.rings[q];
            let zero = [0u8; PAGE as usize];
            for page in 0..3 {
                self.mem.write_slice(&zero, GuestAddress(ring.base + page * PAGE)).map_err(|source| RelayError::Memory { queue: q, source })?;
            }
            let mut queue = Queue::new(RING_SIZE).map_err(|_| RelayError::Memory { queue: q, source: vm_memory::GuestMemoryError::InvalidBackendAddress })?;
            queue.set_size(RING_SIZE);
            queue.set_desc_table_address(Some(ring.base as u32), Some((ring.base >> 32) as u32));
            queue.set_avail_ring_address(Some(ring.avail() as u32), Some((ring.avail() >> 32) as u32));
            queue.set_used_ring_address(Some(ring.used() as u32), Some((ring.used() >> 32) as u32));
            queue.set_ready(true);
            queues.push(queue);
        }
        Ok(queues)
    }

    /// Whether queue `q`'s backend holds requests.
    pub fn in_flight(&self, q: usize) -> usize {
        self.rings.get(q).map_or(0, |r| usize::from(SLOTS) - r.free.len())
    }

    /// Moves the requests waiting in the guest's queue `q` onto its shadow ring (at most one
    /// queue's worth), kicks the backend if any went, and completes malformed ones at once.
    /// Returns whether the guest's queue still has requests that could be taken now (the
    /// caller comes back for them through the event loop); requests that wait for room are
    /// taken again after a completion.
    pub fn forward(&mut self, active: &mut Active, q: usize, metrics: &FsMetrics) -> bool {
        let (mut sent, mut completed, mut taken) = (false, false, 0u16);
        while taken < QUEUE_SIZE {
            taken += 1;
            let Some(ring) = self.rings.get(q) else { break };
            if ring.free.is_empty() {
                // Room comes with the next completion, which forwards again.
                taken = 0;
                break;
            }
            let Ok(Some((head, chain))) = active.pop(q, MAX_CHAIN_DESCS) else {
                taken = 0;
                break;
            };
            let chain = match chain {
                Ok(c) => c,
                Err(e) => {
                    guest_warn!("virtio-fs: malformed request on queue {q}: {e}");
                    metrics.errors.inc();
                    active.add_used(q, head, 0);
                    completed = true;
                    continue;
                }
            };
            let (rlen, wlen) = (chain.readable_len(), chain.writable_len());
            // Each part starts on a page of its own; both are bounded by the chain's length.
            let pages = (rlen.div_ceil(PAGE) + wlen.div_ceil(PAGE)).max(1);
            let pool = &mut self.pools[q];
            if pages > pool.used.len() as u64 {
                guest_warn!(
                    "virtio-fs: request {head} on queue {q} has {rlen} bytes and room for {wlen}, more than the {} relayed at once",
                    pool.used.len() as u64 * PAGE
                );
                metrics.errors.inc();
                active.add_used(q, head, 0);
                completed = true;
                continue;
            }
            let pages = pages as usize;
            let Some(page) = pool.alloc(pages) else {
                // Waits for a completion to free room (something is in flight: the pool
                // holds any single request), which forwards again.
                active.unpop(q);
                taken = 0;
                break;
            };
            let at = pool.addr(page);
            if let Err(e) = copy_in(&active.mem, &chain.readable, &self.mem, at) {
                guest_warn!("virtio-fs: cannot copy request {head} of queue {q}: {e}");
                metrics.errors.inc();
                pool.free(page, pages);
                active.add_used(q, head, 0);
                completed = true;
                continue;
            }
            let flight = InFlight { head, writable: chain.writable, page, pages, rlen, wlen };
            match self.publish(q, flight) {
                Ok(()) => {
                    metrics.relayed_requests.inc();
                    sent = true;
                }
                Err((e, flight)) => {
                    log::error!("virtio-fs: cannot put a request on shadow ring {q}: {e}");
                    self.pools[q].free(flight.page, flight.pages);
                    active.add_used(q, flight.head, 0);
                    completed = true;
                }
            }
        }
        // A whole queue's worth taken: the caller comes back for the rest.
        let more = taken == QUEUE_SIZE && active.has_available(q);
        if sent {
            if let Err(e) = self.kicks[q].write(1) {
                log::error!("virtio-fs: cannot kick the backend's queue {q}: {e}");
            }
        }
        if completed {
            active.notify(q);
        }
        more
    }

    /// Writes `f`'s descriptors into a free slot of ring `q` and makes it available.
    fn publish(&mut self, q: usize, f: InFlight) -> Result<(), (RelayError, InFlight)> {
        let ring = &mut self.rings[q];
        let Some(slot) = ring.free.pop() else {
            return Err((RelayError::UnknownId { queue: q, id: u32::from(SLOTS) }, f));
        };
        let desc = 2 * slot;
        let at = self.pools[q].addr(f.page);
        let reply_at = at + f.rlen.div_ceil(PAGE) * PAGE;
        let mut entries: Vec<(u64, u32, u16)> = Vec::with_capacity(2);
        if f.rlen > 0 {
            entries.push((at, f.rlen as u32, 0));
        }
        if f.wlen > 0 {
            entries.push((reply_at, f.wlen as u32, VRING_DESC_F_WRITE));
        }
        if entries.is_empty() {
            // A chain of empty buffers: one empty readable descriptor.
            entries.push((at, 0, 0));
        }
        let n = entries.len();
        let mem = &self.mem;
        let write = || -> Result<(), vm_memory::GuestMemoryError> {
            for (i, (addr, len, flags)) in entries.iter().enumerate() {
                let next = if i + 1 < n { desc + 1 } else { 0 };
                let flags = if i + 1 < n { flags | VRING_DESC_F_NEXT } else { *flags };
                let mut d = [0u8; 16];
                d[0..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..16].copy_from_slice(&next.to_le_bytes());
                mem.write_slice(&d, GuestAddress(ring.base + 16 * u64::from(desc + i as u16)))?;
            }
            let idx = ring.next_avail;
            mem.write_obj(desc, GuestAddress(ring.avail() + 4 + 2 * u64::from(idx % RING_SIZE)))?;
            fence(Ordering::Release);
            mem.store(idx.wrapping_add(1), GuestAddress(ring.avail() + 2), Ordering::Release)
        };
        if let Err(source) = write() {
            ring.free.push(slot);
            return Err((RelayError::Memory { queue: q, source }, f));
        }
        ring.next_avail = ring.next_avail.wrapping_add(1);
        ring.slots[usize::from(slot)] = Some(f);
        Ok(())
    }

    /// Takes the backend's completions on ring `q`: copies each reply into the guest's
    /// buffers and completes the guest's request; raises the guest's interrupt if it wants
    /// one, then forwards requests that waited for room. Returns whether the guest's queue
    /// has more to forward now (see [`Relay::forward`]). An error means the backend broke the
    /// ring's protocol (the caller treats it as gone); what it completed before is delivered.
    pub fn complete(&mut self, active: &mut Active, q: usize, metrics: &FsMetrics) -> Result<bool, RelayError> {
        let taken = self.take_used(active, q, metrics);
        if matches!(taken, Ok(true)) {
            return Ok(self.forward(active, q, metrics));
        }
        taken.map(|_| false)
    }

    /// Completes the guest's requests whose replies are in ring `q`'s used ring, and notifies
    /// the guest if any was (also when the ring turns out broken midway). Returns whether any
    /// was.
    fn take_used(&mut self, active: &mut Active, q: usize, metrics: &FsMetrics) -> Result<bool, RelayError> {
        let mut any = false;
        let result = self.take_used_entries(active, q, metrics, &mut any);
        if any {
            if active.notify(q) {
                metrics.interrupts.inc();
            }
            self.give_back(q);
        }
        result.map(|()| any)
    }

    fn take_used_entries(&mut self, active: &mut Active, q: usize, metrics: &FsMetrics, any: &mut bool) -> Result<(), RelayError> {
        let (Some(ring), Some(pool)) = (self.rings.get_mut(q), self.pools.get_mut(q)) else { return Ok(()) };
        let mem = &self.mem;
        let used: u16 = mem.load(GuestAddress(ring.used() + 2), Ordering::Acquire).map_err(|source| RelayError::Memory { queue: q, source })?;
        let count = used.wrapping_sub(ring.last_used);
        if count > RING_SIZE {
            return Err(RelayError::UsedIndex { queue: q, from: ring.last_used, to: used });
        }
        for _ in 0..count {
            let entry = ring.used() + 4 + 8 * u64::from(ring.last_used % RING_SIZE);
            let id: u32 = mem.read_obj(GuestAddress(entry)).map_err(|source| RelayError::Memory { queue: q, source })?;
            let len: u32 = mem.read_obj(GuestAddress(entry + 4)).map_err(|source| RelayError::Memory { queue: q, source })?;
            let slot = id.is_multiple_of(2).then_some(id / 2).and_then(|s| u16::try_from(s).ok()).filter(|&s| s < SLOTS);
            let Some((slot, f)) = slot.and_then(|s| ring.slots[usize::from(s)].take().map(|f| (s, f))) else {
                return Err(RelayError::UnknownId { queue: q, id });
            };
            ring.last_used = ring.last_used.wrapping_add(1);
            ring.free.push(slot);
            let n = u64::from(len).min(f.wlen);
            let reply_at = pool.addr(f.page) + f.rlen.div_ceil(PAGE) * PAGE;
            let written = match copy_out(mem, reply_at, &active.mem, &f.writable, n) {
                Ok(()) => n as u32,
                Err(e) => {
                    guest_warn!("virtio-fs: cannot copy the reply of request {} on queue {q}: {e}", f.head);
                    metrics.errors.inc();
                    0
                }
            };
            pool.free(f.page, f.pages);
            active.add_used(q, f.head, written);
            *any = true;
        }
        Ok(())
    }

    /// Gives queue `q`'s pool pages back to the host once it drained after a burst.
    fn give_back(&mut self, q: usize) {
        let Some((addr, len)) = self.pools.get_mut(q).and_then(Pool::take_unused) else { return };
        let Some(region) = vm_memory::GuestMemoryBackend::find_region(&self.mem, GuestAddress(addr)) else { return };
        let Some(fo) = vm_memory::GuestMemoryRegion::file_offset(region) else { return };
        let at = fo.start() + (addr - vm_memory::GuestMemoryRegion::start_addr(region).0);
        let (Ok(at), Ok(len)) = (i64::try_from(at), i64::try_from(len)) else { return };
        if let Err(e) = fallocate(fo.file(), FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE, at, len) {
            log::warn!("virtio-fs: cannot give the relay's unused buffer pages back: {e}");
        }
    }

    /// The backend is gone. Delivers the replies it completed before it went, then answers
    /// every request it still held with `EIO` (with the request's `unique`), and forgets
    /// them.
    pub fn fail(&mut self, active: &mut Active, metrics: &FsMetrics) {
        for q in 0..self.rings.len() {
            if let Err(e) = self.take_used(active, q, metrics) {
                log::warn!("virtio-fs: the replies of a backend that is gone cannot all be read: {e}");
            }
        }
        self.fail_in_flight(active, metrics);
    }

    /// Answers every request the backend held with `EIO` (with the request's `unique`), and
    /// forgets them.
    fn fail_in_flight(&mut self, active: &mut Active, metrics: &FsMetrics) {
        for q in 0..self.rings.len() {
            let mut any = false;
            for slot in 0..usize::from(SLOTS) {
                let Some(f) = self.rings[q].slots[slot].take() else { continue };
                self.rings[q].free.push(slot as u16);
                let at = self.pools[q].addr(f.page);
                let mut head = [0u8; 16];
                let len = if f.rlen >= 16 && f.wlen >= FUSE_OUT_HEADER_LEN as u64 && self.mem.read_slice(&mut head, GuestAddress(at)).is_ok() {
                    write_to(&active.mem, &f.writable, 0, &super::failover::eio_reply(&head)).map_or(0, |_| FUSE_OUT_HEADER_LEN as u32)
                } else {
                    0
                };
                self.pools[q].free(f.page, f.pages);
                active.add_used(q, f.head, len);
                metrics.failed_requests.inc();
                any = true;
            }
            if any {
                active.notify(q);
            }
        }
    }
}

/// Copies the bytes of `descs` in `guest` to `at` in `shadow`.
fn copy_in(guest: &GuestMemoryMmap, descs: &[Desc], shadow: &GuestMemoryMmap, at: u64) -> Result<(), vm_memory::GuestMemoryError> {
    let mut to = at;
    for d in descs {
        for src in guest.get_slices(d.addr, d.len as usize) {
            let src = src?;
            let dst = shadow.get_slice(GuestAddress(to), src.len())?;
            src.copy_to_volatile_slice(dst);
            to += src.len() as u64;
        }
    }
    Ok(())
}

/// Copies `n` bytes from `at` in `shadow` into the buffers `descs` in `guest` (which hold at
/// least `n`).
fn copy_out(shadow: &GuestMemoryMmap, at: u64, guest: &GuestMemoryMmap, descs: &[Desc], n: u64) -> Result<(), vm_memory::GuestMemoryError> {
    let (mut from, mut left) = (at, n);
    for d in descs {
        if left == 0 {
            break;
        }
        let take = u64::from(d.len).min(left);
        for dst in guest.get_slices(d.addr, take as usize) {
            let dst = dst?;
            let src = shadow.get_slice(GuestAddress(from), dst.len())?;
            src.copy_to_volatile_slice(dst);
            from += dst.len() as u64;
        }
        left -= take;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::devices::virtio::chain::read_from;
    use crate::memory::create_guest_memory;

    #[test]
    fn the_pool_takes_first_fits_frees_and_gives_back_what_a_burst_used() {
        let all = (POOL_BYTES / PAGE) as usize;
        let mut p = Pool::new(POOL_START, POOL_BYTES);
        assert_eq!(p.alloc(2), Some(0));
        assert_eq!(p.alloc(3), Some(2));
        p.free(0, 2);
        assert_eq!(p.alloc(3), Some(5), "a hole of 2 does not hold 3");
        assert_eq!(p.alloc(2), Some(0));
        assert_eq!(p.alloc(all), None);
        assert_eq!(p.addr(3), POOL_START + 3 * PAGE);
        assert_eq!(p.take_unused(), None, "small and in use");
        let mut q = Pool::new(POOL_START, POOL_BYTES);
        assert_eq!(q.alloc(all), Some(0));
        assert_eq!(q.alloc(1), None);
        assert_eq!(q.take_unused(), None, "in use");
        q.free(0, all);
        let keep = KEEP_BYTES / PAGE;
        assert_eq!(q.take_unused(), Some((POOL_START + KEEP_BYTES, POOL_BYTES - KEEP_BYTES)));
        assert_eq!(q.take_unused(), None, "given back once");
        assert_eq!(q.alloc(keep as usize), Some(0));
        q.free(0, keep as usize);
        assert_eq!(q.take_unused(), None, "within what a pool keeps");
    }

    #[test]
    fn read_from_is_the_inverse_of_copy_in() {
        let guest = create_guest_memory(1 << 20).unwrap();
        let shadow = create_guest_memory(SHADOW_BYTES).unwrap();
        guest.write_slice(b"hello ", GuestAddress(0x1000)).unwrap();
        guest.write_slice(b"world", GuestAddress(0x3000)).unwrap();
        let descs = [Desc { addr: GuestAddress(0x1000), len: 6 }, Desc { addr: GuestAddress(0x3000), len: 5 }];
        copy_in(&guest, &descs, &shadow, POOL_START).unwrap();
        let mut b = [0u8; 11];
        shadow.read_slice(&mut b, GuestAddress(POOL_START)).unwrap();
        assert_eq!(&b, b"hello world");
        let out = [Desc { addr: GuestAddress(0x5000), len: 4 }, Desc { addr: GuestAddress(0x6000), len: 100 }];
        copy_out(&shadow, POOL_START, &guest, &out, 9).unwrap();
        let mut r = [0u8; 9];
        assert_eq!(read_from(&guest, &out, 0, &mut r).unwrap(), 9);
        assert_eq!(&r, b"hello wor");
        let mut after = [0u8; 1];
        guest.read_slice(&mut after, GuestAddress(0x6005)).unwrap();
        assert_eq!(after, [0], "nothing past the reply's length");
    }
}
