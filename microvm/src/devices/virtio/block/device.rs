//! The block device: config space, features, activation (starts the worker), reset.

use std::fs::OpenOptions;
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::metrics::BlockMetrics;
use super::worker::{Disk, Worker, WorkerControl};
use super::{
    BlockConfig, BlockError, ID_BYTES, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use crate::devices::virtio::active::Active;
use crate::devices::virtio::{
    feature, read_config_bytes, ActivateError, Interrupt, VirtioDevice, COMMON_FEATURES,
    TYPE_BLOCK,
};
use crate::guest_warn;
use crate::memory::GuestMemoryMmap;

/// A virtio-blk disk backed by a raw image file.
#[derive(Debug)]
pub struct Block {
    cfg: BlockConfig,
    sectors: u64,
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) worker: Worker,
    activated: bool,
    pub(super) metrics: Arc<BlockMetrics>,
}

impl Block {
    /// Opens the image (read-only if `cfg.read_only`).
    pub fn new(cfg: BlockConfig) -> Result<Self, BlockError> {
        if cfg.id.len() > ID_BYTES {
            return Err(BlockError::IdTooLong { id: cfg.id.clone() });
        }
        let open_err = |source| BlockError::Open {
            path: cfg.path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&cfg.path)
            .map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        let mut id = [0u8; ID_BYTES];
        id[..cfg.id.len()].copy_from_slice(cfg.id.as_bytes());
        let evt = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| BlockError::EventFd(cfg.path.clone(), e))?;
        let sectors = len / SECTOR_SIZE;
        let metrics = Arc::new(BlockMetrics::default());
        let disk = Disk {
            file,
            sectors,
            read_only: cfg.read_only,
            id,
        };
        let name = format!("blk-{}", if cfg.id.is_empty() { "disk" } else { &cfg.id });
        let worker_evt = evt
            .try_clone()
            .map_err(|e| BlockError::EventFd(cfg.path.clone(), e))?;
        let worker = Worker::spawn(name, disk, metrics.clone(), worker_evt)
            .map_err(|e| BlockError::Worker(cfg.path.clone(), e))?;
        Ok(Self {
            sectors,
            cfg,
            queue_evts: vec![evt],
            worker,
            activated: false,
            metrics,
        })
    }

    /// The disk's configuration.
    pub fn config(&self) -> &BlockConfig {
        &self.cfg
    }

    /// The disk's counters.
    pub fn counters(&self) -> &Arc<BlockMetrics> {
        &self.metrics
    }

    /// The handle of the disk's I/O thread (the VMM installs its seccomp filter through it).
    pub fn io_thread(&self) -> WorkerControl {
        self.worker.control()
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        let mut f =
            COMMON_FEATURES | feature(VIRTIO_BLK_F_FLUSH) | feature(VIRTIO_BLK_F_SEG_MAX);
        if self.cfg.read_only {
            f |= feature(VIRTIO_BLK_F_RO);
        }
        f
    }

    fn set_acked_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config up to seg_max: capacity, size_max (0: no limit), seg_max.
        let mut cfg = [0u8; 16];
        cfg[..8].copy_from_slice(&self.sectors.to_le_bytes());
        cfg[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        read_config_bytes(&cfg, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_warn!("virtio-blk: ignoring {}-byte config write at {offset:#x}", data.len());
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        ActivateError::check(self.activated, &queues, 1)?;
        self.worker.activate(Active::new(mem, interrupt, queues));
        self.activated = true;
        Ok(())
    }

    fn reset(&mut self) {
        self.worker.reset();
        self.activated = false;
    }

    fn is_activated(&self) -> bool {
        self.activated
    }

    fn metrics(&self) -> serde_json::Value {
        let mut v = self.metrics.to_json();
        v["id"] = serde_json::Value::String(self.cfg.id.clone());
        v
    }
}
