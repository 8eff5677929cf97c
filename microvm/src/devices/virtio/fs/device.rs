//! The virtio-fs device: config space, activation and reset (on the vCPU side), and the
//! backend's life on the event-loop side (handshake, interrupts, failure).

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::backend::Backend;
use super::failover;
use super::metrics::FsMetrics;
use super::relay::{Relay, NOT_RELAYED_FEATURES};
use super::{FsConfig, FsError, CONFIG_SPACE_SIZE, NUM_QUEUES, NUM_REQUEST_QUEUES, QUEUE_SIZE, TAG_LEN};
use crate::devices::virtio::active::Active;
use crate::devices::virtio::ratelimit::LogLimiter;
use crate::devices::virtio::{read_config_bytes, ActivateError, Interrupt, QueueProgress, VirtioDevice, TYPE_FS};
use crate::guest_warn;
use crate::memory::GuestMemoryMmap;

/// Where the device is in its life with the driver and the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not activated (or reset).
    Idle,
    /// Activated by the driver; the handshake waits for the event loop.
    Starting,
    /// The backend serves the queues.
    Running,
    /// The backend is gone; husk-vmm answers the queues with errors until reset.
    Failed,
}

/// A virtio-fs device whose requests a vhost-user backend serves.
#[derive(Debug)]
pub struct Fs {
    pub(super) cfg: FsConfig,
    config_space: [u8; CONFIG_SPACE_SIZE],
    /// Queue notifications (the ioeventfds): the backend's kick EventFds.
    pub(super) queue_evts: Vec<EventFd>,
    /// The backend's call EventFds: husk-vmm turns them into the interrupt.
    pub(super) call_evts: Vec<EventFd>,
    /// Signalled by activate and reset: the event loop has backend work to do.
    pub(super) control_evt: EventFd,
    pub(super) backend: Option<Backend>,
    avail_features: u64,
    acked_features: u64,
    pub(super) active: Option<Active>,
    pub(super) phase: Phase,
    /// A reset came while the backend had the rings: stop them before anything else.
    pub(super) stop_pending: bool,
    /// The backend socket is registered on the event loop.
    pub(super) backend_registered: bool,
    /// The queue notifications are registered on the event loop (while the backend is gone).
    pub(super) kicks_registered: bool,
    /// The call EventFds are routed to the GSI as irqfds (the interrupt they were routed
    /// with); while they are, they are not on the event loop.
    calls_routed: Option<Arc<Interrupt>>,
    pub(super) metrics: Arc<FsMetrics>,
    /// The shadow rings used when the backend cannot map guest RAM.
    pub(super) relay: Relay,
    /// This activation relays the queues ([`super::relay`]).
    pub(super) relaying: bool,
}

/// One line per second at most about backend failures, whatever their cause.
static BACKEND_LOG: LogLimiter = LogLimiter::new();

impl Fs {
    /// Checks the tag and connects to the backend, or takes over the inherited connection
    /// (see [`Backend::connect`], [`Backend::inherit`]).
    pub fn new(cfg: FsConfig) -> Result<Self, FsError> {
        if cfg.tag.is_empty() || cfg.tag.len() > TAG_LEN {
            return Err(FsError::Tag(cfg.tag));
        }
        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[..cfg.tag.len()].copy_from_slice(cfg.tag.as_bytes());
        config_space[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd);
        let queue_evts = (0..NUM_QUEUES).map(|_| evt()).collect::<Result<Vec<_>, _>>()?;
        let call_evts = (0..NUM_QUEUES).map(|_| evt()).collect::<Result<Vec<_>, _>>()?;
        let control_evt = evt()?;
        let backend = match cfg.fd {
            Some(fd) => Backend::inherit(fd, &cfg.socket)?,
            None => Backend::connect(&cfg.socket)?,
        };
        let metrics = Arc::new(FsMetrics::default());
        metrics.connected.store(true, Ordering::Relaxed);
        Ok(Self {
            cfg,
            config_space,
            queue_evts,
            call_evts,
            control_evt,
            avail_features: backend.device_features(),
            backend: Some(backend),
            acked_features: 0,
            active: None,
            phase: Phase::Idle,
            stop_pending: false,
            backend_registered: false,
            kicks_registered: false,
            calls_routed: None,
            metrics,
            relay: Relay::new()?,
            relaying: false,
        })
    }

    /// The device's counters.
    pub fn counters(&self) -> &Arc<FsMetrics> {
        &self.metrics
    }

    /// Where the device is now.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The backend work activate and reset left for the event loop: stop the rings of a
    /// reset activation, start the backend for a new one, or stop answering the queues.
    pub(super) fn on_control(&mut self, ops: &mut EventOps) {
        if self.phase != Phase::Running {
            self.unroute_calls(ops);
        }
        if std::mem::take(&mut self.stop_pending) {
            if let Some(b) = self.backend.as_mut() {
                if let Err(e) = b.stop(NUM_QUEUES) {
                    self.backend_lost(&format!("failed while the device was reset: {e}"), ops);
                }
            }
        }
        match self.phase {
            Phase::Starting => self.start_backend(ops),
            Phase::Idle => self.unregister_kicks(ops),
            Phase::Running | Phase::Failed => {}
        }
    }

