//! The vhost-user session with the backend: connecting and negotiating at start-up, handing
//! it guest memory and the queues on activation, stopping the queues on reset.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::{FsError, BACKEND_REPLY_TIMEOUT, NUM_QUEUES};
use crate::devices::virtio::{feature, COMMON_FEATURES, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemoryMmap;

/// Protocol features used when the backend offers them: REPLY_ACK (every message is
/// acknowledged, so a refusal surfaces at the step that caused it) and MQ (the backend says
/// how many queues it serves).
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::REPLY_ACK.union(VhostUserProtocolFeatures::MQ);

/// Connection attempts refused before giving up, and the pause between them.
const CONNECT_RETRIES: u32 = 10;
const CONNECT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// A step of starting or stopping the queues failed.
#[derive(Debug, thiserror::Error)]
#[error("vhost-user {step} failed{}", queue.map(|q| format!(" for queue {q}")).unwrap_or_default())]
pub struct BackendError {
    /// The message (or preparation) that failed.
    pub step: &'static str,
    /// The queue it concerned, if any.
    pub queue: Option<usize>,
    /// The cause.
    #[source]
    pub source: vhost::Error,
}

/// A connected, negotiated vhost-user backend.
pub struct Backend {
    frontend: Frontend,
    socket: PathBuf,
    /// Virtio features the backend offers.
    features: u64,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("socket", &self.socket).field("features", &self.features).finish()
    }
}

impl Backend {
    /// Connects to the backend at `socket` and negotiates: `SET_OWNER`, `GET_FEATURES`
    /// (VIRTIO_F_VERSION_1 and VHOST_USER_F_PROTOCOL_FEATURES are required), the protocol
    /// features, and with MQ the queue count. Every reply is awaited at most
    /// [`BACKEND_REPLY_TIMEOUT`].
    pub fn connect(socket: &Path) -> Result<Self, FsError> {
        let stream = connect_retrying(socket).map_err(|source| FsError::Connect { socket: socket.to_path_buf(), source })?;
        Self::negotiate(stream, socket)
    }

    /// Takes over a connection to the backend that the parent opened and passed as descriptor
    /// `fd` (a jailed VMM cannot reach `socket`, which then only names the backend), and
    /// negotiates as [`Backend::connect`] does. `fd` must be a connected unix stream socket;
    /// it becomes close-on-exec.
    pub fn inherit(fd: RawFd, socket: &Path) -> Result<Self, FsError> {
        let stream = inherited_stream(fd).map_err(|source| FsError::Inherit { fd, socket: socket.to_path_buf(), source })?;
        Self::negotiate(stream, socket)
    }

