//! virtio-net backed by a host tap device (`IFF_VNET_HDR`, checksum and TSO offloads, mergeable
//! receive buffers).

pub mod device;
mod event_handler;
pub mod metrics;
mod rx;
mod snapshot;
pub mod tap;

#[cfg(test)]
mod tests;

pub use device::Net;

use std::path::PathBuf;

/// Queue index: receive (host → guest).
pub const RXQ: usize = 0;
/// Queue index: transmit (guest → host).
pub const TXQ: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Size of the virtio-net header (virtio 1.x: `virtio_net_hdr_v1`, with `num_buffers`).
pub const VNET_HDR_SIZE: usize = 12;
/// Largest frame plus header moved in one piece (64 KiB TSO frame + Ethernet + header).
pub const MAX_FRAME: usize = 65562 + VNET_HDR_SIZE;

/// Feature: the device handles partial checksums from the guest.
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// Feature: the guest handles partial checksums from the device.
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// Feature: the config space holds the MAC.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature: the guest accepts TSOv4 frames.
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// Feature: the guest accepts TSOv6 frames.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// Feature: the device accepts TSOv4 frames.
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// Feature: the device accepts TSOv6 frames.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// Feature: mergeable receive buffers. The device may spread one received frame over several
/// receive chains; `num_buffers` in the header (in the first chain) says how many. Lets the
/// guest post page-sized buffers instead of 64 KiB ones per frame when it accepts TSO.
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;

/// Configuration of one network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Tap device name (created if absent).
    pub tap: String,
    /// Guest MAC; None lets the guest choose.
    pub mac: Option<[u8; 6]>,
    /// Network namespace file (e.g. `/var/run/netns/X`) the tap lives in.
    pub netns: Option<PathBuf>,
    /// An open tap inherited as this descriptor (then `tap` is its expected name).
    pub fd: Option<std::os::fd::RawFd>,
}

/// Errors of the net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be opened or configured.
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    /// An EventFd could not be created.
    #[error("cannot create an EventFd for the net device on tap {0}")]
    EventFd(String, #[source] std::io::Error),
    /// The timer of a snapshot's hold could not be created.
    #[error("cannot create a timer for the net device on tap {0}")]
    TimerFd(String, #[source] std::io::Error),
}
