//! Parsing a virtio-blk request out of a validated descriptor chain.

use crate::devices::virtio::chain::{self, Chain, Desc};
use crate::memory::GuestMemoryMmap;

use super::VIRTIO_BLK_T_OUT;

/// Size of the request header (type, reserved, sector).
pub const HDR_SIZE: u64 = 16;

/// Why a chain is not a usable request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The header is missing or short.
    #[error("request header needs 16 readable bytes, chain has {0}")]
    ShortHeader(u64),
    /// No writable byte for the status.
    #[error("request has no writable status byte")]
    NoStatus,
    /// Guest memory failed under a validated chain.
    #[error("guest memory access failed")]
    Memory,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Request type (`VIRTIO_BLK_T_*`).
    pub type_: u32,
    /// First sector.
    pub sector: u64,
    /// The data buffers: device-writable for reads and GET_ID, device-readable for writes.
    pub data: Vec<(vm_memory::GuestAddress, usize)>,
    /// Total data bytes.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: vm_memory::GuestAddress,
}

/// Parses `chain` as a block request. Only a chain without a status byte (or header) is an
/// error; everything else is judged when the request is executed.
pub fn parse(mem: &GuestMemoryMmap, chain: &Chain) -> Result<Request, RequestError> {
    let readable = chain.readable_len();
    if readable < HDR_SIZE {
        return Err(RequestError::ShortHeader(readable));
    }
    let mut hdr = [0u8; HDR_SIZE as usize];
    chain::read_from(mem, &chain.readable, 0, &mut hdr).map_err(|_| RequestError::Memory)?;
    let type_ = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&hdr[8..16]);
    let sector = u64::from_le_bytes(sector);

    let writable = chain.writable_len();
    let last: &Desc = chain.writable.last().ok_or(RequestError::NoStatus)?;
    if last.len == 0 {
        return Err(RequestError::NoStatus);
    }
    let status = vm_memory::GuestAddress(last.addr.0 + u64::from(last.len) - 1);
    let (data, data_len) = if type_ == VIRTIO_BLK_T_OUT {
        let len = readable - HDR_SIZE;
        (chain::segments(&chain.readable, HDR_SIZE, len), len)
    } else {
        let len = writable - 1;
        (chain::segments(&chain.writable, 0, len), len)
    };
    Ok(Request { type_, sector, data, data_len, status })
}
