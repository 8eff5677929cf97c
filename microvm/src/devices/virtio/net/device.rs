//! The net device: features, config space, and frame movement between queues and the
//! backend (a tap, or any frame-preserving socket in tests). No epoll here.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::metrics::NetMetrics;
use super::rx::Held;
use super::snapshot::Hold;
use super::tap::{self, Tap};
use super::*;
use crate::devices::virtio::active::Active;
use crate::devices::virtio::chain::{self, MAX_CHAIN_DESCS};
use crate::devices::virtio::iov::{Dir, GuestIovecs};
use crate::devices::virtio::{feature, read_config_bytes, ActivateError, Interrupt, QueueProgress, VirtioDevice, COMMON_FEATURES, TYPE_NET};
use crate::guest_warn;
use crate::memory::GuestMemoryMmap;

/// Where frames go to and come from: one read, or one `writev` on its fd, is one whole frame
/// with its virtio-net header.
pub trait FrameIo: Send + AsRawFd {
    /// Reads one frame.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Applies the offloads the guest accepted (`TUN_F_*`).
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file().as_raw_fd()
    }
}

impl FrameIo for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut self.file(), buf)
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags).map_err(io::Error::other)
    }
}

/// A virtio-net device.
pub struct Net {
    pub(super) cfg: NetConfig,
    pub(super) backend: Box<dyn FrameIo>,
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) activate_evt: EventFd,
    acked_features: u64,
    pub(super) active: Option<Active>,
    /// A frame read from the backend that found no receive buffer yet.
    pub(super) pending: Option<usize>,
    pub(super) rx_buf: Vec<u8>,
    /// The guest accepted mergeable receive buffers (`VIRTIO_NET_F_MRG_RXBUF`).
    pub(super) mergeable: bool,
    /// Receive chains taken but not filled yet (mergeable receive only).
    pub(super) held: Held,
    /// The backend may have more frames (edge-triggered readiness).
    pub(super) backend_readable: bool,
    pub(super) backend_registered: bool,
    /// Offloads to apply on the event loop after activation.
    pending_offload: Option<u32>,
    /// A snapshot's hold on guest memory (see [`super::snapshot`]).
    pub(super) hold: Hold,
    pub(super) metrics: Arc<NetMetrics>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Net {
    /// Opens the tap named in `cfg`, or takes over the inherited descriptor `cfg.fd`.
    pub fn new(cfg: NetConfig) -> Result<Self, NetError> {
        let tap = match cfg.fd {
            Some(fd) => Tap::from_fd(fd, &cfg.tap)?,
            None => Tap::open(&cfg.tap, cfg.netns.as_deref())?,
        };
        Self::with_backend(cfg, Box::new(tap))
    }

    /// A device over any frame backend.
    pub fn with_backend(cfg: NetConfig, backend: Box<dyn FrameIo>) -> Result<Self, NetError> {
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(|e| NetError::EventFd(cfg.tap.clone(), e));
        let hold = Hold::new(&cfg.tap)?;
        Ok(Self {
            queue_evts: vec![evt()?, evt()?],
            activate_evt: evt()?,
            cfg,
            backend,
            acked_features: 0,
            active: None,
            pending: None,
            rx_buf: vec![0; MAX_FRAME],
            mergeable: false,
            held: Held::default(),
            backend_readable: true,
            backend_registered: false,
            pending_offload: None,
            hold,
            metrics: Arc::new(NetMetrics::default()),
        })
    }

    /// The device's counters.
    pub fn counters(&self) -> &Arc<NetMetrics> {
        &self.metrics
    }

    /// Sends every frame the guest queued.
    pub fn process_tx(&mut self) {
        if self.hold.on {
            return;
        }
        let Some(active) = self.active.as_mut() else { return };
        let mut used = false;
        while let Ok(Some((head, chain))) = active.pop(TXQ, MAX_CHAIN_DESCS) {
            used = true;
            match chain {
                Ok(c) if c.readable_len() >= VNET_HDR_SIZE as u64 && c.readable_len() <= MAX_FRAME as u64 => {
                    let n = c.readable_len() as usize;
                    // Straight from the guest's buffers to the tap: one writev, one frame.
                    let segs = chain::segments(&c.readable, 0, n as u64);
                    let sent = GuestIovecs::new(&active.mem, &segs, Dir::FromGuest).and_then(|v| v.writev(self.backend.as_raw_fd()));
                    match sent {
                        Ok(_) => {
                            self.metrics.tx_frames.inc();
                            self.metrics.tx_bytes.add((n - VNET_HDR_SIZE) as u64);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.metrics.dropped.inc();
                        }
                        Err(e) => {
                            guest_warn!("virtio-net: writing a frame to tap {} failed: {e}", self.cfg.tap);
                            self.metrics.errors.inc();
                        }
                    }
                }
                Ok(c) => {
                    guest_warn!("virtio-net: dropping transmit chain of {} bytes", c.readable_len());
                    self.metrics.errors.inc();
                }
                Err(e) => {
                    guest_warn!("virtio-net: dropping transmit chain: {e}");
                    self.metrics.errors.inc();
                }
            }
            active.add_used(TXQ, head, 0);
        }
        if used {
            active.notify(TXQ);
        }
    }

    /// Applies the offloads chosen at activation to the backend.
    pub(super) fn apply_offload(&mut self) {
        if let Some(flags) = self.pending_offload.take() {
            if let Err(e) = self.backend.set_offload(flags) {
                log::error!("virtio-net: cannot set offloads {flags:#x} on tap {}: {e}", self.cfg.tap);
            }
        }
    }

    pub(super) fn backend_fd(&self) -> RawFd {
        self.backend.as_raw_fd()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        let mut f = COMMON_FEATURES
            | feature(VIRTIO_NET_F_CSUM)
            | feature(VIRTIO_NET_F_GUEST_CSUM)
            | feature(VIRTIO_NET_F_GUEST_TSO4)
            | feature(VIRTIO_NET_F_GUEST_TSO6)
            | feature(VIRTIO_NET_F_HOST_TSO4)
            | feature(VIRTIO_NET_F_HOST_TSO6)
            | feature(VIRTIO_NET_F_MRG_RXBUF);
        if self.cfg.mac.is_some() {
            f |= feature(VIRTIO_NET_F_MAC);
        }
        f
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cfg.mac.unwrap_or_default(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_warn!("virtio-net: ignoring {}-byte config write at {offset:#x}", data.len());
    }

    fn activate(&mut self, mem: GuestMemoryMmap, interrupt: Arc<Interrupt>, queues: Vec<Queue>) -> Result<(), ActivateError> {
        ActivateError::check(self.active.is_some(), &queues, 2)?;
        let backend = |source| ActivateError::Backend { device: "net", source };
        // What the guest can receive decides what the tap may hand us.
        let acked = self.acked_features;
        let mut offload = 0;
        if acked & feature(VIRTIO_NET_F_GUEST_CSUM) != 0 {
            offload |= tap::TUN_F_CSUM;
            if acked & feature(VIRTIO_NET_F_GUEST_TSO4) != 0 {
                offload |= tap::TUN_F_TSO4;
            }
            if acked & feature(VIRTIO_NET_F_GUEST_TSO6) != 0 {
                offload |= tap::TUN_F_TSO6;
            }
        }
        // The ioctl runs on the event loop (vCPU threads may not issue it under seccomp).
        self.pending_offload = Some(offload);
        self.active = Some(Active::new(mem, interrupt, queues));
        self.pending = None;
        self.mergeable = acked & feature(VIRTIO_NET_F_MRG_RXBUF) != 0;
        self.held.clear();
        self.backend_readable = true;
        self.hold.on = false;
        self.activate_evt.write(1).map_err(backend)
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
        self.held.clear();
        self.hold.on = false;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn metrics(&self) -> serde_json::Value {
        let mut v = self.metrics.to_json();
        v["tap"] = serde_json::Value::String(self.cfg.tap.clone());
        v
    }

    fn save_progress(&mut self) -> Result<Vec<QueueProgress>, String> {
        self.save_queues()
    }
}
