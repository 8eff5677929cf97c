//! The balloon device: features, config space, and the queues' chains. No epoll here.

use std::io;
use std::sync::Arc;

use nix::fcntl::{fallocate, FallocateFlags};
use virtio_queue::Queue;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::BalloonMetrics;
use super::*;
use crate::devices::virtio::active::Active;
use crate::devices::virtio::chain::Chain;
use crate::devices::virtio::{feature, read_config_bytes, ActivateError, Interrupt, VirtioDevice, COMMON_FEATURES, TYPE_BALLOON};
use crate::guest_warn;
use crate::memory::GuestMemoryMmap;

/// Byte offset of `actual` in the config space (after `num_pages`).
const ACTUAL_OFFSET: usize = 4;

/// A virtio-balloon device that only takes free page reports.
pub struct Balloon {
    pub(super) queue_evts: Vec<EventFd>,
    acked_features: u64,
    /// The `actual` config field as the driver last wrote it (pages it says it gave up).
    actual: u32,
    pub(super) active: Option<Active>,
    pub(super) metrics: Arc<BalloonMetrics>,
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon").field("actual", &self.actual).field("active", &self.active.is_some()).finish_non_exhaustive()
    }
}

/// A part of one RAM region to give back: whole pages, `len` bytes at `offset` into the region.
#[derive(Debug, Clone, Copy)]
pub(super) struct Discard<'m> {
    region: &'m GuestRegionMmap<()>,
    offset: u64,
    len: u64,
}

impl Balloon {
    /// A device with no pages reported yet.
    pub fn new() -> Result<Self, BalloonError> {
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(BalloonError::EventFd);
        Ok(Self { queue_evts: vec![evt()?, evt()?, evt()?], acked_features: 0, actual: 0, active: None, metrics: Arc::new(BalloonMetrics::default()) })
    }

    /// The device's counters.
    pub fn counters(&self) -> &Arc<BalloonMetrics> {
        &self.metrics
    }

    /// Gives every reported range on the reporting queue back to the host and completes the
    /// chains (used length 0: the device writes nothing).
    pub fn process_reports(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        let mut used = false;
        while let Ok(Some((head, chain))) = active.pop(REPORTQ, MAX_REPORT_DESCS) {
            used = true;
            match chain.map_err(ReportError::from).and_then(|c| discards(&active.mem, &c)) {
                Ok(discards) => {
                    for d in discards {
                        match d.punch() {
                            Ok(()) => self.metrics.reported_bytes.add(d.len),
                            Err(e) => {
                                self.metrics.discard_errors.inc();
                                guest_warn!("virtio-balloon: cannot give {:#x} bytes at RAM offset {:#x} back to the host: {e}", d.len, d.offset);
                            }
                        }
                    }
                    self.metrics.report_chains.inc();
                }
                Err(e) => {
                    self.metrics.rejected_reports.inc();
                    guest_warn!("virtio-balloon: refusing a free page report: {e}");
                }
            }
            active.add_used(REPORTQ, head, 0);
        }
        if used && active.notify(REPORTQ) {
            self.metrics.interrupts.inc();
        }
    }

    /// Completes, unread, every chain on the inflate or deflate queue `q`: the host never
    /// asked for pages.
    pub fn process_ignored(&mut self, q: usize) {
        let Some(active) = self.active.as_mut() else { return };
        let counter = if q == INFLATEQ { &self.metrics.inflate_ignored } else { &self.metrics.deflate_ignored };
        let mut used = false;
        while let Ok(Some((head, _))) = active.pop(q, MAX_PFN_DESCS) {
            used = true;
            counter.inc();
            active.add_used(q, head, 0);
        }
        if used {
            guest_warn!("virtio-balloon: ignored chains on queue {q}; the host never asks to inflate");
            if active.notify(q) {
                self.metrics.interrupts.inc();
            }
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut b = [0u8; CONFIG_SIZE];
        // num_pages stays 0; actual is what the driver wrote.
        b[ACTUAL_OFFSET..].copy_from_slice(&self.actual.to_le_bytes());
        b
    }
}

/// The whole pages of each range in report chain `c`. Every range must be device-writable,
/// non-empty and inside one RAM region, or the whole chain is refused.
pub(super) fn discards<'m>(mem: &'m GuestMemoryMmap, c: &Chain) -> Result<Vec<Discard<'m>>, ReportError> {
    if !c.readable.is_empty() {
        return Err(ReportError::Readable { head: c.head, count: c.readable.len() });
    }
    let mut out = Vec::with_capacity(c.writable.len());
    for (index, d) in c.writable.iter().enumerate() {
        if d.len == 0 {
            return Err(ReportError::Empty { head: c.head, index });
        }
        let outside = || ReportError::NotInOneRegion { head: c.head, addr: d.addr.0, len: d.len };
        let region = mem.find_region(d.addr).ok_or_else(outside)?;
        // find_region guarantees addr >= the region's start.
        let start = d.addr.0 - region.start_addr().0;
        let end = start.checked_add(u64::from(d.len)).filter(|&e| e <= region.len()).ok_or_else(outside)?;
        // Inward to whole pages (region starts and file offsets are page-aligned).
        let first = start.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE);
        let last = end / PAGE_SIZE * PAGE_SIZE;
        if last > first {
            out.push(Discard { region, offset: first, len: last - first });
        }
    }
    Ok(out)
}

