//! virtio-fs as a vhost-user frontend: the guest's FUSE requests are served by a separate
//! backend process (the upstream virtiofsd), which maps guest memory from the memfd regions
//! and reads and writes the queues itself. husk-vmm only
//!
//! - connects to the backend's unix socket at start-up, or takes over the connection the
//!   parent passed as a descriptor (`SET_OWNER`, features, protocol features:
//!   [`backend::Backend::connect`], [`backend::Backend::inherit`]),
//! - on activation, hands it the memory table and each queue (size, addresses, base, the
//!   queue's ioeventfd as kick, an EventFd of ours as call) and enables the queues; this runs
//!   on the event-loop thread, since vCPU threads may not use sockets under their seccomp
//!   filter,
//! - routes the backend's call EventFds to the device's GSI as irqfds, so KVM raises the
//!   interrupt without a wake-up of husk-vmm per reply (relays them on the event loop
//!   when that cannot be done, and while the backend is gone),
//! - answers the config space (`tag`, `num_request_queues`), and
//! - when the backend hangs up or fails, sets DEVICE_NEEDS_RESET and takes the queues over,
//!   answering every request (the one in flight included) with `EIO` until the driver resets
//!   the device ([`failover`]). husk-vmm keeps running.
//!
//! A VM restored copy-on-write from a template has RAM the backend cannot map. Its device
//! relays: the backend is given only a small memfd of husk-vmm's with rings of its own, and
//! husk-vmm copies each request there and each reply back ([`relay`]). The device chooses at
//! each activation, from the memory it is given.
//!
//! A snapshot can hold the device only while the guest has never used its queues (before it
//! mounts the share), since the backend's state cannot be saved (`save_progress` of [`Fs`]).
//! A restored VM builds the device as at boot, connected to the backend it is given, and the
//! transport activates it with the saved queues: the same handshake then hands that backend
//! the restored VM's memory and the saved progress.
//!
//! No DAX window: file data always travels through the queues.

pub mod backend;
pub mod device;
mod event_handler;
pub mod failover;
pub mod metrics;
pub mod relay;

#[cfg(test)]
mod tests;

pub use device::Fs;

use std::path::PathBuf;
use std::time::Duration;

/// Queue index of the high-priority queue (FORGET, INTERRUPT).
pub const HIPRIO_QUEUE: usize = 0;
/// Queue index of the (only) request queue.
pub const REQUEST_QUEUE: usize = 1;
/// Request queues offered (`num_request_queues` in the config space).
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// Queues of the device: the high-priority queue and the request queues.
pub const NUM_QUEUES: usize = 1 + NUM_REQUEST_QUEUES as usize;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// Size of the `tag` field of the config space (a tag of this length has no NUL).
pub const TAG_LEN: usize = 36;
/// Size of the config space: `tag[36]`, `num_request_queues` (le32).
pub const CONFIG_SPACE_SIZE: usize = TAG_LEN + 4;
/// Longest wait for one reply of the backend; a backend that takes longer is treated as
/// gone (the handshake runs on the event-loop thread, which no backend may stall for long).
pub const BACKEND_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of a FUSE request header (`struct fuse_in_header`).
pub const FUSE_IN_HEADER_LEN: usize = 40;
/// Size of a FUSE reply header (`struct fuse_out_header`).
pub const FUSE_OUT_HEADER_LEN: usize = 16;

/// Configuration of one virtio-fs device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The tag the guest mounts (1 to [`TAG_LEN`] bytes).
    pub tag: String,
    /// The vhost-user socket of the backend.
    pub socket: PathBuf,
    /// A connection to the backend inherited from the parent as this descriptor; `socket`
    /// then only names the backend.
    pub fd: Option<std::os::fd::RawFd>,
}

/// Errors of setting up a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag does not fit the config space.
    #[error("invalid virtio-fs tag {0:?}: must be 1 to 36 bytes")]
    Tag(String),
    /// The backend's socket could not be connected to.
    #[error("cannot connect to the vhost-user backend at {socket}")]
    Connect {
        /// Socket path.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The inherited descriptor is not a connection to a backend.
    #[error("descriptor {fd} given for the vhost-user backend at {socket} cannot be used")]
    Inherit {
        /// The descriptor number.
        fd: std::os::fd::RawFd,
        /// Socket path (the backend's name).
        socket: PathBuf,
        /// What is wrong with it.
        #[source]
        source: std::io::Error,
    },
    /// The backend refused or failed a step of the vhost-user handshake.
    #[error("vhost-user backend at {socket}: {step} failed")]
    Handshake {
        /// Socket path.
        socket: PathBuf,
        /// The message that failed.
        step: &'static str,
        /// The cause.
        #[source]
        source: vhost::Error,
    },
    /// The backend lacks something this frontend requires.
    #[error("vhost-user backend at {socket} does not offer {what}")]
    Unsupported {
        /// Socket path.
        socket: PathBuf,
        /// What is missing.
        what: String,
    },
    /// An EventFd could not be created.
    #[error("cannot create an EventFd for the virtio-fs device")]
    EventFd(#[source] std::io::Error),
    /// The relay's shadow memory could not be created.
    #[error("cannot create the shadow memory of the virtio-fs relay")]
    Shadow(#[source] crate::memory::MemoryError),
}
