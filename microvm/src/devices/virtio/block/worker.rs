//! The per-disk worker thread and the request execution it runs.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use seccompiler::BpfProgram;
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::BlockMetrics;
use super::request::{self, Request};
use super::{
    ID_BYTES, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use crate::devices::virtio::active::Active;
use crate::devices::virtio::chain::MAX_CHAIN_DESCS;
use crate::devices::virtio::iov::{self, Dir};
use crate::guest_warn;
use crate::memory::GuestMemoryMmap;

/// The backing image of a disk, as its I/O thread uses it. A slot without an image has none:
/// reads, writes and flushes then fail with IOERR and GET_ID returns an empty serial.
#[derive(Debug)]
pub struct Disk {
    /// The image file.
    pub file: File,
    /// Size in sectors.
    pub sectors: u64,
    /// Writes fail with IOERR.
    pub read_only: bool,
    /// Serial, NUL-padded.
    pub id: [u8; ID_BYTES],
}

/// Executes one request against `disk` (none: an empty slot); returns the status and the
/// bytes written into guest buffers.
pub fn execute(mem: &GuestMemoryMmap, disk: Option<&Disk>, req: &Request, m: &BlockMetrics) -> (u8, u32) {
    if req.type_ == VIRTIO_BLK_T_GET_ID {
        return get_id(mem, disk.map_or(&[0u8; ID_BYTES], |d| &d.id), req);
    }
    let Some(disk) = disk else {
        return fail(m, "request to an empty slot", req);
    };
    let in_range = || req.data_len.is_multiple_of(SECTOR_SIZE) && req.sector.checked_add(req.data_len / SECTOR_SIZE).is_some_and(|end| end <= disk.sectors);
    match req.type_ {
        VIRTIO_BLK_T_IN => {
            if !in_range() {
                return fail(m, "read", req);
            }
            if transfer(mem, disk, req, false).is_err() {
                return fail(m, "read", req);
            }
            m.reads.inc();
            m.read_bytes.add(req.data_len);
            (VIRTIO_BLK_S_OK, req.data_len as u32)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only || !in_range() || transfer(mem, disk, req, true).is_err() {
                return fail(m, "write", req);
            }
            m.writes.inc();
            m.write_bytes.add(req.data_len);
            (VIRTIO_BLK_S_OK, 0)
        }
        VIRTIO_BLK_T_FLUSH => {
            if !disk.read_only && disk.file.sync_data().is_err() {
                return fail(m, "flush", req);
            }
            m.flushes.inc();
            (VIRTIO_BLK_S_OK, 0)
        }
        other => {
            guest_warn!("virtio-blk: unsupported request type {other}");
            m.errors.inc();
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
    }
}

/// GET_ID: the serial, NUL-padded, into the request's buffers (at most 20 bytes).
fn get_id(mem: &GuestMemoryMmap, id: &[u8; ID_BYTES], req: &Request) -> (u8, u32) {
    let mut done = 0usize;
    for &(addr, n) in &req.data {
        let n = n.min(ID_BYTES - done);
        if n == 0 || mem.write_slice(&id[done..done + n], addr).is_err() {
            break;
        }
        done += n;
    }
    (VIRTIO_BLK_S_OK, done as u32)
}

fn fail(m: &BlockMetrics, what: &str, req: &Request) -> (u8, u32) {
    guest_warn!("virtio-blk: {what} of {} bytes at sector {} failed", req.data_len, req.sector);
    m.errors.inc();
    (VIRTIO_BLK_S_IOERR, 0)
}

fn transfer(mem: &GuestMemoryMmap, disk: &Disk, req: &Request, write: bool) -> Result<(), ()> {
    let dir = if write { Dir::FromGuest } else { Dir::ToGuest };
    iov::transfer(mem, &disk.file, req.sector * SECTOR_SIZE, &req.data, dir).map_err(|_| ())
}

/// Most requests served in one go before the worker looks at its control channel again, so
/// an attach or detach waits for at most this many requests, however busy the guest keeps
/// the queue.
pub const BATCH: usize = 64;

/// Serves the available requests of the queue, at most [`BATCH`] of them, each entirely
/// against `disk`. Returns true if it stopped at the limit with requests left (the caller
/// calls again without waiting for a notification: none may come for those).
pub fn process_queue(active: &mut Active, disk: Option<&Disk>, m: &BlockMetrics) -> bool {
    let mut used = false;
    let mut served = 0usize;
    let mut more = false;
    while let Ok(Some((head, chain))) = active.pop(0, MAX_CHAIN_DESCS) {
        used = true;
        served += 1;
        m.requests.inc();
        let parsed = chain.map_err(|e| e.to_string()).and_then(|c| request::parse(&active.mem, &c).map_err(|e| e.to_string()));
        let len = match parsed {
            Ok(req) => {
                let (status, written) = execute(&active.mem, disk, &req, m);
                match active.mem.write_obj(status, req.status) {
                    Ok(()) => written.saturating_add(1),
                    Err(_) => 0,
                }
            }
            Err(e) => {
                guest_warn!("virtio-blk: dropping request: {e}");
                m.errors.inc();
                0
            }
        };
        active.add_used(0, head, len);
        if served >= BATCH {
            more = active.has_available(0);
            break;
        }
    }
    if used {
        active.notify(0);
    }
    more
}

/// Messages to a worker.
#[derive(Debug)]
pub enum Msg {
    /// The device was activated: serve this queue.
    Activate(Box<Active>),
    /// Drop the queue (device reset) and acknowledge on the given channel.
    Reset(Sender<()>),
    /// Install this seccomp filter on the worker thread and report the outcome.
    Seccomp(Arc<BpfProgram>, Sender<Result<(), seccompiler::Error>>),
    /// Serve requests from this backing from now on (none: an empty slot), dropping the old
    /// one, and acknowledge. Taken between requests, never during one.
    Swap(Option<Disk>, Sender<()>),
    /// Report the queue's progress (for a snapshot), or None while requests are still
    /// waiting to be served.
    Progress(Sender<Option<Vec<crate::devices::virtio::QueueProgress>>>),
    /// End the thread.
    Stop,
}

/// Why a worker could not be told something.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The thread is gone.
    #[error("the disk's I/O thread has exited")]
    Gone,
    /// Installing the seccomp filter failed.
    #[error("cannot install the seccomp filter of a disk I/O thread")]
    Seccomp(#[source] seccompiler::Error),
}

/// A handle that sends messages to a worker and wakes it.
#[derive(Debug, Clone)]
pub struct WorkerControl {
    tx: Sender<Msg>,
    wake: Arc<EventFd>,
}

impl WorkerControl {
    fn send(&self, msg: Msg) -> Result<(), WorkerError> {
        self.tx.send(msg).map_err(|_| WorkerError::Gone)?;
        self.wake.write(1).map_err(|_| WorkerError::Gone)
    }

    /// Makes the worker confine itself with `filter`; returns once it has.
    pub fn install_filter(&self, filter: Arc<BpfProgram>) -> Result<(), WorkerError> {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        self.send(Msg::Seccomp(filter, ack_tx))?;
        ack_rx.recv().map_err(|_| WorkerError::Gone)?.map_err(WorkerError::Seccomp)
    }

    /// Makes the worker serve `disk` (none: no backing) from its next request on and close
    /// the file it had; returns once it has. Requests it was serving complete against the
    /// old backing first (at most [`BATCH`] of them).
    pub fn swap(&self, disk: Option<Disk>) -> Result<(), WorkerError> {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        self.send(Msg::Swap(disk, ack_tx))?;
        ack_rx.recv().map_err(|_| WorkerError::Gone)
    }
}

/// The I/O thread of one disk. It waits on the queue's notification EventFd itself (no hop
/// through the device event loop) and on a control EventFd for [`Msg`]s. It is started with
/// the device (before the VMM installs its seccomp filters, and so that activation, which
/// runs on a vCPU thread, never has to create a thread) and idles until the device is
/// activated; notifications before that are counted and dropped.
#[derive(Debug)]
pub struct Worker {
    ctl: WorkerControl,
    handle: Option<JoinHandle<()>>,
}

const WAKE: u64 = 0;
const QUEUE: u64 = 1;

impl Worker {
    /// Starts the worker for `disk` (none: an empty slot), serving notifications on
    /// `queue_evt`.
    pub fn spawn(name: String, disk: Option<Disk>, m: Arc<BlockMetrics>, queue_evt: EventFd) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let epoll = Epoll::new()?;
        epoll.ctl(ControlOperation::Add, wake.as_raw_fd(), EpollEvent::new(EventSet::IN, WAKE))?;
        epoll.ctl(ControlOperation::Add, queue_evt.as_raw_fd(), EpollEvent::new(EventSet::IN, QUEUE))?;
        let thread_wake = wake.clone();
        let handle = crate::thread_builder(name).spawn(move || serve(disk, &m, &epoll, &thread_wake, &queue_evt, &rx))?;
        Ok(Self { ctl: WorkerControl { tx, wake }, handle: Some(handle) })
    }

    /// A handle for the VMM (seccomp installation).
    pub fn control(&self) -> WorkerControl {
        self.ctl.clone()
    }

    /// Hands the activated queue to the worker (requests may already be waiting).
    pub fn activate(&self, active: Active) {
        let _ = self.ctl.send(Msg::Activate(Box::new(active)));
    }

    /// The queue's progress once every request that was waiting is served (None if requests
    /// are still waiting or the thread is gone).
    pub fn progress(&self) -> Option<Vec<crate::devices::virtio::QueueProgress>> {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        self.ctl.send(Msg::Progress(ack_tx)).ok()?;
        ack_rx.recv().ok().flatten()
    }

    /// Makes the worker drop the queue; returns once it no longer touches it.
    pub fn reset(&self) {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        if self.ctl.send(Msg::Reset(ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.ctl.send(Msg::Stop);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The worker's loop. Control messages are taken only between calls of [`process_queue`], so
/// each request is served entirely against one backing.
fn serve(mut disk: Option<Disk>, m: &BlockMetrics, epoll: &Epoll, wake: &EventFd, queue_evt: &EventFd, rx: &Receiver<Msg>) {
    let mut active: Option<Box<Active>> = None;
    let mut events = [EpollEvent::default(); 2];
    // Requests left over when the last call stopped at BATCH.
    let mut backlog = false;
    loop {
        let n = match epoll.wait(if backlog { 0 } else { -1 }, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("virtio-blk: I/O thread cannot wait for events: {e}");
                return;
            }
        };
        let mut kicked = false;
        let mut more = std::mem::take(&mut backlog);
        for ev in &events[..n] {
            if ev.data() == QUEUE {
                let _ = queue_evt.read();
                kicked = true;
                continue;
            }
            let _ = wake.read();
            loop {
                match rx.try_recv() {
                    Ok(Msg::Activate(a)) => {
                        // Requests may already be waiting.
                        active = Some(a);
                        more = true;
                    }
                    Ok(Msg::Reset(ack)) => {
                        active = None;
                        more = false;
                        let _ = ack.send(());
                    }
                    Ok(Msg::Swap(new, ack)) => {
                        disk = new;
                        let _ = ack.send(());
                    }
                    Ok(Msg::Seccomp(filter, ack)) => {
                        let _ = ack.send(crate::seccomp::apply(&filter, crate::seccomp::ThreadKind::BlockIo));
                    }
                    Ok(Msg::Progress(ack)) => {
                        // A notification not taken yet means requests are waiting: serve them.
                        if !more && !kicked && queue_evt.read().is_ok() {
                            kicked = true;
                        }
                        let idle = !more && !kicked;
                        let _ = ack.send(idle.then(|| active.as_ref().map(|a| a.progress()).unwrap_or_default()));
                    }
                    Ok(Msg::Stop) | Err(TryRecvError::Disconnected) => return,
                    Err(TryRecvError::Empty) => break,
                }
            }
        }
        if !kicked && !more {
            continue;
        }
        match active.as_mut() {
            Some(a) => backlog = process_queue(a, disk.as_ref(), m),
            None if kicked => {
                m.early_notifications.inc();
                guest_warn!("virtio-blk: queue notified before the device is active");
            }
            None => {}
        }
    }
}
