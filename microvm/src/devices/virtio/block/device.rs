//! The block device: config space, features, activation (starts the worker), reset.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use husk_config::api::DiskInfo;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::metrics::BlockMetrics;
use super::worker::{Disk, Worker, WorkerControl};
use super::{
    Attachment, BlockConfig, BlockError, DiskKind, ID_BYTES, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use crate::devices::virtio::active::Active;
use crate::devices::virtio::{feature, read_config_bytes, ActivateError, Interrupt, VirtioDevice, COMMON_FEATURES, TYPE_BLOCK};
use crate::guest_warn;
use crate::memory::GuestMemoryMmap;

/// How often a snapshot asks the I/O thread for its progress before giving up.
const PROGRESS_TRIES: usize = 100;

/// A virtio-blk disk: a boot disk backed by a raw image file, or a slot that images are
/// attached to at run time.
#[derive(Debug)]
pub struct Block {
    name: String,
    kind: DiskKind,
    attachment: Option<Attachment>,
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) worker: Worker,
    activated: bool,
    pub(super) metrics: Arc<BlockMetrics>,
}

/// Opens a disk image (read-only if `read_only`); returns the file and its size in sectors
/// (a trailing partial sector is not part of the disk). Block devices are measured by
/// seeking to their end, since their metadata says 0.
pub(super) fn open_image(path: &Path, read_only: bool) -> Result<(File, u64), BlockError> {
    let open_err = |source| BlockError::Open { path: path.to_path_buf(), source };
    let is_image = |ft: std::fs::FileType| ft.is_file() || ft.is_block_device();
    // Checked before opening too: opening a FIFO would block until a writer came.
    if !is_image(std::fs::metadata(path).map_err(open_err)?.file_type()) {
        return Err(BlockError::NotAnImage { path: path.to_path_buf() });
    }
    let mut file = OpenOptions::new().read(true).write(!read_only).open(path).map_err(open_err)?;
    if !is_image(file.metadata().map_err(open_err)?.file_type()) {
        return Err(BlockError::NotAnImage { path: path.to_path_buf() });
    }
    let len = file.seek(SeekFrom::End(0)).map_err(open_err)?;
    Ok((file, len / SECTOR_SIZE))
}

/// Takes over an image opened by the client (`path` only names it in messages): it must be a
/// regular file or block device, open for reading, and for writing too unless `read_only`.
/// Returns it with its size in sectors, as [`open_image`].
pub(super) fn image_from_fd(fd: OwnedFd, path: &Path, read_only: bool) -> Result<(File, u64), BlockError> {
    let open_err = |source| BlockError::Open { path: path.to_path_buf(), source };
    let mut file = File::from(fd);
    let ft = file.metadata().map_err(open_err)?.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return Err(BlockError::NotAnImage { path: path.to_path_buf() });
    }
    let mode = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| open_err(e.into()))? & libc::O_ACCMODE;
    let usable = match mode {
        libc::O_RDWR => true,
        libc::O_RDONLY => read_only,
        _ => false,
    };
    if !usable {
        return Err(BlockError::DescriptorMode { path: path.to_path_buf(), read_only });
    }
    let len = file.seek(SeekFrom::End(0)).map_err(open_err)?;
    Ok((file, len / SECTOR_SIZE))
}

/// Takes ownership of descriptor `fd`, inherited from the parent for the image named `path`.
fn inherited(fd: std::os::fd::RawFd, path: &Path) -> Result<OwnedFd, BlockError> {
    let open_err = |source| BlockError::Open { path: path.to_path_buf(), source };
    if fd < 3 {
        return Err(open_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("descriptor {fd} is stdio, not an inherited image"))));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; on a number that is not open it fails
    // with EBADF and touches nothing.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        let e = std::io::Error::last_os_error();
        return Err(open_err(std::io::Error::new(e.kind(), format!("descriptor {fd} is not open (was it inherited?): {e}"))));
    }
    // SAFETY: `fd` is open and nothing else in this process owns it: the configuration gives
    // each inherited descriptor to one device only (VmConfig::validate), and the VMM opened
    // nothing at that number before taking its inherited descriptors.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The serial as GET_ID returns it, NUL-padded. The caller has checked the length.
pub(super) fn serial(id: &str) -> [u8; ID_BYTES] {
    let mut out = [0u8; ID_BYTES];
    let n = id.len().min(ID_BYTES);
    out[..n].copy_from_slice(&id.as_bytes()[..n]);
    out
}

