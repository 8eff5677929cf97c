//! A blocking rtnetlink socket (netlink-sys) speaking netlink-packet-route's messages: one
//! request at a time, answered by an ACK or a dump. A socket belongs to the network namespace
//! it was opened in, whichever thread uses it later; [`Rtnl::open_in`] opens one in another
//! namespace from a short-lived thread, so no agent thread ever changes namespace.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// Largest datagram read at once.
const RECV_BUF: usize = 1 << 20;
/// Longest dump accepted (a pod namespace holds a handful of links).
const MAX_DUMP: usize = 10_000;

fn decode(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// One rtnetlink socket.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, seq: 0, buf: Vec::with_capacity(RECV_BUF) })
    }

    /// Opens a socket in network namespace `ns`.
    pub fn open_in(ns: BorrowedFd<'_>) -> io::Result<Rtnl> {
        std::thread::scope(|s| {
            let t = std::thread::Builder::new().name("netns".into()).spawn_scoped(s, || {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
                Rtnl::open()
            })?;
            t.join().unwrap_or_else(|_| Err(io::Error::other("the netns thread panicked")))
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        Ok(self.seq)
    }

    /// Reads one datagram, passing the messages of `seq` to `each`; true once the answer ended.
    fn recv(&mut self, seq: u32, each: &mut dyn FnMut(RouteNetlinkMessage)) -> io::Result<bool> {
        self.buf.clear();
        let n = self.socket.recv(&mut self.buf, libc::MSG_TRUNC)?;
        if n > self.buf.len() {
            return Err(decode(format!("a {n}-byte netlink datagram does not fit the buffer")));
        }
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n]).map_err(|e| decode(e.to_string()))?;
            let len = msg.header.length as usize;
            if len == 0 {
                return Err(decode("a zero-length netlink message".into()));
            }
            off += (len + 3) & !3;
            if msg.header.sequence_number != seq {
                continue;
            }
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Error(e) => return e.code.map_or(Ok(true), |c| Err(io::Error::from_raw_os_error(-c.get()))),
                NetlinkPayload::InnerMessage(m) => each(m),
                _ => {}
            }
        }
        Ok(false)
    }

    /// Sends `msg` with `flags` (plus REQUEST and ACK); the kernel's refusal is the error.
    pub fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        while !self.recv(seq, &mut |_| {})? {}
        Ok(())
    }

    /// Sends the dump request `msg` and returns the answer's messages.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        while !self.recv(seq, &mut |m| out.push(m))? {
            if out.len() > MAX_DUMP {
                return Err(decode(format!("a netlink dump of more than {MAX_DUMP} messages")));
            }
        }
        Ok(out)
    }
}
