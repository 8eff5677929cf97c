//! Receive: frames from the backend into the guest's receive chains.
//!
//! Without `VIRTIO_NET_F_MRG_RXBUF` every frame takes one chain, which must hold it whole.
//! With it the device takes chains ahead of time ("held" buffers, in queue order) and spreads
//! a frame over as many of them as it needs; `num_buffers` in the header, at the start of the
//! first chain, tells the guest how many. While the held buffers add up to a maximal frame
//! ([`MAX_FRAME`]) a frame is read straight into them with one `readv`; otherwise it goes
//! through the bounce buffer and waits there until enough buffers arrive.

use std::collections::VecDeque;
use std::io;

use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::device::{FrameIo, Net};
use super::metrics::NetMetrics;
use super::*;
use crate::devices::virtio::active::Active;
use crate::devices::virtio::chain::{self, Desc, MAX_CHAIN_DESCS};
use crate::devices::virtio::iov::{Dir, GuestIovecs, IOV_MAX};
use crate::guest_warn;

/// Offset of `num_buffers` (u16, little endian) in the virtio-net header.
const NUM_BUFFERS: usize = 10;

/// A receive chain taken from the queue and not filled yet.
#[derive(Debug)]
struct HeldBuf {
    head: u16,
    /// The available ring entry it was taken from (a snapshot gives it back by position).
    pos: u16,
    writable: Vec<Desc>,
    /// Bytes a frame may use: the writable length, at most [`MAX_FRAME`].
    cap: usize,
}

/// Receive chains taken for mergeable receive and not filled yet, in queue order.
///
/// Only [`Held::fill`] takes receive chains in mergeable mode, and it either holds a chain
/// (at the back) or completes it at once; held chains are completed from the front. So the
/// held chains are the last ones taken, in order, unless a malformed chain was completed
/// after the first of them: [`Held::rewind`] checks that by position before a snapshot gives
/// them back.
#[derive(Debug, Default)]
pub(super) struct Held {
    bufs: VecDeque<HeldBuf>,
    /// Sum of the buffers' `cap`.
    cap: usize,
}

impl Held {
    /// Forgets every held chain (the queue is being reset or set up again).
    pub(super) fn clear(&mut self) {
        self.bufs.clear();
        self.cap = 0;
    }

    /// Takes chains from the receive queue until the held buffers hold a maximal frame,
    /// `limit` chains are held, or the queue is empty. A malformed chain, or one shorter than
    /// the header (the spec requires every mergeable buffer to hold it), is completed at once
    /// with nothing written. Returns whether any chain was completed.
    fn fill(&mut self, active: &mut Active, m: &NetMetrics, limit: usize) -> bool {
        let mut used = false;
        while self.cap < MAX_FRAME && self.bufs.len() < limit {
            let pos = active.queues.get(RXQ).map_or(0, |q| q.next_avail());
            let (head, chain) = match active.pop(RXQ, MAX_CHAIN_DESCS) {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            };
            match chain {
                Ok(c) if c.writable_len() >= VNET_HDR_SIZE as u64 => {
                    let cap = c.writable_len().min(MAX_FRAME as u64) as usize;
                    self.cap += cap;
                    self.bufs.push_back(HeldBuf { head, pos, writable: c.writable, cap });
                }
                Ok(c) => {
                    guest_warn!("virtio-net: receive chain {head} has {} writable bytes, less than the {VNET_HDR_SIZE}-byte header", c.writable_len());
                    m.errors.inc();
                    active.add_used(RXQ, head, 0);
                    used = true;
                }
                Err(e) => {
                    guest_warn!("virtio-net: bad receive chain: {e}");
                    m.errors.inc();
                    active.add_used(RXQ, head, 0);
                    used = true;
                }
            }
        }
        used
    }

    /// How many chains are held.
    pub(super) fn len(&self) -> usize {
        self.bufs.len()
    }

