//! Validated descriptor chains.
//!
//! A chain popped from a queue is walked once, up front, and rejected unless every descriptor
//! lies inside guest memory, device-readable descriptors all come before device-writable ones,
//! and the chain ends properly (no loop, not longer than the queue or `max_descs`). Devices
//! then only touch the memory the validated chain names.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemoryMmap;

/// Longest chain any device here accepts (indirect tables can otherwise hold 65535 entries).
pub const MAX_CHAIN_DESCS: usize = 1024;

/// Why a descriptor chain was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// The head index pointed past the descriptor table, or the chain had no descriptor.
    #[error("descriptor chain {head} is empty or its head index is out of range")]
    Empty {
        /// Head index.
        head: u16,
    },
    /// The chain did not end: it loops, is longer than the queue, names a next index past the
    /// table, or a descriptor could not be read.
    #[error("descriptor chain {head} does not terminate within the queue (loop or bad next index)")]
    Unterminated {
        /// Head index.
        head: u16,
    },
    /// More descriptors than the device accepts.
    #[error("descriptor chain {head} has more than {max} descriptors")]
    TooLong {
        /// Head index.
        head: u16,
        /// Limit.
        max: usize,
    },
    /// A descriptor names memory outside the guest's RAM.
    #[error("descriptor chain {head}: buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Head index.
        head: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("descriptor chain {head}: readable descriptor {index} follows a writable one")]
    ReadAfterWrite {
        /// Head index.
        head: u16,
        /// Position in the chain.
        index: usize,
    },
}

/// One validated buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A validated descriptor chain: the device-readable buffers, then the device-writable ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Head index, to be returned in the used ring.
    pub head: u16,
    /// Buffers the device reads (driver → device).
    pub readable: Vec<Desc>,
    /// Buffers the device writes (device → driver).
    pub writable: Vec<Desc>,
}

impl Chain {
    /// Walks and validates `chain`.
    pub fn parse<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap, max_descs: usize) -> Result<Self, ChainError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let head = chain.head_index();
        let mut out = Chain { head, readable: Vec::new(), writable: Vec::new() };
        let mut last_has_next = false;
        let mut count = 0usize;
        for desc in chain {
            count += 1;
            if count > max_descs {
                return Err(ChainError::TooLong { head, max: max_descs });
            }
            let d = Desc { addr: desc.addr(), len: desc.len() };
            if !GuestMemoryBackend::check_range(mem, d.addr, d.len as usize) {
                return Err(ChainError::OutsideMemory { head, addr: d.addr.0, len: d.len });
            }
            if desc.is_write_only() {
                out.writable.push(d);
            } else if !out.writable.is_empty() {
                return Err(ChainError::ReadAfterWrite { head, index: count - 1 });
            } else {
                out.readable.push(d);
            }
            last_has_next = desc.has_next();
        }
        if count == 0 {
            return Err(ChainError::Empty { head });
        }
        // The iterator stops silently on a loop (after queue-size steps), an out-of-range
        // next index or an unreadable descriptor; the last descriptor then still says "next".
        if last_has_next {
            return Err(ChainError::Unterminated { head });
        }
        Ok(out)
    }

    /// Total bytes of the readable part.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|d| u64::from(d.len)).sum()
    }

    /// Total bytes of the writable part.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|d| u64::from(d.len)).sum()
    }
}

/// The (address, length) pieces covering `len` bytes starting `offset` bytes into `descs`.
/// Stops early when the buffers end.
pub fn segments(descs: &[Desc], offset: u64, len: u64) -> Vec<(GuestAddress, usize)> {
    segments_iter(descs, offset, len).collect()
}

/// [`segments`] without collecting them (no allocation on the per-packet paths).
pub fn segments_iter(descs: &[Desc], offset: u64, len: u64) -> impl Iterator<Item = (GuestAddress, usize)> + '_ {
    let mut skip = offset;
    let mut left = len;
    descs
        .iter()
        .map_while(move |d| {
            if left == 0 {
                return None;
            }
            let dlen = u64::from(d.len);
            if skip >= dlen {
                skip -= dlen;
                return Some(None);
            }
            let n = (dlen - skip).min(left);
            // Within a validated descriptor: addr + skip + n <= addr + len, which fits guest memory.
            let seg = (GuestAddress(d.addr.0 + skip), n as usize);
            left -= n;
            skip = 0;
            Some(Some(seg))
        })
        .flatten()
}

/// Copies bytes from the buffers `descs`, starting `offset` bytes in, into `buf`. Returns how
/// many bytes were copied (less than `buf.len()` if the buffers are shorter).
pub fn read_from(mem: &GuestMemoryMmap, descs: &[Desc], offset: u64, buf: &mut [u8]) -> Result<usize, vm_memory::GuestMemoryError> {
    use vm_memory::Bytes;
    let mut done = 0;
    for (addr, n) in segments_iter(descs, offset, buf.len() as u64) {
        mem.read_slice(&mut buf[done..done + n], addr)?;
        done += n;
    }
    Ok(done)
}

