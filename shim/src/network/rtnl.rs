//! A blocking rtnetlink socket: one request at a time, answered by an ACK or a dump. The
//! messages are netlink-packet-route's; the socket is netlink-sys's. The socket belongs to
//! the network namespace of the thread that opened it, so a [`Rtnl`] opened inside
//! [`super::netns::run`] talks to that namespace for its whole life.

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// Largest datagram read at once (the kernel's dump batches stay well below this).
const RECV_BUF: usize = 1 << 20;
/// A dump longer than this many messages is refused (a namespace holds a handful of links).
const MAX_DUMP: usize = 100_000;

/// A failed netlink exchange: the kernel's errno, or a transport/decoding problem.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    /// The kernel refused the request.
    #[error("the kernel answered {0}")]
    Kernel(#[source] std::io::Error),
    /// The socket failed.
    #[error("netlink socket")]
    Socket(#[source] std::io::Error),
    /// An answer could not be decoded.
    #[error("undecodable netlink answer: {0}")]
    Decode(String),
}

impl RtnlError {
    /// The kernel's errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Kernel(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// One rtnetlink socket.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl, RtnlError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(RtnlError::Socket)?;
        socket.bind_auto().map_err(RtnlError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(RtnlError::Socket)?;
        Ok(Rtnl { socket, seq: 0, buf: Vec::with_capacity(RECV_BUF) })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, RtnlError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(RtnlError::Socket)?;
        Ok(self.seq)
    }

    /// Reads one datagram and calls `each` for every message of sequence `seq` in it; returns
    /// whether the exchange is complete (DONE, or an ACK/error).
    fn recv(&mut self, seq: u32, each: &mut dyn FnMut(RouteNetlinkMessage)) -> Result<bool, RtnlError> {
        self.buf.clear();
        let n = self.socket.recv(&mut self.buf, libc::MSG_TRUNC).map_err(RtnlError::Socket)?;
        if n > self.buf.len() {
            return Err(RtnlError::Decode(format!("a {n}-byte datagram does not fit the {RECV_BUF}-byte buffer")));
        }
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n]).map_err(|e| RtnlError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            if len == 0 {
                return Err(RtnlError::Decode("a zero-length message".into()));
            }
            off += (len + 3) & !3;
            if msg.header.sequence_number != seq {
                continue;
            }
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(true),
                        Some(code) => Err(RtnlError::Kernel(std::io::Error::from_raw_os_error(-code.get()))),
                    };
                }
                NetlinkPayload::InnerMessage(m) => each(m),
                _ => {}
            }
        }
        Ok(false)
    }

    /// Sends `msg` with `flags` (plus REQUEST and ACK) and waits for the kernel's answer.
    pub fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), RtnlError> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        while !self.recv(seq, &mut |_| {})? {}
        Ok(())
    }

    /// Sends the dump request `msg` and returns every message of the answer.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        loop {
            let done = self.recv(seq, &mut |m| out.push(m))?;
            if out.len() > MAX_DUMP {
                return Err(RtnlError::Decode(format!("a dump of more than {MAX_DUMP} messages")));
            }
            if done {
                return Ok(out);
            }
        }
    }
}