    /// For a snapshot: how far to move the receive queue's next available entry `next_avail`
    /// back so that a restored device takes the held chains again, or None if they are not
    /// exactly the last ones taken (then rewinding would hand out again a chain that was
    /// already completed).
    pub(super) fn rewind(&self, next_avail: u16) -> Option<u16> {
        let n = u16::try_from(self.bufs.len()).ok()?;
        let first = next_avail.wrapping_sub(n);
        let in_order = self.bufs.iter().zip(0u16..).all(|(b, i)| b.pos == first.wrapping_add(i));
        in_order.then_some(n)
    }

    /// How many held buffers the first `n` bytes of a frame fill (at least one).
    fn count(&self, n: usize) -> usize {
        let (mut k, mut sum) = (0, 0);
        for b in &self.bufs {
            if k > 0 && sum >= n {
                break;
            }
            sum += b.cap;
            k += 1;
        }
        k
    }

    /// The guest memory pieces of the first `len` held bytes, in order.
    fn segments(&self, len: usize) -> Vec<(GuestAddress, usize)> {
        let mut out = Vec::new();
        let mut left = len;
        for b in &self.bufs {
            if left == 0 {
                break;
            }
            let n = b.cap.min(left);
            out.extend(chain::segments(&b.writable, 0, n as u64));
            left -= n;
        }
        out
    }

    /// Completes a frame of `n` bytes that the backend read into the held buffers: writes
    /// `num_buffers` into the first one's header and puts each buffer the frame used into the
    /// used ring with its share. Returns false if the header could not be written (the
    /// buffers are then completed empty, which the guest drops).
    fn complete_read(&mut self, active: &mut Active, n: usize) -> bool {
        let k = self.count(n);
        let num = u16::try_from(k).unwrap_or(u16::MAX).to_le_bytes();
        let ok = self.bufs.front().is_some_and(|b| chain::write_to(&active.mem, &b.writable, NUM_BUFFERS as u64, &num).is_ok_and(|w| w == num.len()));
        self.finish(active, k, n, ok);
        ok
    }

    /// Copies the frame in `frame` (header first, at least [`VNET_HDR_SIZE`] bytes, at most
    /// the held capacity) into the held buffers and completes them, like
    /// [`Held::complete_read`].
    fn deliver_copy(&mut self, active: &mut Active, frame: &mut [u8]) -> bool {
        let k = self.count(frame.len());
        let num = u16::try_from(k).unwrap_or(u16::MAX).to_le_bytes();
        let mut ok = match frame.get_mut(NUM_BUFFERS..NUM_BUFFERS + num.len()) {
            Some(h) => {
                h.copy_from_slice(&num);
                true
            }
            None => false,
        };
        let mut off = 0;
        for b in self.bufs.iter().take(k) {
            let n = b.cap.min(frame.len() - off);
            ok &= chain::write_to(&active.mem, &b.writable, 0, &frame[off..off + n]).is_ok_and(|w| w == n);
            off += n;
        }
        ok &= off == frame.len();
        self.finish(active, k, frame.len(), ok);
        ok
    }

    /// Puts the first `k` held buffers into the used ring with their shares of `n` bytes (or
    /// nothing if `!ok`) and forgets them.
    fn finish(&mut self, active: &mut Active, k: usize, n: usize, ok: bool) {
        let mut left = n;
        for _ in 0..k {
            let Some(b) = self.bufs.pop_front() else { break };
            let share = b.cap.min(left);
            left -= share;
            self.cap -= b.cap;
            // share <= cap <= MAX_FRAME, which fits u32.
            active.add_used(RXQ, b.head, if ok { share as u32 } else { 0 });
        }
    }
}

impl Net {
    /// Moves frames from the backend into the guest's receive buffers until either runs out.
    pub fn process_rx(&mut self) {
        if self.hold.on {
            return;
        }
        if self.mergeable {
            self.process_rx_mergeable();
        } else {
            self.process_rx_single();
        }
    }