impl Discard<'_> {
    /// Frees the pages in guest RAM's memfd: the host takes them back, every mapping of the
    /// file (this process, KVM, a vhost-user backend) reads zeros there afterwards. In RAM
    /// mapped copy-on-write from a snapshot ([`crate::memory::is_private`]) the file is the
    /// snapshot's and stays as it is: the VM's own copies of the pages are dropped
    /// (`MADV_DONTNEED`), and the guest reads the snapshot's bytes there afterwards, which
    /// page reporting allows (it assumes nothing of a reported page's contents).
    fn punch(&self) -> io::Result<()> {
        if crate::memory::is_private(self.region) {
            let (Ok(off), Ok(len)) = (usize::try_from(self.offset), usize::try_from(self.len)) else {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            };
            // SAFETY: `off..off+len` lies within the region (checked when the discard was
            // made), whose mapping lives as long as guest memory; MADV_DONTNEED on a private
            // mapping only drops this process's copies of those pages, which the guest gave
            // up, and no Rust reference points into guest RAM.
            let rc = unsafe { libc::madvise(self.region.as_ptr().add(off).cast::<libc::c_void>(), len, libc::MADV_DONTNEED) };
            return nix::errno::Errno::result(rc).map(drop).map_err(io::Error::from);
        }
        let fo = self.region.file_offset().ok_or_else(|| io::Error::other("the RAM region has no backing file"))?;
        let at = fo.start().checked_add(self.offset).and_then(|o| libc::off_t::try_from(o).ok());
        let len = libc::off_t::try_from(self.len).ok();
        let (Some(at), Some(len)) = (at, len) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        fallocate(fo.file(), FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE, at, len).map_err(io::Error::from)
    }

    /// Guest-physical start of the range.
    #[cfg(test)]
    pub(super) fn addr(&self) -> vm_memory::GuestAddress {
        vm_memory::GuestAddress(self.region.start_addr().0 + self.offset)
    }

    /// Length in bytes.
    #[cfg(test)]
    pub(super) fn len(&self) -> u64 {
        self.len
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        COMMON_FEATURES | feature(VIRTIO_BALLOON_F_REPORTING)
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write; a write must lie inside it.
        let inside = |o: usize| o >= ACTUAL_OFFSET && o.checked_add(data.len()).is_some_and(|end| end <= CONFIG_SIZE);
        let Some(at) = usize::try_from(offset).ok().filter(|&o| inside(o)) else {
            guest_warn!("virtio-balloon: ignoring {}-byte config write at {offset:#x}", data.len());
            return;
        };
        let mut b = self.config_bytes();
        b[at..at + data.len()].copy_from_slice(data);
        let mut actual = [0u8; 4];
        actual.copy_from_slice(&b[ACTUAL_OFFSET..]);
        self.actual = u32::from_le_bytes(actual);
    }

    fn activate(&mut self, mem: GuestMemoryMmap, interrupt: Arc<Interrupt>, queues: Vec<Queue>) -> Result<(), ActivateError> {
        ActivateError::check(self.active.is_some(), &queues, NUM_QUEUES)?;
        self.active = Some(Active::new(mem, interrupt, queues));
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.actual = 0;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn metrics(&self) -> serde_json::Value {
        self.metrics.to_json()
    }

    fn save_progress(&mut self) -> Result<Vec<crate::devices::virtio::QueueProgress>, String> {
        // Reports are handled whole on the event loop, under the device lock: none is held.
        Ok(self.active.as_ref().map(|a| a.progress()).unwrap_or_default())
    }
}
