//! virtio-vsock with the hybrid unix-socket backend (the Firecracker convention).
//!
//! - Host-initiated: a host process connects to the unix socket `uds`, writes
//!   `CONNECT <port>\n`, and reads `OK <hostport>\n` once the guest accepted; the socket is
//!   then the stream to guest port `<port>`.
//! - Guest-initiated: a guest connection to host CID 2, port P is forwarded to the unix socket
//!   `<uds>_<P>`; if nothing listens there, the guest gets a reset (ECONNRESET/ECONNREFUSED).
//!   The socket is created and connected by the device's `vsock-connect` thread
//!   ([`connector`]), not by the event loop.
//! - Flow control is the virtio-vsock credit scheme in both directions.

mod connection;
pub mod connector;
pub mod device;
mod event_handler;
pub mod metrics;
mod muxer;
pub mod packet;
mod rx;
mod unix;

#[cfg(test)]
mod tests;

pub use device::Vsock;

use std::path::PathBuf;

/// CID of the host.
pub const HOST_CID: u64 = 2;
/// Queue index of the receive queue (device → driver).
pub const RXQ: usize = 0;
/// Queue index of the transmit queue (driver → device).
pub const TXQ: usize = 1;
/// Queue index of the event queue.
pub const EVQ: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest payload accepted in one packet (bigger packets are malformed).
pub const MAX_PKT_PAYLOAD: u32 = 64 * 1024;
/// Receive buffer each connection advertises to the guest.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Most simultaneous connections (further ones are refused with RST).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most control packets (responses, resets, credit updates) waiting for guest receive
/// buffers. Most of them answer packets the guest sent, so once this many wait, the device
/// stops taking packets from the transmit queue until the guest offers receive buffers:
/// a guest that transmits without ever receiving cannot make the VMM's memory grow.
pub const MAX_CONTROL_BACKLOG: usize = 128;
/// Longest `CONNECT <port>\n` line accepted from a host client.
pub const MAX_CONNECT_LINE: usize = 32;
/// First port handed out to host-initiated connections.
pub const HOST_PORT_BASE: u32 = 1 << 30;

/// Configuration of the vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (>= 3).
    pub guest_cid: u64,
    /// Unix socket the host connects to; guest-initiated connections go to `<uds>_<port>`.
    pub uds_path: PathBuf,
}

/// Errors of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved.
    #[error("invalid vsock guest cid {0}: must be at least 3 and below 2^32-1")]
    InvalidCid(u64),
    /// The unix socket could not be bound.
    #[error("cannot listen on vsock unix socket {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An EventFd could not be created.
    #[error("cannot create an EventFd for the vsock device")]
    EventFd(#[source] std::io::Error),
    /// The thread that connects guest requests could not be started.
    #[error("cannot start the vsock connector thread")]
    Connector(#[source] std::io::Error),
}