    /// Receive with mergeable buffers: one frame over as many chains as it needs.
    fn process_rx_mergeable(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        // Every chain the guest can post at once: holding that many and still lacking room
        // for a frame means no more are coming.
        let limit = active.queues.get(RXQ).map_or(0, |q| usize::from(q.size())).min(usize::from(QUEUE_SIZE));
        let m = &*self.metrics;
        let mut used = false;
        // Each pass delivers or drops the pending frame, reads one frame, or stops: the loop
        // ends when the backend or the guest's buffers run out.
        while !active.broken {
            used |= self.held.fill(active, m, limit);
            if let Some(len) = self.pending {
                if self.held.cap >= len {
                    let Some(frame) = self.rx_buf.get_mut(..len) else {
                        self.pending = None;
                        continue;
                    };
                    if self.held.deliver_copy(active, frame) {
                        m.rx_frames.inc();
                        m.rx_bytes.add((len - VNET_HDR_SIZE) as u64);
                    } else {
                        m.errors.inc();
                    }
                    used = true;
                    self.pending = None;
                    continue;
                }
                if self.held.bufs.len() >= limit {
                    // Every buffer the queue can hold is here and the frame still does not fit.
                    m.dropped.inc();
                    self.pending = None;
                    continue;
                }
                break;
            }
            if !self.backend_readable {
                break;
            }
            if self.held.cap >= MAX_FRAME {
                match mrg_direct(active, &mut self.held, self.backend.as_ref(), m, &self.cfg.tap) {
                    Direct::Used => {
                        used = true;
                        continue;
                    }
                    Direct::Again => continue,
                    Direct::Drained | Direct::NoBuffer => {
                        self.backend_readable = false;
                        break;
                    }
                    Direct::Fallback => {}
                }
            }
            match self.backend.read_frame(&mut self.rx_buf) {
                Ok(n) if n >= VNET_HDR_SIZE => self.pending = Some(n),
                Ok(0) => {
                    self.backend_readable = false;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.backend_readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    guest_warn!("virtio-net: reading tap {} failed: {e}", self.cfg.tap);
                    m.errors.inc();
                    self.backend_readable = false;
                    break;
                }
            }
        }
        if used {
            active.notify(RXQ);
        }
    }

    /// Receive without mergeable buffers: one frame per chain.
    fn process_rx_single(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        let mut used = false;
        loop {
            if self.pending.is_none() && self.backend_readable {
                match rx_direct(active, self.backend.as_ref(), &self.metrics, &self.cfg.tap) {
                    Direct::Used => {
                        used = true;
                        continue;
                    }
                    Direct::Again => continue,
                    Direct::Drained => {
                        self.backend_readable = false;
                        break;
                    }
                    Direct::NoBuffer => break,
                    Direct::Fallback => {}
                }
            }
            let len = match self.pending {
                Some(n) => n,
                None if self.backend_readable => match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(n) if n >= VNET_HDR_SIZE => {
                        // num_buffers: always 1 without MRG_RXBUF.
                        self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                        self.pending = Some(n);
                        n
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.backend_readable = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        guest_warn!("virtio-net: reading tap {} failed: {e}", self.cfg.tap);
                        self.metrics.errors.inc();
                        self.backend_readable = false;
                        break;
                    }
                },
                None => break,
            };
            let (head, chain) = match active.pop(RXQ, MAX_CHAIN_DESCS) {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            };
            used = true;
            match chain {
                Ok(c) if c.writable_len() >= len as u64 => {
                    match chain::write_to(&active.mem, &c.writable, 0, &self.rx_buf[..len]) {
                        Ok(_) => {
                            self.metrics.rx_frames.inc();
                            self.metrics.rx_bytes.add((len - VNET_HDR_SIZE) as u64);
                            active.add_used(RXQ, head, len as u32);
                        }
                        Err(_) => {
                            self.metrics.errors.inc();
                            active.add_used(RXQ, head, 0);
                        }
                    }
                    self.pending = None;
                }
                Ok(_) => {
                    // The guest's buffer is too small for this frame: drop the frame, keep
                    // the buffer for the next one.
                    self.metrics.dropped.inc();
                    self.pending = None;
                    active.unpop(RXQ);
                }
                Err(e) => {
                    guest_warn!("virtio-net: bad receive chain: {e}");
                    self.metrics.errors.inc();
                    active.add_used(RXQ, head, 0);
                }
            }
        }
        if used {
            active.notify(RXQ);
        }
    }
}

