//! virtio-blk backed by a raw image file.
//!
//! Requests are served on one worker thread per disk, never on the event loop: the event
//! handler only forwards queue notifications to the worker.
//!
//! A disk is a boot disk (its image given in the configuration, fixed) or a slot (booted
//! empty; images are attached and detached through the control API, see [`slot`]). A slot
//! never offers VIRTIO_BLK_F_RO, since features are fixed when the driver binds: a read-only
//! attachment refuses writes in the device (VIRTIO_BLK_S_IOERR) instead.

pub mod device;
mod event_handler;
pub mod metrics;
pub mod request;
pub mod slot;
pub mod worker;

#[cfg(test)]
mod slot_tests;
#[cfg(test)]
mod tests;

pub use device::Block;
pub use husk_config::api::DiskKind;
pub use slot::{DiskHandle, SlotError};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Sector size in bytes.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments in one request (`seg_max`): a chain is header + data + status and
/// must fit the queue.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Longest serial (`GET_ID`) the protocol carries.
pub const ID_BYTES: usize = 20;

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: get the serial.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error (also: write to a read-only disk, access past the end).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request type.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Feature: the config space holds `seg_max`.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature: the device supports flush.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;

/// Configuration of one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Refuse writes.
    pub read_only: bool,
    /// Serial reported by `GET_ID` (at most 20 bytes); the guest sees it in
    /// `/sys/block/vdX/serial`.
    pub id: String,
    /// The image as a descriptor inherited from the parent (then `path` only names it).
    pub fd: Option<std::os::fd::RawFd>,
}

/// What backs a disk, as plain data: the device's whole attachment state, which a snapshot
/// of a paused VM can save and a restore can attach again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The image.
    pub path: PathBuf,
    /// Serial (`GET_ID`).
    pub id: String,
    /// Writes fail with IOERR.
    pub read_only: bool,
    /// Capacity in 512-byte sectors (the image's size, rounded down).
    pub sectors: u64,
}

/// Errors of the block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("cannot open disk image {}", path.display())]
    Open {
        /// Image path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image is neither a regular file nor a block device.
    #[error("disk image {} is not a regular file or block device", path.display())]
    NotAnImage {
        /// Image path.
        path: PathBuf,
    },
    /// An image passed as a descriptor is not open the way the attachment needs.
    #[error("the descriptor passed for disk image {} is not open for {}", path.display(), if *read_only { "reading" } else { "reading and writing (read_only is false)" })]
    DescriptorMode {
        /// What the request names the image.
        path: PathBuf,
        /// Whether the attachment was read-only.
        read_only: bool,
    },
    /// The serial is too long.
    #[error("disk id {id:?} is longer than {ID_BYTES} bytes")]
    IdTooLong {
        /// The id.
        id: String,
    },
    /// An EventFd could not be created.
    #[error("cannot create an EventFd for disk {0}")]
    EventFd(String, #[source] std::io::Error),
    /// The worker thread could not be started.
    #[error("cannot start the I/O thread of disk {0}")]
    Worker(String, #[source] std::io::Error),
}
