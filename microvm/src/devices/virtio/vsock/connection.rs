//! One vsock stream: the host unix socket, its state and the credit accounting.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use event_manager::EventSet;

use super::CONN_BUF_ALLOC;
use crate::devices::virtio::iov::GuestIovecs;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnState {
    /// The host asked (`CONNECT`), the guest has not answered yet.
    LocalInit,
    /// Both sides agreed; data flows.
    Established,
}

/// What a write of guest data to the host socket led to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PushResult {
    /// Everything was written or buffered.
    Ok,
    /// The guest sent more than the credit it was given.
    CreditViolation,
    /// The host side is gone.
    HostGone,
}

/// A stream between a host unix socket and a guest vsock port.
#[derive(Debug)]
pub(super) struct Connection {
    pub stream: UnixStream,
    pub state: ConnState,
    /// Bytes sent to the guest (host → guest direction).
    pub rx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Guest data forwarded to the host socket so far.
    pub fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    pub last_fwd_cnt_sent: u32,
    /// Guest data the host socket did not take yet.
    pub pending: VecDeque<u8>,
    /// The host socket has (or may have) data to read.
    pub readable: bool,
    /// The host socket reported EOF or hang-up; stop polling it for input.
    pub host_eof: bool,
    /// The guest said it sends no more data.
    pub peer_shut_send: bool,
    /// The guest said it receives no more data.
    pub peer_shut_rcv: bool,
    /// What is registered with epoll for this socket (None: not registered).
    pub registered: Option<EventSet>,
    /// A credit update for this connection waits in the muxer's control queue.
    pub credit_update_queued: bool,
}

impl Connection {
    pub fn new(stream: UnixStream, state: ConnState) -> Self {
        Self {
            stream,
            state,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            pending: VecDeque::new(),
            readable: false,
            host_eof: false,
            peer_shut_send: false,
            peer_shut_rcv: false,
            registered: None,
            credit_update_queued: false,
        }
    }

    /// Bytes the guest can still receive.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Records the guest's view of its receive buffer from any packet it sent.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Whether the guest should be told about freed buffer space now: when there is news and
    /// the credit the guest believes it has left (from the last `fwd_cnt` it was told) is below
    /// half its window. The window is our buffer, or the guest's own receive buffer if that
    /// is smaller: Linux guests (6.1.x stable and later) never have more than their own
    /// buffer in flight, and a threshold they cannot reach would stall the stream. Each update
    /// costs the guest a receive interrupt; one per 64 KiB forwarded, as before, made
    /// guest->host streams ~20% slower in the testbed, and waiting until less than a packet
    /// is left (Linux's vhost side) let a fast sender stall.
    pub fn needs_credit_update(&self) -> bool {
        let window = CONN_BUF_ALLOC.min(self.peer_buf_alloc);
        let received = self.fwd_cnt.wrapping_add(self.pending.len() as u32);
        let believed_in_use = received.wrapping_sub(self.last_fwd_cnt_sent);
        self.fwd_cnt != self.last_fwd_cnt_sent && window.saturating_sub(believed_in_use) < window / 2
    }

    /// Whether host data can be sent to the guest now.
    pub fn wants_rx(&self) -> bool {
        self.state == ConnState::Established && self.readable && !self.peer_shut_rcv && self.peer_credit() > 0
    }

    /// The epoll interest this connection needs, or None to stay unregistered.
    pub fn desired_events(&self) -> Option<EventSet> {
        let mut ev = EventSet::empty();
        if self.state == ConnState::Established && !self.readable && !self.host_eof && !self.peer_shut_rcv && self.peer_credit() > 0 {
            ev |= EventSet::IN;
        }
        if !self.pending.is_empty() {
            ev |= EventSet::OUT;
        }
        if ev.is_empty() && (self.host_eof || self.state == ConnState::LocalInit) {
            // Nothing to wait for; a registered but idle socket would report hang-ups forever.
            return None;
        }
        Some(ev)
    }

    /// Writes guest data to the host socket straight from guest memory (one `writev`),
    /// buffering what the socket does not take.
    pub fn push(&mut self, data: &GuestIovecs) -> PushResult {
        let len = data.len();
        if self.pending.len() + len > CONN_BUF_ALLOC as usize {
            return PushResult::CreditViolation;
        }
        let mut written = 0;
        if self.pending.is_empty() {
            match nonblocking(data.writev(self.stream.as_raw_fd())) {
                Ok(n) => written = n,
                Err(_) => return PushResult::HostGone,
            }
        }
        self.fwd_cnt = self.fwd_cnt.wrapping_add(written as u32);
        if written < len {
            let mut rest = Vec::with_capacity(len - written);
            data.copy_tail(written, &mut rest);
            self.pending.extend(rest);
        }
        PushResult::Ok
    }

    /// The guest closed both directions and everything it sent is with the host: the
    /// connection can end (with a RST to the guest).
    pub fn closed_and_flushed(&self) -> bool {
        self.peer_shut_send && self.peer_shut_rcv && self.pending.is_empty()
    }

    /// Writes buffered guest data; returns false if the host side is gone.
    pub fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match write_some(&mut self.stream, front) {
                Ok(0) => return true,
                Ok(n) => {
                    self.pending.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(_) => return false,
            }
        }
        if self.peer_shut_send {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        true
    }
}

/// Writes as much as the non-blocking socket takes; WouldBlock is 0 bytes.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    loop {
        match nonblocking(stream.write(data)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// A write result with WouldBlock as 0 bytes written.
fn nonblocking(r: io::Result<usize>) -> io::Result<usize> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        r => r,
    }
}
