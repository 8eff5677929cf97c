//! Attaching images to disk slots and detaching them while the guest runs.
//!
//! The control API holds one [`DiskHandle`] per disk. An attach runs on the API thread: it
//! opens the image there (never on the event loop or a vCPU), or takes the descriptor the
//! client passed with the request (a jailed VMM cannot open host paths), hands it to the slot's I/O
//! thread, which switches between two requests (each request is served entirely against the
//! old or the new backing), then records the new capacity and serial in the config space and
//! raises the config-change interrupt. Linux's virtio_blk then re-reads the capacity
//! (asynchronously, from a work queue) and reads the serial with GET_ID on each read of
//! `/sys/block/vdX/serial`. A detach goes the same way with no backing: later requests fail
//! with IOERR, the capacity reads 0 and the serial is empty.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use husk_config::api::{AttachDisk, DiskInfo};
use husk_config::ConfigError;

use super::device::{image_from_fd, open_image, serial};
use super::metrics::BlockMetrics;
use super::worker::{Disk, WorkerControl, WorkerError};
use super::{Attachment, Block, BlockError, DiskKind};
use crate::devices::virtio::mmio::{lock, MmioTransport};

/// Why an attach or detach was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The disk was given at boot; its image cannot change.
    #[error("{name} is a boot disk, not a slot: its image cannot be attached or detached")]
    BootDisk {
        /// The disk's name.
        name: String,
    },
    /// The slot already has an image.
    #[error("slot {slot} is occupied by {}; detach it first", path.display())]
    Occupied {
        /// The slot.
        slot: String,
        /// Its image.
        path: PathBuf,
    },
    /// The slot has no image to detach.
    #[error("slot {slot} is empty")]
    Empty {
        /// The slot.
        slot: String,
    },
    /// The request names a bad id or path.
    #[error("cannot attach to slot {slot}")]
    Request {
        /// The slot.
        slot: String,
        /// What is wrong with the request.
        #[source]
        source: Box<ConfigError>,
    },
    /// The image cannot be used.
    #[error("cannot attach to slot {slot}")]
    Image {
        /// The slot.
        slot: String,
        /// Why (it names the path and what the OS said).
        #[source]
        source: BlockError,
    },
    /// The image holds less than one sector.
    #[error("cannot attach {} to slot {slot}: it is smaller than one 512-byte sector", path.display())]
    TooSmall {
        /// The slot.
        slot: String,
        /// The image.
        path: PathBuf,
    },
    /// The slot's I/O thread is gone.
    #[error("the I/O thread of slot {slot} did not take the change")]
    Worker {
        /// The slot.
        slot: String,
        /// The cause.
        #[source]
        source: WorkerError,
    },
}

/// What the control API holds of one disk: the device (config space, attachment), its
/// transport (config generation, interrupt), its I/O thread and its counters.
pub struct DiskHandle {
    name: String,
    kind: DiskKind,
    device: Arc<Mutex<Block>>,
    transport: Arc<MmioTransport>,
    worker: WorkerControl,
    metrics: Arc<BlockMetrics>,
    /// One attach or detach at a time per disk.
    ops: Mutex<()>,
}

impl DiskHandle {
    /// The handle of `device`, reached by the guest through `transport`.
    pub fn new(device: Arc<Mutex<Block>>, transport: Arc<MmioTransport>) -> Self {
        let (name, kind, worker, metrics) = {
            let d = lock(&device);
            (d.name().to_string(), d.kind(), d.io_thread(), d.counters().clone())
        };
        DiskHandle { name, kind, device, transport, worker, metrics, ops: Mutex::new(()) }
    }

    /// The disk's name in the API.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The disk as the API describes it.
    pub fn info(&self) -> DiskInfo {
        lock(&self.device).info()
    }

    /// The attachment state (plain data; none for an empty slot).
    pub fn attachment(&self) -> Option<Attachment> {
        lock(&self.device).attachment().cloned()
    }

    /// Attaches the image `req` names to this empty slot (opened here, on the API thread).
    /// Counted in `attaches` or, when refused, in `hotplug_errors`.
    pub fn attach(&self, req: &AttachDisk) -> Result<DiskInfo, SlotError> {
        self.count_attach(self.try_attach(req, None))
    }

    /// Attaches `image`, opened by the client and passed with the request, to this empty
    /// slot; `req.path` only names it. Counted like [`DiskHandle::attach`].
    pub fn attach_fd(&self, req: &AttachDisk, image: OwnedFd) -> Result<DiskInfo, SlotError> {
        self.count_attach(self.try_attach(req, Some(image)))
    }

    fn count_attach(&self, r: Result<DiskInfo, SlotError>) -> Result<DiskInfo, SlotError> {
        match r {
            Ok(_) => self.metrics.attaches.inc(),
            Err(_) => self.metrics.hotplug_errors.inc(),
        }
        r
    }

    /// Detaches this slot's image. Counted in `detaches` or, when refused, in
    /// `hotplug_errors`.
    pub fn detach(&self) -> Result<DiskInfo, SlotError> {
        let _op = lock(&self.ops);
        let r = self.try_detach();
        match r {
            Ok(_) => self.metrics.detaches.inc(),
            Err(_) => self.metrics.hotplug_errors.inc(),
        }
        r
    }

    fn slot(&self) -> Result<&str, SlotError> {
        match self.kind {
            DiskKind::Slot => Ok(&self.name),
            DiskKind::Boot => Err(SlotError::BootDisk { name: self.name.clone() }),
        }
    }

    fn try_attach(&self, req: &AttachDisk, image: Option<OwnedFd>) -> Result<DiskInfo, SlotError> {
        let _op = lock(&self.ops);
        let slot = self.slot()?.to_string();
        if let Some(a) = self.attachment() {
            return Err(SlotError::Occupied { slot, path: a.path });
        }
        req.validate().map_err(|source| SlotError::Request { slot: slot.clone(), source: Box::new(source) })?;
        let opened = match image {
            Some(fd) => image_from_fd(fd, &req.path, req.read_only),
            None => open_image(&req.path, req.read_only),
        };
        let (file, sectors) = opened.map_err(|source| SlotError::Image { slot: slot.clone(), source })?;
        if sectors == 0 {
            return Err(SlotError::TooSmall { slot, path: req.path.clone() });
        }
        let disk = Disk { file, sectors, read_only: req.read_only, id: serial(&req.id) };
        self.worker.swap(Some(disk)).map_err(|source| SlotError::Worker { slot: slot.clone(), source })?;
        let attachment = Attachment { path: req.path.clone(), id: req.id.clone(), read_only: req.read_only, sectors };
        self.announce(Some(attachment));
        log::info!("slot {slot}: attached {} ({sectors} sectors, id {:?}, read_only {})", req.path.display(), req.id, req.read_only);
        Ok(self.info())
    }

    fn try_detach(&self) -> Result<DiskInfo, SlotError> {
        let slot = self.slot()?.to_string();
        let Some(old) = self.attachment() else {
            return Err(SlotError::Empty { slot });
        };
        self.worker.swap(None).map_err(|source| SlotError::Worker { slot: slot.clone(), source })?;
        self.announce(None);
        log::info!("slot {slot}: detached {}", old.path.display());
        Ok(self.info())
    }

    /// Puts `attachment` into the config space and raises the config-change interrupt.
    fn announce(&self, attachment: Option<Attachment>) {
        let ((), irq) = self.transport.change_config(|| lock(&self.device).set_attachment(attachment));
        if let Err(e) = irq {
            // The change stands; the guest sees it at its next config read.
            log::error!("slot {}: cannot raise the config-change interrupt: {e}", self.name);
        }
    }
}
