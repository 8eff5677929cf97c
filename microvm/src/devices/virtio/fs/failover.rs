//! Serving the queues once the backend is gone: every request is answered with `EIO`, so
//! the guest's file operations fail instead of hanging, until the driver resets the device.
//!
//! The device takes each queue over where the backend stopped. The backend's position is
//! only known from the used ring (a dead backend cannot answer `GET_VRING_BASE`), so the
//! device resumes at the used index: the chains the backend had taken but not completed
//! (it died in the middle of them) are answered too. This assumes the backend completes a
//! queue's requests in the order it took them, as virtiofsd does with its default of no
//! thread pool; a backend that completed out of order could have chains answered twice,
//! which the guest's virtio driver reports as a broken queue (the guest's own state only).

use std::sync::atomic::Ordering;

use virtio_queue::QueueT;

use super::metrics::FsMetrics;
use super::{FUSE_OUT_HEADER_LEN, QUEUE_SIZE};
use crate::devices::virtio::active::Active;
use crate::devices::virtio::chain::{read_from, write_to, Chain, MAX_CHAIN_DESCS};
use crate::guest_warn;
use crate::memory::GuestMemoryMmap;

/// `EIO`, as FUSE replies carry it (negated).
const EIO: i32 = 5;

/// Makes the device's queues continue from the backend's last completed request.
pub fn take_over(active: &mut Active) {
    let mem = &active.mem;
    for (i, q) in active.queues.iter_mut().enumerate() {
        match q.used_idx(mem, Ordering::Acquire) {
            Ok(used) => {
                q.set_next_avail(used.0);
                q.set_next_used(used.0);
            }
            Err(e) => {
                guest_warn!("virtio-fs: cannot read the used index of queue {i} ({e}); the device stops until reset");
                active.broken = true;
            }
        }
    }
}

/// Answers the requests waiting on queue `q` with `EIO`, at most one queue's worth; returns
/// whether more are waiting (the caller comes back for them through the event loop).
pub fn answer_with_errors(active: &mut Active, q: usize, metrics: &FsMetrics) -> bool {
    let mut used = false;
    for _ in 0..QUEUE_SIZE {
        let Ok(Some((head, chain))) = active.pop(q, MAX_CHAIN_DESCS) else {
            break;
        };
        let len = match chain {
            Ok(c) => error_reply(&active.mem, &c).unwrap_or_else(|e| {
                guest_warn!("virtio-fs: cannot write the error reply of chain {head}: {e}");
                metrics.errors.inc();
                0
            }),
            Err(e) => {
                guest_warn!("virtio-fs: malformed request on queue {q}: {e}");
                metrics.errors.inc();
                0
            }
        };
        active.add_used(q, head, len);
        metrics.failed_requests.inc();
        used = true;
    }
    if used {
        active.notify(q);
    }
    active.has_available(q)
}

/// Writes a FUSE reply header with `-EIO` and the request's `unique` into the chain; returns
/// the bytes written (0 when the chain has no room for a reply, as FORGET has none).
fn error_reply(mem: &GuestMemoryMmap, chain: &Chain) -> Result<u32, vm_memory::GuestMemoryError> {
    // fuse_in_header: len (u32), opcode (u32), unique (u64), ...
    let mut head = [0u8; 16];
    if read_from(mem, &chain.readable, 0, &mut head)? < head.len() || chain.writable_len() < FUSE_OUT_HEADER_LEN as u64 {
        return Ok(0);
    }
    write_to(mem, &chain.writable, 0, &eio_reply(&head))?;
    Ok(FUSE_OUT_HEADER_LEN as u32)
}

/// A FUSE reply header with `-EIO` for the request whose header starts with `head` (its
/// `unique` is at bytes 8..16 of `fuse_in_header`).
pub fn eio_reply(head: &[u8; 16]) -> [u8; FUSE_OUT_HEADER_LEN] {
    let mut reply = [0u8; FUSE_OUT_HEADER_LEN];
    reply[0..4].copy_from_slice(&(FUSE_OUT_HEADER_LEN as u32).to_le_bytes());
    reply[4..8].copy_from_slice(&(-EIO).to_le_bytes());
    reply[8..16].copy_from_slice(&head[8..16]);
    reply
}
