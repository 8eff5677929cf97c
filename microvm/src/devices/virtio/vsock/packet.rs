//! The virtio-vsock packet header and how it is read from and written to descriptor chains.

use crate::devices::virtio::chain::{self, Chain};
use crate::memory::GuestMemoryMmap;

/// Size of the packet header in bytes.
pub const HDR_SIZE: usize = 44;
/// Socket type: stream.
pub const TYPE_STREAM: u16 = 1;

/// Operation: connection request.
pub const OP_REQUEST: u16 = 1;
/// Operation: connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Operation: reset / refuse.
pub const OP_RST: u16 = 3;
/// Operation: shutdown (flags say which direction).
pub const OP_SHUTDOWN: u16 = 4;
/// Operation: data.
pub const OP_RW: u16 = 5;
/// Operation: credit update.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Operation: credit request.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// Shutdown flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Why a transmitted packet was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// The chain is malformed.
    #[error("malformed descriptor chain")]
    Chain(#[from] chain::ChainError),
    /// Fewer than 44 readable bytes.
    #[error("packet of {0} bytes is shorter than the vsock header")]
    Short(u64),
    /// The header's length is larger than the data or the limit.
    #[error("packet header claims {claimed} payload bytes, chain holds {available} (limit {limit})")]
    BadLength {
        /// Length in the header.
        claimed: u32,
        /// Readable bytes after the header.
        available: u64,
        /// Payload limit.
        limit: u32,
    },
    /// A receive buffer cannot hold even a header.
    #[error("receive buffer of {0} bytes cannot hold a vsock header")]
    RxTooSmall(u64),
    /// Guest memory went away under a validated chain.
    #[error("guest memory access failed")]
    Memory,
}

/// The virtio-vsock header (all fields little-endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes a header.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Reads and checks the header of a transmitted (driver → device) chain. The payload is the
/// `len` readable bytes after the header.
pub fn parse_tx(mem: &GuestMemoryMmap, chain: &Chain) -> Result<Header, PacketError> {
    let total = chain.readable_len();
    if total < HDR_SIZE as u64 {
        return Err(PacketError::Short(total));
    }
    let mut raw = [0u8; HDR_SIZE];
    let n = chain::read_from(mem, &chain.readable, 0, &mut raw).map_err(|_| PacketError::Memory)?;
    if n != HDR_SIZE {
        return Err(PacketError::Short(n as u64));
    }
    let hdr = Header::from_bytes(&raw);
    let available = total - HDR_SIZE as u64;
    if hdr.len > MAX_PAYLOAD || u64::from(hdr.len) > available {
        return Err(PacketError::BadLength { claimed: hdr.len, available, limit: MAX_PAYLOAD });
    }
    Ok(hdr)
}

const MAX_PAYLOAD: u32 = super::MAX_PKT_PAYLOAD;

/// Writes `hdr` at the start of a receive (device → driver) chain.
pub fn write_rx_header(mem: &GuestMemoryMmap, chain: &Chain, hdr: &Header) -> Result<(), PacketError> {
    let cap = chain.writable_len();
    if cap < HDR_SIZE as u64 {
        return Err(PacketError::RxTooSmall(cap));
    }
    chain::write_to(mem, &chain.writable, 0, &hdr.to_bytes()).map_err(|_| PacketError::Memory)?;
    Ok(())
}
