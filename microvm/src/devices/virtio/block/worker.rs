//! The per-disk worker thread and the request execution it runs.

use std::fs::File;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use vm_memory::Bytes;

use super::io::{self, Dir};
use super::metrics::BlockMetrics;
use super::request::{self, Request};
use super::{
    ID_BYTES, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use crate::devices::virtio::active::Active;
use crate::devices::virtio::chain::MAX_CHAIN_DESCS;
use crate::guest_warn;
use crate::memory::GuestMemoryMmap;

/// The backing image of a disk.
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

/// Executes one request; returns the status and the bytes written into guest buffers.
pub fn execute(mem: &GuestMemoryMmap, disk: &mut Disk, req: &Request, m: &BlockMetrics) -> (u8, u32) {
    let in_range = || {
        req.data_len.is_multiple_of(SECTOR_SIZE)
            && req
                .sector
                .checked_add(req.data_len / SECTOR_SIZE)
                .is_some_and(|end| end <= disk.sectors)
    };
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
        VIRTIO_BLK_T_GET_ID => {
            let mut done = 0usize;
            for &(addr, n) in &req.data {
                let n = n.min(ID_BYTES - done);
                if n == 0 || mem.write_slice(&disk.id[done..done + n], addr).is_err() {
                    break;
                }
                done += n;
            }
            (VIRTIO_BLK_S_OK, done as u32)
        }
        other => {
            guest_warn!("virtio-blk: unsupported request type {other}");
            m.errors.inc();
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
    }
}

fn fail(m: &BlockMetrics, what: &str, req: &Request) -> (u8, u32) {
    guest_warn!(
        "virtio-blk: {what} of {} bytes at sector {} failed",
        req.data_len,
        req.sector
    );
    m.errors.inc();
    (VIRTIO_BLK_S_IOERR, 0)
}

fn transfer(mem: &GuestMemoryMmap, disk: &mut Disk, req: &Request, write: bool) -> Result<(), ()> {
    let dir = if write { Dir::ToFile } else { Dir::FromFile };
    io::transfer(mem, &disk.file, req.sector * SECTOR_SIZE, &req.data, dir).map_err(|_| ())
}

/// Serves every available request of the queue.
pub fn process_queue(active: &mut Active, disk: &mut Disk, m: &BlockMetrics) {
    let mut used = false;
    while let Ok(Some((head, chain))) = active.pop(0, MAX_CHAIN_DESCS) {
        used = true;
        let parsed = chain
            .map_err(|e| e.to_string())
            .and_then(|c| request::parse(&active.mem, &c).map_err(|e| e.to_string()));
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
    }
    if used {
        active.notify(0);
    }
}

/// Messages to a worker.
#[derive(Debug)]
pub enum Msg {
    /// The device was activated: serve this queue.
    Activate(Box<Active>),
    /// The guest notified the queue.
    Kick,
    /// Drop the queue (device reset) and acknowledge on the given channel.
    Reset(Sender<()>),
}

/// The worker thread of one disk. It is started with the device (before the VMM installs
/// its seccomp filters, and so that activation, which runs on a vCPU thread, never has to
/// create a thread) and idles until the device is activated.
#[derive(Debug)]
pub struct Worker {
    tx: Option<Sender<Msg>>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker for `disk`.
    pub fn spawn(name: String, mut disk: Disk, m: Arc<BlockMetrics>) -> std::io::Result<Self> {
        let (tx, rx): (Sender<Msg>, Receiver<Msg>) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let mut active: Option<Box<Active>> = None;
            while let Ok(msg) = rx.recv() {
                match msg {
                    Msg::Activate(a) => active = Some(a),
                    Msg::Reset(ack) => {
                        active = None;
                        let _ = ack.send(());
                        continue;
                    }
                    Msg::Kick => {}
                }
                // Coalesce kicks that piled up.
                let mut reset = None;
                loop {
                    match rx.try_recv() {
                        Ok(Msg::Kick) => continue,
                        Ok(Msg::Activate(a)) => active = Some(a),
                        Ok(Msg::Reset(ack)) => {
                            reset = Some(ack);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if let Some(ack) = reset {
                    active = None;
                    let _ = ack.send(());
                    continue;
                }
                if let Some(a) = active.as_mut() {
                    process_queue(a, &mut disk, &m);
                }
            }
        })?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Hands the activated queue to the worker (requests may already be waiting).
    pub fn activate(&self, active: Active) {
        self.send(Msg::Activate(Box::new(active)));
    }

    /// Tells the worker the queue has new requests.
    pub fn kick(&self) {
        self.send(Msg::Kick);
    }

    /// Makes the worker drop the queue; returns once it no longer touches it.
    pub fn reset(&self) {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        self.send(Msg::Reset(ack_tx));
        let _ = ack_rx.recv();
    }

    fn send(&self, msg: Msg) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread.
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