    fn start_backend(&mut self, ops: &mut EventOps) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        // RAM mapped copy-on-write cannot be shared with the backend: relay it.
        self.relaying = vm_memory::GuestMemoryBackend::iter(&active.mem).any(crate::memory::is_private);
        self.metrics.relaying.store(self.relaying, Ordering::Relaxed);
        let Some(backend) = self.backend.as_mut() else {
            self.backend_lost("is gone (it hung up before the driver activated the device)", ops);
            return;
        };
        let result = if self.relaying {
            match self.relay.restart() {
                Ok(shadow) => backend
                    .start(self.relay.mem(), &shadow, self.acked_features & !NOT_RELAYED_FEATURES, &self.call_evts, self.relay.kicks())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        } else {
            backend.start(&active.mem, &active.queues, self.acked_features, &self.call_evts, &self.queue_evts).map_err(|e| e.to_string())
        };
        match result {
            Ok(()) => {
                self.phase = Phase::Running;
                self.metrics.activations.inc();
                if self.relaying {
                    // The guest's kicks come here; requests it queued before the handshake
                    // go on at once.
                    self.register_kicks(ops);
                    for q in 0..NUM_QUEUES {
                        self.relay_forward(q);
                    }
                } else {
                    self.route_calls(ops);
                }
            }
            Err(e) => self.backend_lost(&format!("refused the activation: {e}"), ops),
        }
    }

    /// While relaying: forwards the guest's requests on queue `q`; comes back through the
    /// event loop if the guest keeps it busy.
    pub(super) fn relay_forward(&mut self, q: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self.relay.forward(active, q, &self.metrics) {
            if let Err(e) = self.queue_evts[q].write(1) {
                log::error!("virtio-fs {}: cannot re-arm queue {q}: {e}", self.cfg.tag);
            }
        }
    }