/// What a direct read ([`rx_direct`], [`mrg_direct`]) did.
enum Direct {
    /// A frame went into receive buffers.
    Used,
    /// Nothing delivered (a runt frame, an interrupted read); try again.
    Again,
    /// The backend has no more frames (or failed).
    Drained,
    /// The guest has no receive buffer.
    NoBuffer,
    /// The buffers cannot take every frame directly: use the bounce buffer.
    Fallback,
}

/// Reads one frame from the backend straight into the next receive chain, when that chain
/// holds [`MAX_FRAME`] bytes (the guest's "big" buffers), saving a copy through the bounce
/// buffer. A smaller or malformed chain is given back for the bounce-buffer path, which can
/// size-check the frame first.
fn rx_direct(active: &mut Active, backend: &dyn FrameIo, m: &NetMetrics, tap: &str) -> Direct {
    let (head, chain) = match active.pop(RXQ, MAX_CHAIN_DESCS) {
        Ok(Some(c)) => c,
        Ok(None) | Err(_) => return Direct::NoBuffer,
    };
    let c = match chain {
        Ok(c) if c.writable_len() >= MAX_FRAME as u64 => c,
        _ => {
            active.unpop(RXQ);
            return Direct::Fallback;
        }
    };
    let segs = chain::segments(&c.writable, 0, MAX_FRAME as u64);
    let read = GuestIovecs::new(&active.mem, &segs, Dir::ToGuest).and_then(|v| v.readv(backend.as_raw_fd()));
    match read {
        Ok(n) if n >= VNET_HDR_SIZE => {
            // num_buffers (header bytes 10..12): always 1 without MRG_RXBUF.
            if chain::write_to(&active.mem, &c.writable, 10, &1u16.to_le_bytes()).is_err() {
                m.errors.inc();
                active.add_used(RXQ, head, 0);
                return Direct::Used;
            }
            m.rx_frames.inc();
            m.rx_bytes.add((n - VNET_HDR_SIZE) as u64);
            active.add_used(RXQ, head, n as u32);
            Direct::Used
        }
        Ok(_) => {
            active.unpop(RXQ);
            Direct::Again
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            active.unpop(RXQ);
            Direct::Drained
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            active.unpop(RXQ);
            Direct::Again
        }
        Err(e) => {
            guest_warn!("virtio-net: reading tap {tap} failed: {e}");
            m.errors.inc();
            active.unpop(RXQ);
            Direct::Drained
        }
    }
}

/// Reads one frame from the backend straight into the held buffers, which hold at least
/// [`MAX_FRAME`] bytes, and completes the ones it fills. Falls back to the bounce buffer when
/// the buffers need more iovecs than one `readv` takes.
fn mrg_direct(active: &mut Active, held: &mut Held, backend: &dyn FrameIo, m: &NetMetrics, tap: &str) -> Direct {
    let segs = held.segments(MAX_FRAME);
    if segs.len() > IOV_MAX {
        return Direct::Fallback;
    }
    let read = GuestIovecs::new(&active.mem, &segs, Dir::ToGuest).and_then(|v| v.readv(backend.as_raw_fd()));
    match read {
        Ok(n) if n >= VNET_HDR_SIZE => {
            if held.complete_read(active, n) {
                m.rx_frames.inc();
                m.rx_bytes.add((n - VNET_HDR_SIZE) as u64);
            } else {
                m.errors.inc();
            }
            Direct::Used
        }
        // End of file (only a socket backend whose peer left): nothing more will come.
        Ok(0) => Direct::Drained,
        // A runt frame; the buffers stay held for the next one.
        Ok(_) => Direct::Again,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Direct::Drained,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Direct::Again,
        // Nothing was read (more iovecs than the kernel takes, e.g. after a memory region
        // split): the bounce path reads the frame instead.
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Direct::Fallback,
        Err(e) => {
            guest_warn!("virtio-net: reading tap {tap} failed: {e}");
            m.errors.inc();
            Direct::Drained
        }
    }
}
