//! The net device: features, config space, and frame movement between queues and the
//! backend (a tap, or any frame-preserving socket in tests). No epoll here.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::NetMetrics;
use super::tap::{self, Tap};
use super::*;
use crate::devices::virtio::active::Active;
use crate::devices::virtio::chain::{self, MAX_CHAIN_DESCS};
use crate::devices::virtio::iov::{Dir, GuestIovecs};
use crate::devices::virtio::{
    feature, read_config_bytes, ActivateError, Interrupt, VirtioDevice, COMMON_FEATURES,
    TYPE_NET,
};
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
    cfg: NetConfig,
    pub(super) backend: Box<dyn FrameIo>,
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) activate_evt: EventFd,
    acked_features: u64,
    pub(super) active: Option<Active>,
    /// A frame read from the backend that found no receive buffer yet.
    pending: Option<usize>,
    rx_buf: Vec<u8>,
    /// The backend may have more frames (edge-triggered readiness).
    pub(super) backend_readable: bool,
    pub(super) backend_registered: bool,
    /// Offloads to apply on the event loop after activation.
    pending_offload: Option<u32>,
    pub(super) metrics: Arc<NetMetrics>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Net {
    /// Opens the tap named in `cfg`.
    pub fn new(cfg: NetConfig) -> Result<Self, NetError> {
        let tap = Tap::open(&cfg.tap, cfg.netns.as_deref())?;
        Self::with_backend(cfg, Box::new(tap))
    }

    /// A device over any frame backend.
    pub fn with_backend(cfg: NetConfig, backend: Box<dyn FrameIo>) -> Result<Self, NetError> {
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(|e| NetError::EventFd(cfg.tap.clone(), e));
        Ok(Self {
            queue_evts: vec![evt()?, evt()?],
            activate_evt: evt()?,
            cfg,
            backend,
            acked_features: 0,
            active: None,
            pending: None,
            rx_buf: vec![0; MAX_FRAME],
            backend_readable: true,
            backend_registered: false,
            pending_offload: None,
            metrics: Arc::new(NetMetrics::default()),
        })
    }

    /// The device's counters.
    pub fn counters(&self) -> &Arc<NetMetrics> {
        &self.metrics
    }

    /// Sends every frame the guest queued.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        let mut used = false;
        while let Ok(Some((head, chain))) = active.pop(TXQ, MAX_CHAIN_DESCS) {
            used = true;
            match chain {
                Ok(c) if c.readable_len() >= VNET_HDR_SIZE as u64
                    && c.readable_len() <= MAX_FRAME as u64 =>
                {
                    let n = c.readable_len() as usize;
                    // Straight from the guest's buffers to the tap: one writev, one frame.
                    let segs = chain::segments(&c.readable, 0, n as u64);
                    let sent = GuestIovecs::new(&active.mem, &segs, Dir::FromGuest)
                        .and_then(|v| v.writev(self.backend.as_raw_fd()));
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

    /// Moves frames from the backend into the guest's receive buffers until either runs out.
    pub fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        let mut used = false;
        loop {
            if self.pending.is_none() && self.backend_readable {
                match rx_direct(active, self.backend.as_ref(), &self.metrics, &self.cfg.tap) {
                    Direct::Used => {
                        used = true;
                        continue;
                    }
                    Direct::Again => continue,
                    Direct::Drained => {
                        self.backend_readable = false;
                        break;
                    }
                    Direct::NoBuffer => break,
                    Direct::Fallback => {}
                }
            }
            let len = match self.pending {
                Some(n) => n,
                None if self.backend_readable => match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(n) if n >= VNET_HDR_SIZE => {
                        // num_buffers: always 1 without MRG_RXBUF.
                        self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                        self.pending = Some(n);
                        n
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.backend_readable = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        guest_warn!("virtio-net: reading tap {} failed: {e}", self.cfg.tap);
                        self.metrics.errors.inc();
                        self.backend_readable = false;
                        break;
                    }
                },
                None => break,
            };
            let (head, chain) = match active.pop(RXQ, MAX_CHAIN_DESCS) {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            };
            used = true;
            match chain {
                Ok(c) if c.writable_len() >= len as u64 => {
                    match chain::write_to(&active.mem, &c.writable, 0, &self.rx_buf[..len]) {
                        Ok(_) => {
                            self.metrics.rx_frames.inc();
                            self.metrics.rx_bytes.add((len - VNET_HDR_SIZE) as u64);
                            active.add_used(RXQ, head, len as u32);
                        }
                        Err(_) => {
                            self.metrics.errors.inc();
                            active.add_used(RXQ, head, 0);
                        }
                    }
                    self.pending = None;
                }
                Ok(_) => {
                    // The guest's buffer is too small for this frame: drop the frame, keep
                    // the buffer for the next one.
                    self.metrics.dropped.inc();
                    self.pending = None;
                    if let Some(q) = active.queues.get_mut(RXQ) {
                        q.go_to_previous_position();
                    }
                }
                Err(e) => {
                    guest_warn!("virtio-net: bad receive chain: {e}");
                    self.metrics.errors.inc();
                    active.add_used(RXQ, head, 0);
                }
            }
        }
        if used {
            active.notify(RXQ);
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

/// What [`rx_direct`] did.
enum Direct {
    /// A frame went into a receive chain.
    Used,
    /// Nothing delivered (a runt frame, an interrupted read); try again.
    Again,
    /// The backend has no more frames (or failed).
    Drained,
    /// The guest has no receive buffer.
    NoBuffer,
    /// The next chain cannot hold every frame: use the bounce buffer.
    Fallback,
}

/// Reads one frame from the backend straight into the next receive chain, when that chain
/// holds [`MAX_FRAME`] bytes (the guest's "big" buffers), saving a copy through the bounce
/// buffer. A smaller or malformed chain is given back for the bounce-buffer path, which can
/// size-check the frame first.
fn rx_direct(active: &mut Active, backend: &dyn FrameIo, m: &NetMetrics, tap: &str) -> Direct {
    let (head, chain) = match active.pop(RXQ, MAX_CHAIN_DESCS) {
        Ok(Some(c)) => c,
        Ok(None) | Err(_) => return Direct::NoBuffer,
    };
    let give_back = |active: &mut Active| {
        if let Some(q) = active.queues.get_mut(RXQ) {
            q.go_to_previous_position();
        }
    };
    let c = match chain {
        Ok(c) if c.writable_len() >= MAX_FRAME as u64 => c,
        _ => {
            give_back(active);
            return Direct::Fallback;
        }
    };
    let segs = chain::segments(&c.writable, 0, MAX_FRAME as u64);
    let read = GuestIovecs::new(&active.mem, &segs, Dir::ToGuest).and_then(|v| v.readv(backend.as_raw_fd()));
    match read {
        Ok(n) if n >= VNET_HDR_SIZE => {
            // num_buffers (header bytes 10..12): always 1 without MRG_RXBUF.
            if chain::write_to(&active.mem, &c.writable, 10, &1u16.to_le_bytes()).is_err() {
                m.errors.inc();
                active.add_used(RXQ, head, 0);
                return Direct::Used;
            }
            m.rx_frames.inc();
            m.rx_bytes.add((n - VNET_HDR_SIZE) as u64);
            active.add_used(RXQ, head, n as u32);
            Direct::Used
        }
        Ok(_) => {
            give_back(active);
            Direct::Again
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            give_back(active);
            Direct::Drained
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            give_back(active);
            Direct::Again
        }
        Err(e) => {
            guest_warn!("virtio-net: reading tap {tap} failed: {e}");
            m.errors.inc();
            give_back(active);
            Direct::Drained
        }
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
            | feature(VIRTIO_NET_F_HOST_TSO6);
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

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        ActivateError::check(self.active.is_some(), &queues, 2)?;
        let backend = |source| ActivateError::Backend {
            device: "net",
            source,
        };
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
        self.backend_readable = true;
        self.activate_evt.write(1).map_err(backend)
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn metrics(&self) -> serde_json::Value {
        let mut v = self.metrics.to_json();
        v["tap"] = serde_json::Value::String(self.cfg.tap.clone());
        v
    }
}