impl Block {
    /// A boot disk: opens the image (read-only if `cfg.read_only`). Its API name is its id.
    pub fn new(cfg: BlockConfig) -> Result<Self, BlockError> {
        if cfg.id.len() > ID_BYTES {
            return Err(BlockError::IdTooLong { id: cfg.id.clone() });
        }
        let (file, sectors) = match cfg.fd {
            Some(fd) => image_from_fd(inherited(fd, &cfg.path)?, &cfg.path, cfg.read_only)?,
            None => open_image(&cfg.path, cfg.read_only)?,
        };
        let disk = Disk { file, sectors, read_only: cfg.read_only, id: serial(&cfg.id) };
        let attachment = Attachment { path: cfg.path, id: cfg.id.clone(), read_only: cfg.read_only, sectors };
        Self::start(cfg.id, DiskKind::Boot, Some(disk), Some(attachment))
    }

    /// An empty slot named `name` in the API (`slot0`...): capacity 0, empty serial.
    pub fn new_slot(name: String) -> Result<Self, BlockError> {
        Self::start(name, DiskKind::Slot, None, None)
    }

    fn start(name: String, kind: DiskKind, disk: Option<Disk>, attachment: Option<Attachment>) -> Result<Self, BlockError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| BlockError::EventFd(name.clone(), e))?;
        let metrics = Arc::new(BlockMetrics::default());
        let worker_evt = evt.try_clone().map_err(|e| BlockError::EventFd(name.clone(), e))?;
        let thread = format!("blk-{}", if name.is_empty() { "disk" } else { &name });
        let worker = Worker::spawn(thread, disk, metrics.clone(), worker_evt).map_err(|e| BlockError::Worker(name.clone(), e))?;
        Ok(Self { name, kind, attachment, queue_evts: vec![evt], worker, activated: false, metrics })
    }

    /// Its name in the API and counters: the id of a boot disk, `slotN` for a slot.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Boot disk or slot.
    pub fn kind(&self) -> DiskKind {
        self.kind
    }

    /// What backs the disk now (none: an empty slot).
    pub fn attachment(&self) -> Option<&Attachment> {
        self.attachment.as_ref()
    }

    /// Records a new attachment for the config space and the API. The worker must already
    /// serve the matching backing ([`WorkerControl::swap`]); [`super::DiskHandle`] does both.
    pub(super) fn set_attachment(&mut self, attachment: Option<Attachment>) {
        self.attachment = attachment;
    }

    /// The disk's counters.
    pub fn counters(&self) -> &Arc<BlockMetrics> {
        &self.metrics
    }

    /// The handle of the disk's I/O thread (the VMM installs its seccomp filter through it).
    pub fn io_thread(&self) -> WorkerControl {
        self.worker.control()
    }

    /// Capacity in 512-byte sectors (0 for an empty slot).
    pub fn sectors(&self) -> u64 {
        self.attachment.as_ref().map_or(0, |a| a.sectors)
    }

    /// The disk as the API describes it.
    pub fn info(&self) -> DiskInfo {
        let a = self.attachment.as_ref();
        DiskInfo {
            slot: self.name.clone(),
            kind: self.kind,
            attached: a.is_some(),
            id: a.map(|a| a.id.clone()).unwrap_or_default(),
            path: a.map(|a| a.path.clone()),
            read_only: a.is_some_and(|a| a.read_only),
            sectors: self.sectors(),
        }
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
        let mut f = COMMON_FEATURES | feature(VIRTIO_BLK_F_FLUSH) | feature(VIRTIO_BLK_F_SEG_MAX);
        // Only a boot disk: a slot's read-only attachments come and go after the driver has
        // read the features, so the device refuses their writes itself.
        if self.kind == DiskKind::Boot && self.attachment.as_ref().is_some_and(|a| a.read_only) {
            f |= feature(VIRTIO_BLK_F_RO);
        }
        f
    }

    fn set_acked_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config up to seg_max: capacity, size_max (0: no limit), seg_max.
        let mut cfg = [0u8; 16];
        cfg[..8].copy_from_slice(&self.sectors().to_le_bytes());
        cfg[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        read_config_bytes(&cfg, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_warn!("virtio-blk: ignoring {}-byte config write at {offset:#x}", data.len());
    }

    fn activate(&mut self, mem: GuestMemoryMmap, interrupt: Arc<Interrupt>, queues: Vec<Queue>) -> Result<(), ActivateError> {
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
        v["id"] = serde_json::Value::String(self.name.clone());
        v
    }

    fn save_progress(&mut self) -> Result<Vec<crate::devices::virtio::QueueProgress>, String> {
        if let Some(a) = &self.attachment {
            return Err(format!("disk {} has {:?} attached; only empty slots can be saved", self.name, a.path));
        }
        if !self.activated {
            return Ok(Vec::new());
        }
        // The guest is paused: whatever it queued is served within a few batches.
        for _ in 0..PROGRESS_TRIES {
            if let Some(p) = self.worker.progress() {
                return Ok(p);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(format!("disk {}: requests still waiting after {PROGRESS_TRIES} tries", self.name))
    }
}
