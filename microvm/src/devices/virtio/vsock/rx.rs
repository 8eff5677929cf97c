//! The receive side of the muxer: which packet goes to the guest next, and filling the
//! guest's receive buffers with control packets and, straight from host sockets, data.

use std::io;
use std::os::fd::AsRawFd;

use super::metrics::VsockMetrics;
use super::muxer::{header, Muxer};
use super::packet::{self, HDR_SIZE, OP_CREDIT_UPDATE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_SEND};
use super::MAX_PKT_PAYLOAD;
use crate::devices::virtio::chain::{self, Chain};
use crate::devices::virtio::iov::{Dir, GuestIovecs, IOV_MAX};
use crate::memory::GuestMemoryMmap;

/// Most host data moved to the guest with one `readv` (it is also limited by the guest's
/// credit and by the receive buffers it offered).
pub(super) const RX_BATCH_BYTES: usize = 256 * 1024;

/// What the next receive buffers are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RxNeed {
    /// Nothing to send.
    Nothing,
    /// A control packet (one buffer, header only).
    Control,
    /// Host data: buffers holding up to this many payload bytes.
    Data(usize),
}

impl Muxer {
    /// What the next receive buffers are for.
    pub fn rx_need(&mut self) -> RxNeed {
        if !self.control.is_empty() {
            return RxNeed::Control;
        }
        while let Some(&key) = self.rx_ready.front() {
            match self.conns.get(&key) {
                Some(c) if c.wants_rx() => {
                    return RxNeed::Data((c.peer_credit() as usize).min(RX_BATCH_BYTES));
                }
                Some(_) => {
                    self.rx_ready.pop_front();
                    self.sync_interest(key);
                }
                None => {
                    self.rx_ready.pop_front();
                }
            }
        }
        RxNeed::Nothing
    }

    /// Writes the next control packet into `chain`; returns the bytes written.
    pub fn fill_rx_control(&mut self, mem: &GuestMemoryMmap, chain: &Chain, m: &VsockMetrics) -> Result<Option<u32>, packet::PacketError> {
        let Some(mut h) = self.control.front().copied() else { return Ok(None) };
        if let Some(c) = self.conns.get(&(h.src_port, h.dst_port)) {
            h.fwd_cnt = c.fwd_cnt;
        }
        packet::write_rx_header(mem, chain, &h)?;
        self.control.pop_front();
        if let Some(c) = self.conns.get_mut(&(h.src_port, h.dst_port)) {
            c.last_fwd_cnt_sent = c.fwd_cnt;
            if h.op == OP_CREDIT_UPDATE {
                c.credit_update_queued = false;
            }
        }
        if h.op == OP_CREDIT_UPDATE {
            m.credit_updates.inc();
        }
        m.rx_packets.inc();
        Ok(Some(HDR_SIZE as u32))
    }

    /// Moves host data of the connection first in line straight from its socket into the
    /// payload areas of `chains` with one `readv`, so each chain becomes one packet. Returns
    /// the bytes written to each chain used, in order; chains after those were not touched.
    /// Nothing used means the connection had nothing after all (it leaves the line).
    pub fn fill_rx_data(&mut self, mem: &GuestMemoryMmap, chains: &[Chain], m: &VsockMetrics) -> Result<Vec<u32>, packet::PacketError> {
        let Some(first) = chains.first() else { return Ok(Vec::new()) };
        let Some(key) = self.rx_ready.pop_front() else { return Ok(Vec::new()) };
        let guest_cid = self.guest_cid;
        let Some(c) = self.conns.get_mut(&key) else { return Ok(Vec::new()) };
        if !c.wants_rx() {
            self.sync_interest(key);
            return Ok(Vec::new());
        }
        // Each chain's payload area after its header, within the packet limit and what is
        // left of the guest's credit.
        let mut credit = c.peer_credit() as usize;
        let mut segs = Vec::with_capacity(chains.len());
        let mut caps = Vec::with_capacity(chains.len());
        for chain in chains {
            let room = chain.writable_len().saturating_sub(HDR_SIZE as u64);
            let room = room.min(u64::from(MAX_PKT_PAYLOAD)).min(credit as u64) as usize;
            if room == 0 {
                break;
            }
            let before = segs.len();
            segs.extend(chain::segments_iter(&chain.writable, HDR_SIZE as u64, room as u64));
            if segs.len() > IOV_MAX {
                segs.truncate(before);
                break;
            }
            caps.push(room);
            credit -= room;
        }
        if caps.is_empty() {
            // The first buffer holds only a header: it goes back empty (counted by the
            // caller); the connection stays first in line.
            self.rx_ready.push_front(key);
            return Err(packet::PacketError::RxTooSmall(first.writable_len()));
        }
        let Ok(iovs) = GuestIovecs::new(mem, &segs, Dir::ToGuest) else {
            self.rx_ready.push_front(key);
            return Err(packet::PacketError::Memory);
        };
        let want = iovs.len();
        m.host_reads.inc();
        match iovs.readv(c.stream.as_raw_fd()) {
            Ok(0) => {
                c.host_eof = true;
                c.readable = false;
                // The host sends no more; it may still receive (half-close).
                let mut h = header(guest_cid, key, OP_SHUTDOWN);
                h.flags = SHUTDOWN_SEND;
                h.fwd_cnt = c.fwd_cnt;
                c.last_fwd_cnt_sent = c.fwd_cnt;
                packet::write_rx_header(mem, first, &h)?;
                self.sync_interest(key);
                m.rx_packets.inc();
                Ok(vec![HDR_SIZE as u32])
            }
            Ok(n) => {
                // A short read drained the socket: wait for it to be readable again rather
                // than read once more for nothing (after a hang-up, read on to the EOF).
                if n < want && !c.host_eof {
                    c.readable = false;
                }
                let mut lens = Vec::with_capacity(caps.len());
                let mut left = n;
                for (chain, cap) in chains.iter().zip(caps) {
                    if left == 0 {
                        break;
                    }
                    let k = cap.min(left);
                    left -= k;
                    let mut h = header(guest_cid, key, OP_RW);
                    h.len = k as u32;
                    h.fwd_cnt = c.fwd_cnt;
                    if packet::write_rx_header(mem, chain, &h).is_err() {
                        // The guest's header area is not writable: the data read cannot be
                        // delivered in order, so the stream ends.
                        self.close(key);
                        self.rst(key);
                        return Err(packet::PacketError::Memory);
                    }
                    lens.push((HDR_SIZE + k) as u32);
                    m.rx_packets.inc();
                }
                c.last_fwd_cnt_sent = c.fwd_cnt;
                c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                m.rx_bytes.add(n as u64);
                // Back of the line (round robin) if it still has data to send.
                self.sync_interest(key);
                Ok(lens)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.readable = false;
                self.sync_interest(key);
                Ok(Vec::new())
            }
            Err(_) => {
                self.close(key);
                let mut h = header(guest_cid, key, OP_RST);
                h.flags = 0;
                packet::write_rx_header(mem, first, &h)?;
                m.rx_packets.inc();
                Ok(vec![HDR_SIZE as u32])
            }
        }
    }
}
