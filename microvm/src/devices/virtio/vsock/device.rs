//! The vsock device: config space, activation, and the queue processing (no epoll here).

use std::collections::VecDeque;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::connector::Connector;
use super::metrics::VsockMetrics;
use super::muxer::Muxer;
use super::packet;
use super::rx::RxNeed;
use super::{VsockConfig, VsockError, QUEUE_SIZE, RXQ, TXQ};

use crate::devices::virtio::active::{Active, Popped, QueueBroken};
use crate::devices::virtio::chain::{Chain, MAX_CHAIN_DESCS};
use crate::devices::virtio::{read_config_bytes, ActivateError, Interrupt, QueueProgress, VirtioDevice, COMMON_FEATURES, TYPE_VSOCK};
use crate::guest_warn;
use crate::memory::GuestMemoryMmap;

/// Most receive buffers filled from one read of a host socket.
const RX_BATCH_CHAINS: usize = 64;
/// Most rounds of "take transmitted packets, fill receive buffers" in one event, while
/// transmitted packets wait for the control backlog to shrink.
const TX_RX_ROUNDS: usize = 16;

/// A virtio-vsock device with the hybrid unix-socket backend.
#[derive(Debug)]
pub struct Vsock {
    pub(super) cfg: VsockConfig,
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) activate_evt: EventFd,
    acked_features: u64,
    pub(super) active: Option<Active>,
    /// The transmit queue has packets to take (it was notified, or taking stopped on a
    /// full control backlog).
    tx_waiting: bool,
    /// Receive chains taken from the queue and validated but not used yet (a host read
    /// filled fewer than were taken); they are used before any new one.
    rx_spare: VecDeque<Chain>,
    pub(super) muxer: Muxer,
    pub(super) metrics: Arc<VsockMetrics>,
}

