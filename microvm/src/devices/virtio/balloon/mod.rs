//! virtio-balloon offering only free page reporting (`VIRTIO_BALLOON_F_REPORTING`).
//!
//! The host never asks the guest to inflate (`num_pages` is always 0). The guest kernel's
//! page reporting (Linux `mm/page_reporting.c`) hands free blocks of `page_reporting_order`
//! (the pageblock order: 2 MiB with husk's kernel, which has HUGETLBFS; 4 MiB without) to the
//! device, starting 2 s after such blocks were freed, at most [`MAX_REPORT_DESCS`] per chain
//! on the reporting queue, each descriptor one block (guest-physical address and length,
//! device-writable). It reports all free memory once when the driver binds, untouched pages
//! included (punching those frees nothing, but they count in `reported_bytes`). The device
//! returns each block's pages to the host by punching a hole in guest RAM's memfd
//! (`fallocate(PUNCH_HOLE | KEEP_SIZE)`): RAM is a shared mapping of that file, which a
//! vhost-user backend (virtiofsd) maps too, so dropping only this process's mapping
//! (`MADV_DONTNEED`) would free nothing. The guest reads zeros from a reported page when it
//! uses it again. RAM restored copy-on-write from a snapshot (no vhost-user backend maps it)
//! drops the VM's own copies of the pages instead, and the guest reads the snapshot's bytes.
//!
//! Linux always creates the inflate and deflate queues; chains on them (which a driver only
//! sends when the host asked for a size) are completed unread and counted.

pub mod device;
mod event_handler;
pub mod metrics;

#[cfg(test)]
mod tests;

pub use device::Balloon;

/// Queue index: inflate (guest gives pages to the host when asked).
pub const INFLATEQ: usize = 0;
/// Queue index: deflate (guest takes pages back).
pub const DEFLATEQ: usize = 1;
/// Queue index: free page reporting. It follows the deflate queue because neither
/// `VIRTIO_BALLOON_F_STATS_VQ` nor `VIRTIO_BALLOON_F_FREE_PAGE_HINT` is offered.
pub const REPORTQ: usize = 2;
/// Number of queues.
pub const NUM_QUEUES: usize = 3;
/// Size of each queue. Linux refuses a reporting queue smaller than its
/// `PAGE_REPORTING_CAPACITY` (32).
pub const QUEUE_SIZE: u16 = 64;
/// Feature bit: the device accepts free page reports.
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;
/// Most descriptors in one report chain: Linux sends at most `PAGE_REPORTING_CAPACITY`.
pub const MAX_REPORT_DESCS: usize = 32;
/// Most descriptors read from an inflate or deflate chain before it is completed anyway
/// (the chain is not used; this only bounds the walk).
pub const MAX_PFN_DESCS: usize = 4;
/// Size of the config space: `num_pages` and `actual`, both le32.
pub const CONFIG_SIZE: usize = 8;
/// Granule in which memory goes back to the host: reported ranges are rounded inward to it.
pub const PAGE_SIZE: u64 = 4096;

/// Errors of the balloon device.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// An EventFd could not be created.
    #[error("cannot create an EventFd for the balloon device")]
    EventFd(#[source] std::io::Error),
}

/// Why a report chain was refused. Nothing of a refused chain is given back to the host.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The chain is malformed, longer than [`MAX_REPORT_DESCS`] or names memory outside RAM.
    #[error(transparent)]
    Chain(#[from] crate::devices::virtio::chain::ChainError),
    /// A descriptor is device-readable; the driver adds reports as device-writable buffers.
    #[error("report chain {head} has {count} device-readable descriptors")]
    Readable {
        /// Head index.
        head: u16,
        /// Readable descriptors in it.
        count: usize,
    },
    /// A descriptor has length 0.
    #[error("report chain {head}: descriptor {index} is empty")]
    Empty {
        /// Head index.
        head: u16,
        /// Position in the chain.
        index: usize,
    },
    /// A range is not inside one RAM region (crosses regions, or lies outside RAM).
    #[error("report chain {head}: range {addr:#x}+{len:#x} is not inside one guest RAM region")]
    NotInOneRegion {
        /// Head index.
        head: u16,
        /// Range start.
        addr: u64,
        /// Range length.
        len: u32,
    },
}
