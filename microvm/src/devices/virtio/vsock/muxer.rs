//! The unix-socket side of the vsock device: accepts host clients, connects guest requests
//! to `<uds>_<port>` (through the [`Connector`] thread), and moves packets between guest and
//! host sockets.
//!
//! It never touches epoll itself: it records which fds need (re)registration in
//! `fd_ops`, and the event handler applies them. That keeps it testable without an event loop.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use event_manager::EventSet;
use nix::sys::socket::{self, SockFlag};

use super::connection::{ConnState, Connection, PushResult};
use super::connector::Connector;
use super::metrics::VsockMetrics;
use super::packet::{
    Header, HDR_SIZE, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::unix::{parse_connect, raise_send_buffer};
use super::{CONN_BUF_ALLOC, HOST_CID, HOST_PORT_BASE, MAX_CONNECTIONS, MAX_CONNECT_LINE, MAX_CONTROL_BACKLOG};
use crate::devices::virtio::chain::{self, Chain};
use crate::devices::virtio::iov::{Dir, GuestIovecs};
use crate::guest_warn;
use crate::memory::GuestMemoryMmap;

/// (host-side port, guest-side port).
pub(super) type Key = (u32, u32);

/// A registration change for the event loop.
#[derive(Debug)]
pub(super) enum FdOp {
    /// Register `fd` with these events.
    Add(RawFd, EventSet),
    /// Change the events of a registered `fd`.
    Modify(RawFd, EventSet),
    /// Unregister `fd`, then drop the stream (closing it).
    Remove(RawFd, Option<UnixStream>),
}

/// A host client that connected but has not sent its `CONNECT` line yet.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The backend of one vsock device.
#[derive(Debug)]
pub(super) struct Muxer {
    pub(super) guest_cid: u64,
    connector: Connector,
    pub listener: UnixListener,
    handshakes: HashMap<RawFd, Handshake>,
    pub(super) conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    /// Control packets waiting for a receive buffer.
    pub(super) control: VecDeque<Header>,
    /// Connections with host data to deliver, in round-robin order.
    pub(super) rx_ready: VecDeque<Key>,
    next_host_port: u32,
    pub fd_ops: Vec<FdOp>,
}

impl Muxer {
    pub fn new(guest_cid: u64, connector: Connector, listener: UnixListener) -> Self {
        Self {
            guest_cid,
            connector,
            listener,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            control: VecDeque::new(),
            rx_ready: VecDeque::new(),
            next_host_port: HOST_PORT_BASE,
            fd_ops: Vec::new(),
        }
    }

    /// The thread that opens guest-initiated connections.
    pub(super) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Drops every connection and pending client (device reset). The listener stays.
    pub fn reset(&mut self) {
        for (fd, h) in self.handshakes.drain() {
            self.fd_ops.push(FdOp::Remove(fd, Some(h.stream)));
        }
        for (_, c) in self.conns.drain() {
            let fd = c.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            if c.registered.is_some() {
                self.fd_ops.push(FdOp::Remove(fd, Some(c.stream)));
            }
        }
        self.by_fd.clear();
        self.control.clear();
        self.rx_ready.clear();
    }

    fn push_control(&mut self, key: Key, op: u16, flags: u32) {
        let mut h = header(self.guest_cid, key, op);
        h.flags = flags;
        if let Some(c) = self.conns.get_mut(&key) {
            if op == OP_CREDIT_UPDATE {
                // One waiting update per connection: it carries the newest count when sent.
                if c.credit_update_queued {
                    return;
                }
                c.credit_update_queued = true;
            }
            h.fwd_cnt = c.fwd_cnt;
        }
        self.control.push_back(h);
    }

    /// Whether so many control packets wait for receive buffers that the guest's transmit
    /// queue must wait (see `MAX_CONTROL_BACKLOG`).
    pub fn control_full(&self) -> bool {
        self.control.len() >= MAX_CONTROL_BACKLOG
    }

    pub(super) fn rst(&mut self, key: Key) {
        self.push_control(key, OP_RST, 0);
    }

    /// Closes a connection (the host socket sees EOF).
    pub(super) fn close(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            self.rx_ready.retain(|k| *k != key);
            if c.registered.is_some() {
                self.fd_ops.push(FdOp::Remove(fd, Some(c.stream)));
            }
        }
    }

    /// Queues the epoll change a connection needs after its state moved.
    pub(super) fn sync_interest(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        let fd = c.stream.as_raw_fd();
        let want = c.desired_events();
        match (c.registered, want) {
            (None, Some(ev)) => self.fd_ops.push(FdOp::Add(fd, ev)),
            (Some(old), Some(ev)) if old != ev => self.fd_ops.push(FdOp::Modify(fd, ev)),
            (Some(_), None) => self.fd_ops.push(FdOp::Remove(fd, None)),
            _ => {}
        }
        c.registered = want;
        if c.wants_rx() && !self.rx_ready.contains(&key) {
            self.rx_ready.push_back(key);
        }
    }

    fn insert(&mut self, key: Key, conn: Connection) {
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.sync_interest(key);
    }

    /// Handles one packet the guest transmitted.
    pub fn handle_tx(&mut self, mem: &GuestMemoryMmap, chain: &Chain, hdr: &Header, m: &VsockMetrics) {
        m.tx_packets.inc();
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            guest_warn!("vsock: dropping packet from cid {} to cid {} (guest is {})", hdr.src_cid, hdr.dst_cid, self.guest_cid);
            m.errors.inc();
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.rst(key);
            }
            m.errors.inc();
            return;
        }
        if hdr.op == OP_REQUEST {
            self.guest_connect(key, hdr, m);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if hdr.op != OP_RST {
                self.rst(key);
            }
            return;
        };
        c.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        match hdr.op {
            OP_RESPONSE if c.state == ConnState::LocalInit => {
                c.state = ConnState::Established;
                let line = format!("OK {}\n", key.0);
                if c.stream.write_all(line.as_bytes()).is_err() {
                    self.close(key);
                    self.rst(key);
                    return;
                }
                m.conns_opened.inc();
            }
            OP_RW if c.state == ConnState::Established && !c.peer_shut_send => {
                let len = hdr.len as usize;
                let segs = chain::segments(&chain.readable, HDR_SIZE as u64, len as u64);
                let data = match GuestIovecs::new(mem, &segs, Dir::FromGuest) {
                    Ok(d) if d.len() == len => d,
                    _ => {
                        m.errors.inc();
                        return;
                    }
                };
                m.tx_bytes.add(len as u64);
                let buffered = c.pending.len();
                let pushed = c.push(&data);
                m.tx_buffered_bytes.add(c.pending.len().saturating_sub(buffered) as u64);
                match pushed {
                    PushResult::Ok => {}
                    PushResult::CreditViolation => {
                        guest_warn!("vsock: guest overran the credit of port {}", key.0);
                        m.errors.inc();
                        self.close(key);
                        self.rst(key);
                        return;
                    }
                    PushResult::HostGone => {
                        self.close(key);
                        self.rst(key);
                        return;
                    }
                }
                if c.needs_credit_update() {
                    self.push_control(key, OP_CREDIT_UPDATE, 0);
                }
            }
            OP_CREDIT_REQUEST => self.push_control(key, OP_CREDIT_UPDATE, 0),
            OP_CREDIT_UPDATE => {}
            OP_SHUTDOWN => {
                c.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                c.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                if c.peer_shut_send && c.peer_shut_rcv {
                    // The guest closed. Data it sent that the host socket has not taken yet
                    // is still delivered: the connection stays until it is flushed (on
                    // writability, see handle_fd) and only then gets the RST that ends it.
                    if !c.flush() || c.closed_and_flushed() {
                        self.close(key);
                        self.rst(key);
                        return;
                    }
                }
                if c.peer_shut_send && !c.flush() {
                    self.close(key);
                    self.rst(key);
                    return;
                }
            }
            OP_RST => {
                let _ = c.flush();
                self.close(key);
                return;
            }
            _ => {
                guest_warn!("vsock: unexpected op {} on port {} pair", hdr.op, key.0);
                m.errors.inc();
                self.close(key);
                self.rst(key);
                return;
            }
        }
        self.sync_interest(key);
    }

    fn guest_connect(&mut self, key: Key, hdr: &Header, m: &VsockMetrics) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            m.conns_refused.inc();
            self.rst(key);
            return;
        }
        let stream = match self.connector.connect(key.0) {
            Ok(s) => s,
            Err(_) => {
                m.conns_refused.inc();
                self.rst(key);
                return;
            }
        };
        let mut c = Connection::new(stream, ConnState::Established);
        c.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        self.insert(key, c);
        self.push_control(key, OP_RESPONSE, 0);
        m.conns_opened.inc();
    }

    /// Accepts pending host clients.
    pub fn accept(&mut self) {
        loop {
            // Non-blocking from the start: the event loop may not use ioctl(FIONBIO).
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            match socket::accept4(self.listener.as_raw_fd(), flags).map(|fd| {
                // SAFETY: accept4 just returned this descriptor; nothing else owns it.
                UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) })
            }) {
                Ok(stream) => {
                    raise_send_buffer(&stream);
                    let fd = stream.as_raw_fd();
                    self.fd_ops.push(FdOp::Add(fd, EventSet::IN));
                    self.handshakes.insert(fd, Handshake { stream, line: Vec::new() });
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }

    /// Handles readiness of a host socket (a handshake or a connection).
    pub fn handle_fd(&mut self, fd: RawFd, events: EventSet, m: &VsockMetrics) {
        if self.handshakes.contains_key(&fd) {
            self.handshake_readable(fd, m);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else { return };
        let Some(c) = self.conns.get_mut(&key) else { return };
        m.host_events.inc();
        if events.intersects(EventSet::OUT) && !c.flush() {
            self.close(key);
            self.rst(key);
            return;
        }
        if c.closed_and_flushed() {
            // A closed guest connection whose last data is now with the host.
            self.close(key);
            self.rst(key);
            return;
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR) {
            c.readable = true;
            if events.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR) {
                // The rest is read until EOF; a level-triggered hang-up would keep firing, so
                // stop polling for input.
                c.host_eof = true;
            }
        }
        if c.needs_credit_update() {
            self.push_control(key, OP_CREDIT_UPDATE, 0);
        }
        self.sync_interest(key);
    }

    fn handshake_readable(&mut self, fd: RawFd, m: &VsockMetrics) {
        let Some(h) = self.handshakes.get_mut(&fd) else { return };
        let mut byte = [0u8; 1];
        // Byte by byte so nothing after the newline (the first payload bytes) is consumed.
        let done = loop {
            match h.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break Ok(()),
                Ok(_) if h.line.len() < MAX_CONNECT_LINE => h.line.push(byte[0]),
                Ok(_) => break Err(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break Err(()),
            }
        };
        let Some(h) = self.handshakes.remove(&fd) else { return };
        let port = match (done, parse_connect(&h.line)) {
            // A guest that leaves its control packets unread gets no new connections either.
            (Ok(()), Some(p)) if self.conns.len() < MAX_CONNECTIONS && !self.control_full() => p,
            _ => {
                m.conns_refused.inc();
                self.fd_ops.push(FdOp::Remove(fd, Some(h.stream)));
                return;
            }
        };
        // The connection re-registers the fd with its own interest.
        self.fd_ops.push(FdOp::Remove(fd, None));
        let local = self.alloc_host_port(port);
        let key = (local, port);
        self.insert(key, Connection::new(h.stream, ConnState::LocalInit));
        self.push_control(key, OP_REQUEST, 0);
    }

    fn alloc_host_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = self.next_host_port.checked_add(1).unwrap_or(HOST_PORT_BASE);
            if !self.conns.contains_key(&(p, peer)) {
                return p;
            }
        }
    }
}

/// A packet header from the host side of connection `key`.
pub(super) fn header(guest_cid: u64, key: Key, op: u16) -> Header {
    Header { src_cid: HOST_CID, dst_cid: guest_cid, src_port: key.0, dst_port: key.1, type_: TYPE_STREAM, op, buf_alloc: CONN_BUF_ALLOC, ..Header::default() }
}

impl Muxer {
    /// Every host socket fd (handshakes and connections).
    pub fn fds(&self) -> Vec<RawFd> {
        self.handshakes.keys().chain(self.by_fd.keys()).copied().collect()
    }
}