    /// While relaying: the backend completed requests on queue `q`.
    pub(super) fn relay_complete(&mut self, q: usize, ops: &mut EventOps) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match self.relay.complete(active, q, &self.metrics) {
            Ok(true) => {
                if let Err(e) = self.queue_evts[q].write(1) {
                    log::error!("virtio-fs {}: cannot re-arm queue {q}: {e}", self.cfg.tag);
                }
            }
            Ok(false) => {}
            Err(e) => self.backend_lost(&format!("broke the relay's rings: {e}"), ops),
        }
    }

    /// The backend hung up or failed: drop the connection (a backend that is still alive
    /// then stops), and if the driver is using the device, take the queues over and ask for
    /// a reset.
    pub(super) fn backend_lost(&mut self, why: &str, ops: &mut EventOps) {
        if let Some(b) = self.backend.take() {
            if self.backend_registered {
                let _ = ops.remove(Events::new_raw(b.as_raw_fd(), EventSet::empty()));
                self.backend_registered = false;
            }
            self.metrics.connected.store(false, Ordering::Relaxed);
        }
        self.metrics.backend_failures.inc();
        self.unroute_calls(ops);
        if let Some(dropped) = BACKEND_LOG.allow() {
            let (tag, socket) = (&self.cfg.tag, self.cfg.socket.display());
            let also = if dropped > 0 { format!(" ({dropped} similar messages suppressed)") } else { String::new() };
            log::error!("virtio-fs {tag}: the vhost-user backend at {socket} {why}; guest requests fail with EIO until the driver resets the device{also}");
        }
        if !matches!(self.phase, Phase::Starting | Phase::Running) {
            return;
        }
        self.phase = Phase::Failed;
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self.relaying {
            // husk-vmm knows what the backend held: the guest's queues are where it left them.
            self.relay.fail(active, &self.metrics);
        } else {
            failover::take_over(active);
        }
        if let Err(e) = active.interrupt.signal_needs_reset() {
            log::error!("virtio-fs {}: cannot raise the config interrupt: {e}", self.cfg.tag);
        }
        self.register_kicks(ops);
        for q in 0..NUM_QUEUES {
            self.answer_with_errors(q);
        }
    }

    /// While the backend is gone: answers queue `q`'s requests with errors; comes back
    /// through the event loop if the guest keeps it busy.
    pub(super) fn answer_with_errors(&mut self, q: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if failover::answer_with_errors(active, q, &self.metrics) {
            if let Err(e) = self.queue_evts[q].write(1) {
                log::error!("virtio-fs {}: cannot re-arm queue {q}: {e}", self.cfg.tag);
            }
        }
    }

    /// Lets KVM raise the interrupt when the backend signals a call EventFd, instead of a
    /// wake-up of the event loop per reply (one context switch less per FUSE request).
    /// tests/virtio/bench-fs.sh, this and the relaying husk-vmm one after the other in one
    /// testbed VM (4 rounds, medians, against virtio-blk in the same guest): create 0.10x
    /// against 0.07x, unlink 0.37x against 0.09x, cold read 0.59x against 0.21x.
    /// Without a GSI to route to, the event loop keeps relaying.
    fn route_calls(&mut self, ops: &mut EventOps) {
        let Some(interrupt) = self.active.as_ref().map(|a| a.interrupt.clone()) else {
            return;
        };
        if let Err(e) = interrupt.route_used_queue_events(&self.call_evts) {
            log::warn!("virtio-fs {}: the backend's interrupts go through the event loop: cannot route them to the GSI: {e}", self.cfg.tag);
            return;
        }
        for evt in &self.call_evts {
            let _ = ops.remove(Events::new(evt, EventSet::IN));
        }
        self.calls_routed = Some(interrupt);
        self.metrics.routed_calls.store(true, Ordering::Relaxed);
    }

    /// Takes the call EventFds back onto the event loop (a count KVM did not take is
    /// relayed there).
    fn unroute_calls(&mut self, ops: &mut EventOps) {
        let Some(interrupt) = self.calls_routed.take() else {
            return;
        };
        if let Err(e) = interrupt.unroute_used_queue_events(&self.call_evts) {
            log::error!("virtio-fs {}: cannot take the backend's interrupts back from KVM: {e}", self.cfg.tag);
        }
        for evt in &self.call_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-fs {}: cannot register an EventFd: {e}", self.cfg.tag);
            }
        }
        self.metrics.routed_calls.store(false, Ordering::Relaxed);
    }

    fn register_kicks(&mut self, ops: &mut EventOps) {
        if self.kicks_registered {
            return;
        }
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-fs {}: cannot register a queue notification: {e}", self.cfg.tag);
            }
        }
        self.kicks_registered = true;
    }

    fn unregister_kicks(&mut self, ops: &mut EventOps) {
        if !std::mem::take(&mut self.kicks_registered) {
            return;
        }
        for evt in &self.queue_evts {
            let _ = ops.remove(Events::new(evt, EventSet::IN));
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_warn!("virtio-fs: ignoring {}-byte config write at {offset:#x}", data.len());
    }

    /// Takes the queues; the handshake with the backend happens on the event loop (a vCPU
    /// thread may not use sockets). Until it is done the backend does not read the queues, so
    /// requests the driver queues meanwhile just wait.
    fn activate(&mut self, mem: GuestMemoryMmap, interrupt: Arc<Interrupt>, queues: Vec<Queue>) -> Result<(), ActivateError> {
        ActivateError::check(self.active.is_some(), &queues, NUM_QUEUES)?;
        self.active = Some(Active::new(mem, interrupt, queues));
        self.phase = Phase::Starting;
        self.control_evt.write(1).map_err(|source| ActivateError::Backend { device: "virtio-fs", source })
    }

    /// Drops the queues; if the backend was serving them, the event loop stops its rings
    /// (`GET_VRING_BASE`) right after.
    fn reset(&mut self) {
        self.active = None;
        self.relay.forget();
        if self.phase == Phase::Running {
            self.stop_pending = true;
        }
        self.phase = Phase::Idle;
        if let Err(e) = self.control_evt.write(1) {
            log::error!("virtio-fs {}: cannot signal the reset to the event loop: {e}", self.cfg.tag);
        }
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn metrics(&self) -> serde_json::Value {
        self.metrics.to_json()
    }

    /// Saves only a device whose queues the guest has never used, at progress (0, 0) in each.
    /// The backend process serves the queues, so husk-vmm cannot know what it holds, and its
    /// FUSE session (from the guest's FUSE_INIT on) cannot move to the restored VM's backend:
    /// a guest must be snapshotted before it mounts the file system. "Never used" is read
    /// from guest memory: each queue's available index and used index are 0, so the driver
    /// never offered a request (it is paused, so it offers none now) and nothing was answered.
    ///
    /// The guest writes the available index, so a guest can make a used queue look unused
    /// (as it can write anything into its rings at any time); what it gets is a restored
    /// file system whose backend has no session for it, its own loss. An index that wrapped
    /// back to 0 after exactly a multiple of 65536 requests on every queue looks unused too.
    fn save_progress(&mut self) -> Result<Vec<QueueProgress>, String> {
        let Some(active) = self.active.as_ref() else {
            return Ok(Vec::new());
        };
        let tag = &self.cfg.tag;
        if self.phase == Phase::Failed {
            let socket = self.cfg.socket.display();
            return Err(format!("virtio-fs {tag}: the vhost-user backend at {socket} is gone and the device waits for the guest to reset it"));
        }
        for (i, q) in active.queues.iter().enumerate() {
            let index = |what: &str, idx: Result<std::num::Wrapping<u16>, virtio_queue::Error>| {
                idx.map(|v| v.0).map_err(|e| format!("virtio-fs {tag}: cannot read the {what} index of queue {i}: {e}"))
            };
            let avail = index("available", q.avail_idx(&active.mem, Ordering::Acquire))?;
            let used = index("used", q.used_idx(&active.mem, Ordering::Acquire))?;
            if avail != 0 || used != 0 {
                return Err(format!(
                    "virtio-fs {tag} has been used by the guest (mounted?): queue {i} has available index {avail}, used index {used}; snapshot a VM before it mounts virtio-fs"
                ));
            }
        }
        Ok(vec![QueueProgress { next_avail: 0, next_used: 0 }; active.queues.len()])
    }
}