    fn negotiate(stream: UnixStream, socket: &Path) -> Result<Self, FsError> {
        let connect_err = |source| FsError::Connect { socket: socket.to_path_buf(), source };
        stream.set_read_timeout(Some(BACKEND_REPLY_TIMEOUT)).map_err(connect_err)?;
        stream.set_write_timeout(Some(BACKEND_REPLY_TIMEOUT)).map_err(connect_err)?;
        let mut frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
        let step = |step: &'static str| move |source| FsError::Handshake { socket: socket.to_path_buf(), step, source };
        let unsupported = |what: String| FsError::Unsupported { socket: socket.to_path_buf(), what };

        frontend.set_owner().map_err(step("SET_OWNER"))?;
        let features = frontend.get_features().map_err(step("GET_FEATURES"))?;
        if features & feature(VIRTIO_F_VERSION_1) == 0 {
            return Err(unsupported("VIRTIO_F_VERSION_1".into()));
        }
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(unsupported("VHOST_USER_F_PROTOCOL_FEATURES".into()));
        }
        let offered = frontend.get_protocol_features().map_err(step("GET_PROTOCOL_FEATURES"))?;
        let acked = offered & WANTED_PROTOCOL_FEATURES;
        frontend.set_protocol_features(acked).map_err(step("SET_PROTOCOL_FEATURES"))?;
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if acked.contains(VhostUserProtocolFeatures::MQ) {
            let n = frontend.get_queue_num().map_err(step("GET_QUEUE_NUM"))?;
            if n < NUM_QUEUES as u64 {
                return Err(unsupported(format!("{NUM_QUEUES} queues (it serves {n})")));
            }
        }
        Ok(Self { frontend, socket: socket.to_path_buf(), features })
    }

    /// The backend's socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The virtio features the device offers the driver: the backend's, limited to what this
    /// frontend and its transport handle (no DAX, no notification queue).
    pub fn device_features(&self) -> u64 {
        self.features & COMMON_FEATURES
    }

    /// Hands the backend everything it needs to serve the queues and enables them:
    /// `SET_FEATURES` (`acked` plus VHOST_USER_F_PROTOCOL_FEATURES), `SET_MEM_TABLE` (each
    /// region's memfd and offset), and per queue `SET_VRING_NUM`, `SET_VRING_ADDR` (the
    /// rings' addresses in this process, which the backend translates through the memory
    /// table), `SET_VRING_BASE`, `SET_VRING_CALL` (`calls[i]`), `SET_VRING_KICK`
    /// (`kicks[i]`, the queue's ioeventfd), then `SET_VRING_ENABLE` for each.
    pub fn start(&mut self, mem: &GuestMemoryMmap, queues: &[Queue], acked: u64, calls: &[EventFd], kicks: &[EventFd]) -> Result<(), BackendError> {
        let fail = |step, queue| move |source| BackendError { step, queue, source };
        let f = &mut self.frontend;
        f.set_features(acked | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()).map_err(fail("SET_FEATURES", None))?;
        let regions =
            mem.iter().map(VhostUserMemoryRegionInfo::from_guest_region).collect::<Result<Vec<_>, _>>().map_err(fail("describing guest memory", None))?;
        f.set_mem_table(&regions).map_err(fail("SET_MEM_TABLE", None))?;
        if queues.len() != calls.len() || queues.len() != kicks.len() {
            return Err(fail("matching queues with their EventFds", None)(vhost::Error::InvalidQueue));
        }
        for (i, q) in queues.iter().enumerate() {
            let host = |addr: u64, bad: vhost::Error| {
                mem.get_host_address(GuestAddress(addr)).map(|p| p as u64).map_err(|_| fail("translating ring addresses", Some(i))(bad))
            };
            let ring = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table(), vhost::Error::DescriptorTableAddress)?,
                used_ring_addr: host(q.used_ring(), vhost::Error::UsedAddress)?,
                avail_ring_addr: host(q.avail_ring(), vhost::Error::AvailAddress)?,
                log_addr: None,
            };
            f.set_vring_num(i, q.size()).map_err(fail("SET_VRING_NUM", Some(i)))?;
            f.set_vring_addr(i, &ring).map_err(fail("SET_VRING_ADDR", Some(i)))?;
            f.set_vring_base(i, q.next_avail()).map_err(fail("SET_VRING_BASE", Some(i)))?;
            f.set_vring_call(i, &calls[i]).map_err(fail("SET_VRING_CALL", Some(i)))?;
            f.set_vring_kick(i, &kicks[i]).map_err(fail("SET_VRING_KICK", Some(i)))?;
        }
        for i in 0..queues.len() {
            f.set_vring_enable(i, true).map_err(fail("SET_VRING_ENABLE", Some(i)))?;
        }
        Ok(())
    }

    /// Stops the backend's use of the first `queues` queues (`GET_VRING_BASE`, after which a
    /// backend no longer touches that ring).
    pub fn stop(&mut self, queues: usize) -> Result<(), BackendError> {
        for i in 0..queues {
            self.frontend.get_vring_base(i).map_err(|source| BackendError { step: "GET_VRING_BASE", queue: Some(i), source })?;
        }
        Ok(())
    }
}

/// The inherited descriptor `fd` as a stream, once it is known to be a unix stream socket.
fn inherited_stream(fd: RawFd) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage};
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    if fd < 3 {
        return Err(invalid("descriptors 0-2 are stdio"));
    }
    // SAFETY: `fd` is only borrowed for the checks below; it is taken over after them.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    // EBADF for a descriptor that was not inherited, ENOTSOCK for another kind of file.
    if getsockopt(&borrowed, sockopt::SockType)? != SockType::Stream {
        return Err(invalid("not a stream socket"));
    }
    if getsockname::<SockaddrStorage>(fd)?.family() != Some(AddressFamily::Unix) {
        return Err(invalid("not a unix socket"));
    }
    // SAFETY: `fd` is an open unix stream socket that nothing else in this process owns: the
    // configuration gives each inherited descriptor to one device only (VmConfig::validate).
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    nix::fcntl::fcntl(&stream, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    Ok(stream)
}

/// Connects to `socket`, retrying for a moment while nothing listens there yet (a backend
/// binds its socket file before it calls `listen`).
fn connect_retrying(socket: &Path) -> std::io::Result<UnixStream> {
    let mut tries = 0;
    loop {
        match UnixStream::connect(socket) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < CONNECT_RETRIES => {
                tries += 1;
                std::thread::sleep(CONNECT_RETRY_PAUSE);
            }
            r => return r,
        }
    }
}

impl AsRawFd for Backend {
    fn as_raw_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}