impl Vsock {
    /// Creates the device and starts listening on `cfg.uds_path` (the file is removed again
    /// when the device is dropped).
    pub fn new(cfg: VsockConfig) -> Result<Self, VsockError> {
        if cfg.guest_cid < 3 || cfg.guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(cfg.guest_cid));
        }
        let bind_err = |source| VsockError::Bind { path: cfg.uds_path.clone(), source };
        let listener = UnixListener::bind(&cfg.uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(|source| {
            let _ = std::fs::remove_file(&cfg.uds_path);
            bind_err(source)
        })?;
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd);
        let made = (|| Ok::<_, VsockError>((vec![evt()?, evt()?, evt()?], evt()?, Connector::start(&cfg.uds_path).map_err(VsockError::Connector)?)))();
        let (queue_evts, activate_evt, connector) = match made {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&cfg.uds_path);
                return Err(e);
            }
        };
        Ok(Self {
            muxer: Muxer::new(cfg.guest_cid, connector, listener),
            cfg,
            queue_evts,
            activate_evt,
            acked_features: 0,
            active: None,
            tx_waiting: false,
            rx_spare: VecDeque::new(),
            metrics: Arc::new(VsockMetrics::default()),
        })
    }

    /// The device's counters.
    pub fn counters(&self) -> &Arc<VsockMetrics> {
        &self.metrics
    }

    /// The thread that connects guest-initiated connections (its filter is installed by the
    /// runner).
    pub fn connector(&self) -> Connector {
        self.muxer.connector().clone()
    }

    /// Handles the guest's transmit queue, then fills receive buffers with whatever is ready.
    pub fn process_tx(&mut self) {
        self.tx_waiting = true;
        self.process_rx();
    }

    /// Takes packets from the transmit queue until it is empty or the control backlog is
    /// full; returns whether packets were left behind for the second reason.
    fn take_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else { return false };
        let mut used = false;
        let mut stalled = false;
        loop {
            if self.muxer.control_full() {
                stalled = true;
                break;
            }
            let Ok(Some((head, chain))) = active.pop(TXQ, MAX_CHAIN_DESCS) else { break };
            used = true;
            match chain.map_err(packet::PacketError::from).and_then(|c| {
                let hdr = packet::parse_tx(&active.mem, &c)?;
                Ok((c, hdr))
            }) {
                Ok((c, hdr)) => self.muxer.handle_tx(&active.mem, &c, &hdr, &self.metrics),
                Err(e) => {
                    guest_warn!("vsock: dropping transmitted packet: {e}");
                    self.metrics.errors.inc();
                }
            }
            active.add_used(TXQ, head, 0);
        }
        if used && active.notify(TXQ) {
            self.metrics.interrupts.inc();
        }
        if stalled {
            self.metrics.tx_stalls.inc();
        }
        stalled
    }

    /// Handles every host socket as readable, then fills receive buffers: what the event loop
    /// does when epoll reports them. For tests and fuzz targets, which have no event loop.
    #[doc(hidden)]
    pub fn host_sockets_readable(&mut self) {
        let m = self.metrics.clone();
        for fd in self.muxer.fds() {
            self.muxer.handle_fd(fd, EventSet::IN, &m);
        }
        self.muxer.fd_ops.clear();
        self.process_rx();
    }

    /// Puts pending control packets and host data into the guest's receive buffers, and
    /// takes transmitted packets that waited for the control backlog to shrink.
    pub fn process_rx(&mut self) {
        if self.active.is_none() {
            return;
        }
        for _ in 0..TX_RX_ROUNDS {
            if self.tx_waiting && !self.muxer.control_full() {
                self.tx_waiting = self.take_tx();
            }
            self.fill_rx();
            if !self.tx_waiting || self.muxer.control_full() {
                return;
            }
        }
        // The guest keeps both queues busy: come back through the event loop (so other
        // devices get their turn) rather than loop here.
        if let Err(e) = self.queue_evts[TXQ].write(1) {
            log::error!("vsock: cannot re-arm the transmit queue event: {e}");
        }
    }

    /// Fills receive buffers with control packets and host data while both are there.
    fn fill_rx(&mut self) {
        let mut used = false;
        loop {
            let more = match self.muxer.rx_need() {
                RxNeed::Nothing => false,
                RxNeed::Control => self.rx_control(&mut used),
                RxNeed::Data(bytes) => self.rx_data(bytes, &mut used),
            };
            if !more {
                break;
            }
        }
        let Some(active) = self.active.as_mut() else { return };
        if used && active.notify(RXQ) {
            self.metrics.interrupts.inc();
        }
    }

    /// One control packet into the next receive buffer; false if there is none.
    fn rx_control(&mut self, used: &mut bool) -> bool {
        let Some(active) = self.active.as_mut() else { return false };
        let Ok(Some((head, chain))) = next_rx_chain(active, &mut self.rx_spare) else { return false };
        let filled = chain.map_err(packet::PacketError::from).and_then(|c| {
            let n = self.muxer.fill_rx_control(&active.mem, &c, &self.metrics)?;
            if n.is_none() {
                self.rx_spare.push_front(c);
            }
            Ok(n)
        });
        let len = match filled {
            Ok(Some(n)) => n,
            Ok(None) => return false,
            Err(e) => {
                guest_warn!("vsock: bad receive buffer: {e}");
                self.metrics.errors.inc();
                0
            }
        };
        *used = true;
        active.add_used(RXQ, head, len);
        true
    }

    /// Host data into as many receive buffers as hold `bytes` (one read from the host
    /// socket); false if the guest offered no buffer.
    fn rx_data(&mut self, bytes: usize, used: &mut bool) -> bool {
        let Some(active) = self.active.as_mut() else { return false };
        let mut chains = Vec::new();
        let mut room = 0usize;
        while room < bytes && chains.len() < RX_BATCH_CHAINS {
            match next_rx_chain(active, &mut self.rx_spare) {
                Ok(Some((_, Ok(c)))) => {
                    room += c.writable_len().saturating_sub(packet::HDR_SIZE as u64) as usize;
                    chains.push(c);
                }
                Ok(Some((head, Err(e)))) if chains.is_empty() => {
                    guest_warn!("vsock: bad receive buffer: {e}");
                    self.metrics.errors.inc();
                    active.add_used(RXQ, head, 0);
                    *used = true;
                }
                Ok(Some(_)) => {
                    // A bad buffer after good ones (spare chains are all good, so it came
                    // from the queue): it goes back and is dealt with first next time, so
                    // the buffers used stay a prefix of those taken.
                    active.unpop(RXQ);
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        if chains.is_empty() {
            return false;
        }
        let lens = match self.muxer.fill_rx_data(&active.mem, &chains, &self.metrics) {
            Ok(lens) => lens,
            Err(e) => {
                guest_warn!("vsock: bad receive buffer: {e}");
                self.metrics.errors.inc();
                // Too small or not writable: the first buffer goes back empty (for a
                // memory error, every one taken does).
                let n = if matches!(e, packet::PacketError::Memory) { chains.len() } else { 1 };
                vec![0; n]
            }
        };
        for (c, &len) in chains.iter().zip(&lens) {
            active.add_used(RXQ, c.head, len);
            *used = true;
        }
        // Buffers the read did not reach are kept, in order, for the next packets: taking
        // and validating them again from the ring cost more than the rest of the path.
        for c in chains.drain(lens.len().min(chains.len())..).rev() {
            self.rx_spare.push_front(c);
        }
        true
    }
}

/// The next receive chain: one taken earlier and not used yet, else the queue's next.
fn next_rx_chain(active: &mut Active, spare: &mut VecDeque<Chain>) -> Result<Option<Popped>, QueueBroken> {
    if active.broken {
        spare.clear();
        return Ok(None);
    }
    match spare.pop_front() {
        Some(c) => Ok(Some((c.head, Ok(c)))),
        None => active.pop(RXQ, MAX_CHAIN_DESCS),
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cfg.uds_path);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        COMMON_FEATURES
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cfg.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_warn!("vsock: ignoring {}-byte config write at {offset:#x}", data.len());
    }

    fn activate(&mut self, mem: GuestMemoryMmap, interrupt: Arc<Interrupt>, queues: Vec<Queue>) -> Result<(), ActivateError> {
        ActivateError::check(self.active.is_some(), &queues, 3)?;
        self.active = Some(Active::new(mem, interrupt, queues));
        self.activate_evt.write(1).map_err(|source| ActivateError::Backend { device: "vsock", source })
    }

    fn reset(&mut self) {
        self.active = None;
        self.tx_waiting = false;
        self.rx_spare.clear();
        self.muxer.reset();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn metrics(&self) -> serde_json::Value {
        self.metrics.to_json(self.muxer.connection_count())
    }

    fn save_progress(&mut self) -> Result<Vec<QueueProgress>, String> {
        let Some(active) = self.active.as_ref() else { return Ok(Vec::new()) };
        let open = self.muxer.connection_count();
        if open > 0 || !self.muxer.control.is_empty() {
            return Err(format!("vsock has {open} connections and {} control packets for the guest; close them first", self.muxer.control.len()));
        }
        let mut p = active.progress();
        // The spare receive chains were taken last: the restored device takes them again.
        if let Some(rx) = p.get_mut(RXQ) {
            rx.next_avail = rx.next_avail.wrapping_sub(self.rx_spare.len() as u16);
        }
        Ok(p)
    }
}