/// Copies `data` into the buffers `descs`, starting `offset` bytes in. Returns how many bytes
/// were copied (less than `data.len()` if the buffers are shorter).
pub fn write_to(mem: &GuestMemoryMmap, descs: &[Desc], offset: u64, data: &[u8]) -> Result<usize, vm_memory::GuestMemoryError> {
    use vm_memory::Bytes;
    let mut done = 0;
    for (addr, n) in segments_iter(descs, offset, data.len() as u64) {
        mem.write_slice(&data[done..done + n], addr)?;
        done += n;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};

    use super::*;
    use crate::devices::virtio::test_utils::{TestQueue, F_NEXT, F_WRITE};

    /// RAM at 0 and where MockSplitQueue puts indirect tables (0x3000_0000).
    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000), (GuestAddress(0x3000_0000), 0x10_0000)]).unwrap()
    }

    fn pop(mem: &GuestMemoryMmap, q: &mut Queue, max: usize) -> Result<Chain, ChainError> {
        let c = q.iter(mem).unwrap().next().unwrap();
        Chain::parse(c, mem, max)
    }

    #[test]
    fn indirect_chain_is_followed() {
        let m = mem();
        let mut vq = MockSplitQueue::new(&m, 16);
        vq.add_indirect_chain(8).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let c = pop(&m, &mut q, MAX_CHAIN_DESCS).unwrap();
        assert_eq!(c.readable.len(), 8);
        assert_eq!(c.readable_len(), 8 * 0x1000);
    }

    #[test]
    fn indirect_chain_longer_than_limit_is_rejected() {
        let m = mem();
        let mut vq = MockSplitQueue::new(&m, 16);
        vq.add_indirect_chain(2048).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let e = pop(&m, &mut q, MAX_CHAIN_DESCS).unwrap_err();
        assert!(matches!(e, ChainError::TooLong { max: MAX_CHAIN_DESCS, .. }), "{e}");
    }

    #[test]
    fn malformed_chains_are_named() {
        let m = mem();
        let mut tq = TestQueue::new(&m, 0x1000, 16);
        let mut q = tq.queue();
        // Loop 0 -> 1 -> 0.
        tq.add_raw(0, &[(0x8000, 8, F_NEXT, 1), (0x8000, 8, F_NEXT, 0)]);
        assert!(matches!(pop(&m, &mut q, 64), Err(ChainError::Unterminated { head: 0 })));
        // Next index past the table.
        tq.add_raw(2, &[(0x8000, 8, F_NEXT, 500)]);
        assert!(matches!(pop(&m, &mut q, 64), Err(ChainError::Unterminated { head: 2 })));
        // Head index past the table.
        let idx = tq.vq.avail().idx().load();
        tq.vq.avail().ring().ref_at(idx as usize % 16).unwrap().store(99);
        tq.vq.avail().idx().store(idx + 1);
        assert!(matches!(pop(&m, &mut q, 64), Err(ChainError::Empty { head: 99 })));
        // Buffer in the hole between the two RAM regions, and a wrapping length.
        tq.add_raw(3, &[(0x200_0000, 8, 0, 0)]);
        assert!(matches!(pop(&m, &mut q, 64), Err(ChainError::OutsideMemory { .. })));
        tq.add_raw(4, &[(0xfff0, u32::MAX, 0, 0)]);
        assert!(matches!(pop(&m, &mut q, 64), Err(ChainError::OutsideMemory { .. })));
        // Readable after writable.
        tq.add_raw(5, &[(0x8000, 8, F_WRITE | F_NEXT, 6), (0x9000, 8, 0, 0)]);
        assert!(matches!(pop(&m, &mut q, 64), Err(ChainError::ReadAfterWrite { index: 1, .. })));
        // Too many descriptors for the device's limit.
        tq.add_raw(7, &[(0x8000, 8, F_NEXT, 8), (0x8000, 8, F_NEXT, 9), (0x8000, 8, 0, 0)]);
        assert!(matches!(pop(&m, &mut q, 2), Err(ChainError::TooLong { max: 2, .. })));
    }

    #[test]
    fn segments_split_across_descriptors() {
        let d = [Desc { addr: GuestAddress(0x1000), len: 10 }, Desc { addr: GuestAddress(0x2000), len: 10 }];
        assert_eq!(segments(&d, 5, 10), vec![(GuestAddress(0x1005), 5), (GuestAddress(0x2000), 5)]);
        assert_eq!(segments(&d, 25, 10), vec![]);
        assert_eq!(segments(&d, 15, 100), vec![(GuestAddress(0x2005), 5)]);
    }
}
