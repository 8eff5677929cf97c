//! Disk slots: the I/O thread switching backings, empty slots, read-only attachments, and
//! the config space and interrupt the guest sees after an attach or detach.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_config::api::{AttachDisk, DiskKind};

use super::metrics::BlockMetrics;
use super::worker::{process_queue, Disk, Worker, BATCH};
use super::*;
use crate::devices::virtio::active::Active;
use crate::devices::virtio::interrupt::INT_CONFIG;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::test_utils::{get, guest_mem, interrupt, put, TestQueue};
use crate::devices::virtio::{feature, VirtioDevice};
use crate::devices::BusDevice;
use crate::memory::GuestMemoryMmap;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
/// Bytes per test read (the status byte follows in the same buffer).
const READ: u32 = 4096;
/// Bytes per read where requests should take a while.
const BIG: u32 = 96 * 1024;

/// A scratch directory with images filled with one byte each.
struct Images(PathBuf);

impl Images {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!("husk-slot-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        std::fs::create_dir_all(&d).unwrap();
        Images(d)
    }
    fn filled(&self, name: &str, byte: u8, sectors: u64) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, vec![byte; (sectors * SECTOR_SIZE) as usize]).unwrap();
        p
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn disk(path: &Path, read_only: bool, id: &str) -> Disk {
    let file = std::fs::OpenOptions::new().read(true).write(!read_only).open(path).unwrap();
    let sectors = file.metadata().unwrap().len() / SECTOR_SIZE;
    Disk { file, sectors, read_only, id: device::serial(id) }
}

/// The driver's side of one queue: requests of two descriptors each (header; data with the
/// status byte at its end), request `i` using header and data areas of its own.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    q: TestQueue<'a>,
    n: u64,
    /// Distance between the data areas of two requests.
    stride: u64,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        Driver { mem, q: TestQueue::new(mem, 0x1000, 256), n: 0, stride: 0x2000 }
    }

    /// Queues a request of `type_` at sector 0 with `len` data bytes; returns its number.
    fn submit(&mut self, type_: u32, len: u32) -> u64 {
        let i = self.n;
        self.n += 1;
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&type_.to_le_bytes());
        put(self.mem, HDR + i * 0x100, &h);
        put(self.mem, DATA + i * self.stride, &vec![0xee; len as usize + 1]);
        let writable = type_ != VIRTIO_BLK_T_OUT;
        if writable {
            self.q.add(&[(HDR + i * 0x100, 16, false), (DATA + i * self.stride, len + 1, true)]);
        } else {
            self.q.add(&[(HDR + i * 0x100, 16, false), (DATA + i * self.stride, len, false), (DATA + i * self.stride + u64::from(len), 1, true)]);
        }
        i
    }

    fn data(&self, i: u64, len: u32) -> Vec<u8> {
        get(self.mem, DATA + i * self.stride, len as usize)
    }

    fn status(&self, i: u64, len: u32) -> u8 {
        get(self.mem, DATA + i * self.stride + u64::from(len), 1)[0]
    }

    /// Waits (at most 5 s) until `n` requests in all are completed.
    fn wait_used(&self, n: u16) {
        let start = Instant::now();
        while self.q.used_idx() < n && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(self.q.used_idx(), n, "completed requests");
    }
}

#[test]
fn process_queue_stops_after_a_batch_and_says_so() {
    let imgs = Images::new();
    let a = disk(&imgs.filled("a", 0xaa, 8), false, "a");
    let mem = guest_mem();
    let mut drv = Driver::new(&mem);
    let mut active = Active::new(mem.clone(), interrupt(), vec![drv.q.queue()]);
    let m = BlockMetrics::default();
    for _ in 0..BATCH + 10 {
        drv.submit(VIRTIO_BLK_T_IN, 512);
    }
    assert!(process_queue(&mut active, Some(&a), &m), "requests left after one batch");
    assert_eq!(usize::from(drv.q.used_idx()), BATCH);
    assert!(!process_queue(&mut active, Some(&a), &m));
    assert_eq!(usize::from(drv.q.used_idx()), BATCH + 10);
}

#[test]
fn worker_swaps_backings_between_requests() {
    let imgs = Images::new();
    let (pa, pb) = (imgs.filled("a", 0xaa, 64), imgs.filled("b", 0xbb, 64));
    let mem = guest_mem();
    let mut drv = Driver::new(&mem);
    let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let m = Arc::new(BlockMetrics::default());
    let w = Worker::spawn("swap-test".into(), Some(disk(&pa, false, "disk-a")), m.clone(), evt.try_clone().unwrap()).unwrap();
    w.activate(Active::new(mem.clone(), interrupt(), vec![drv.q.queue()]));
    let round = |drv: &mut Driver, done: u16| {
        let r = drv.submit(VIRTIO_BLK_T_IN, READ);
        let id = drv.submit(VIRTIO_BLK_T_GET_ID, 20);
        evt.write(1).unwrap();
        drv.wait_used(done + 2);
        (r, id)
    };

    let (r, id) = round(&mut drv, 0);
    assert_eq!((drv.status(r, READ), drv.data(r, READ)), (VIRTIO_BLK_S_OK, vec![0xaa; READ as usize]));
    assert_eq!(&drv.data(id, 20)[..7], b"disk-a\0");

    w.control().swap(Some(disk(&pb, false, "disk-b"))).unwrap();
    let (r, id) = round(&mut drv, 2);
    assert_eq!((drv.status(r, READ), drv.data(r, READ)), (VIRTIO_BLK_S_OK, vec![0xbb; READ as usize]));
    assert_eq!(&drv.data(id, 20)[..7], b"disk-b\0");

    // Empty: reads, writes and flushes fail; the serial is empty.
    w.control().swap(None).unwrap();
    let errors = m.errors.get();
    let (r, id) = round(&mut drv, 4);
    assert_eq!(drv.status(r, READ), VIRTIO_BLK_S_IOERR);
    assert_eq!(drv.status(id, 20), VIRTIO_BLK_S_OK);
    assert_eq!(drv.data(id, 20), vec![0u8; 20], "empty serial");
    let wr = drv.submit(VIRTIO_BLK_T_OUT, 512);
    let fl = drv.submit(VIRTIO_BLK_T_FLUSH, 0);
    evt.write(1).unwrap();
    drv.wait_used(8);
    assert_eq!((drv.status(wr, 512), drv.status(fl, 0)), (VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_IOERR));
    assert_eq!(m.errors.get(), errors + 3);
    assert_eq!(std::fs::read(&pb).unwrap(), vec![0xbb; 64 * 512], "image b untouched after detach");
}

#[test]
fn requests_in_flight_during_a_swap_see_one_backing_each() {
    let imgs = Images::new();
    let (pa, pb) = (imgs.filled("a", 0xaa, 192), imgs.filled("b", 0xbb, 192));
    let mem = guest_mem();
    // Large reads, so that a batch lasts long enough for the swap to arrive within it.
    let mut drv = Driver { stride: 0x1_9000, ..Driver::new(&mem) };
    let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let w = Worker::spawn("mix-test".into(), Some(disk(&pa, false, "a")), Arc::new(BlockMetrics::default()), evt.try_clone().unwrap()).unwrap();
    let n = 120u16;
    for _ in 0..n {
        drv.submit(VIRTIO_BLK_T_IN, BIG);
    }
    // Activation makes the worker look at the queue: all requests are there by then.
    w.activate(Active::new(mem.clone(), interrupt(), vec![drv.q.queue()]));
    // Swap once the worker is inside its first batch: it takes the swap at the end of a
    // batch (or after the last request), never within one.
    let start = Instant::now();
    while drv.q.used_idx() == 0 && start.elapsed() < Duration::from_secs(5) {
        std::hint::spin_loop();
    }
    w.control().swap(Some(disk(&pb, false, "b"))).unwrap();
    drv.wait_used(n);
    let mut old = 0usize;
    for i in 0..u64::from(n) {
        let d = drv.data(i, BIG);
        let all = |b: u8| d.iter().all(|&x| x == b);
        assert!(all(0xaa) || all(0xbb), "request {i} mixed two backings");
        if all(0xaa) {
            assert_eq!(old, i as usize, "request {i} read the old backing after a newer one served");
            old += 1;
        }
    }
    assert!(old.is_multiple_of(BATCH) || old == usize::from(n), "{old} requests served by the old backing: the swap came within a batch");
    // After the swap returned, every new request reads the new backing.
    let r = drv.submit(VIRTIO_BLK_T_IN, BIG);
    evt.write(1).unwrap();
    drv.wait_used(n + 1);
    assert_eq!(drv.data(r, BIG), vec![0xbb; BIG as usize]);
}

/// A slot (or disk) behind a real transport, as the VMM wires it.
struct Wired {
    dev: Arc<Mutex<Block>>,
    transport: Arc<MmioTransport>,
    handle: DiskHandle,
}

fn wire(dev: Block, mem: &GuestMemoryMmap) -> Wired {
    let dev = Arc::new(Mutex::new(dev));
    let transport = Arc::new(MmioTransport::new(mem.clone(), dev.clone()).unwrap());
    let handle = DiskHandle::new(dev.clone(), transport.clone());
    Wired { dev, transport, handle }
}

impl Wired {
    fn reg(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }
    /// Capacity as the driver reads it: two 32-bit config reads.
    fn capacity(&self) -> u64 {
        u64::from(self.reg(0x100)) | (u64::from(self.reg(0x104)) << 32)
    }
    fn features(&self) -> u64 {
        self.transport.write(0x014, &0u32.to_le_bytes());
        let lo = self.reg(0x010);
        self.transport.write(0x014, &1u32.to_le_bytes());
        u64::from(lo) | (u64::from(self.reg(0x010)) << 32)
    }
    /// Whether the config-change interrupt was raised since the last call (and clears it).
    fn config_interrupt(&self) -> bool {
        let raised = self.reg(0x060) & INT_CONFIG != 0 && self.transport.interrupt().event().read().is_ok();
        self.transport.write(0x064, &INT_CONFIG.to_le_bytes());
        raised
    }
}

fn attach_req(path: &Path, id: &str, read_only: bool) -> AttachDisk {
    AttachDisk { path: path.to_path_buf(), id: id.into(), read_only }
}

#[test]
fn attach_and_detach_change_config_space_generation_and_interrupt() {
    let imgs = Images::new();
    let img = imgs.filled("ctr", 0x11, 24);
    let mem = guest_mem();
    let w = wire(Block::new_slot("slot0".into()).unwrap(), &mem);
    assert_eq!((w.capacity(), w.reg(0x0fc)), (0, 0), "an empty slot has capacity 0");
    assert_eq!(w.features() & feature(VIRTIO_BLK_F_RO), 0, "slots never offer RO");
    let info = w.handle.info();
    assert_eq!((info.kind, info.attached, info.sectors, info.id.as_str(), info.path), (DiskKind::Slot, false, 0, "", None));

    let info = w.handle.attach(&attach_req(&img, "ctr-1", true)).unwrap();
    assert_eq!((info.attached, info.sectors, info.read_only, info.id.as_str()), (true, 24, true, "ctr-1"));
    assert_eq!(info.path.as_deref(), Some(img.as_path()));
    assert_eq!(w.capacity(), 24);
    assert_eq!(w.reg(0x0fc), 1, "ConfigGeneration moved");
    assert!(w.config_interrupt(), "config-change interrupt raised");
    assert_eq!(w.features() & feature(VIRTIO_BLK_F_RO), 0, "features stay as booted");
    let saved = w.handle.attachment().unwrap();
    let json = serde_json::to_string(&saved).unwrap();
    assert_eq!(serde_json::from_str::<Attachment>(&json).unwrap(), saved, "attachment state is plain data");

    let info = w.handle.detach().unwrap();
    assert_eq!((info.attached, info.sectors, info.id.as_str(), info.path), (false, 0, "", None));
    assert_eq!((w.capacity(), w.reg(0x0fc)), (0, 2));
    assert!(w.config_interrupt());
    assert!(w.handle.attachment().is_none());
    let c = w.dev.lock().unwrap().counters().clone();
    assert_eq!((c.attaches.get(), c.detaches.get(), c.hotplug_errors.get()), (1, 1, 0));
}

#[test]
fn read_only_attachment_refuses_writes_through_the_device() {
    let imgs = Images::new();
    let img = imgs.filled("ro", 0x22, 8);
    let mem = guest_mem();
    let w = wire(Block::new_slot("slot1".into()).unwrap(), &mem);
    let mut drv = Driver::new(&mem);
    w.dev.lock().unwrap().activate(mem.clone(), interrupt(), vec![drv.q.queue()]).unwrap();
    w.handle.attach(&attach_req(&img, "ro-ctr", true)).unwrap();
    put(&mem, DATA, &[0x77; 512]);
    let wr = drv.submit(VIRTIO_BLK_T_OUT, 512);
    let rd = drv.submit(VIRTIO_BLK_T_IN, 512);
    let id = drv.submit(VIRTIO_BLK_T_GET_ID, 20);
    w.dev.lock().unwrap().queue_events()[0].write(1).unwrap();
    drv.wait_used(3);
    assert_eq!(drv.status(wr, 512), VIRTIO_BLK_S_IOERR, "write to a read-only attachment");
    assert_eq!((drv.status(rd, 512), drv.data(rd, 512)), (VIRTIO_BLK_S_OK, vec![0x22; 512]));
    assert_eq!(&drv.data(id, 20)[..7], b"ro-ctr\0");
    assert_eq!(std::fs::read(&img).unwrap(), vec![0x22; 8 * 512], "image untouched");

    // After a detach the same slot answers IOERR.
    w.handle.detach().unwrap();
    let rd = drv.submit(VIRTIO_BLK_T_IN, 512);
    w.dev.lock().unwrap().queue_events()[0].write(1).unwrap();
    drv.wait_used(4);
    assert_eq!(drv.status(rd, 512), VIRTIO_BLK_S_IOERR);
    w.dev.lock().unwrap().reset();
}

#[test]
fn refused_attaches_and_detaches_name_the_problem() {
    let imgs = Images::new();
    let img = imgs.filled("ok", 0x33, 8);
    let tiny = imgs.filled("tiny", 0x33, 0);
    let mem = guest_mem();
    let w = wire(Block::new_slot("slot0".into()).unwrap(), &mem);
    let msg = |e: SlotError| crate::api::error_chain(&e);

    let e = w.handle.detach().unwrap_err();
    assert!(matches!(e, SlotError::Empty { .. }) && msg(e).contains("slot slot0 is empty"));
    let e = w.handle.attach(&attach_req(Path::new("/nonexistent/husk.img"), "x", false)).unwrap_err();
    assert!(matches!(e, SlotError::Image { .. }));
    let m = msg(e);
    assert!(m.contains("/nonexistent/husk.img") && m.contains("No such file"), "{m}");
    let m = msg(w.handle.attach(&attach_req(&imgs.0, "x", true)).unwrap_err());
    assert!(m.contains(&imgs.0.display().to_string()) && m.contains("not a regular file"), "{m}");
    let fifo = imgs.0.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let m = msg(w.handle.attach(&attach_req(&fifo, "x", true)).unwrap_err());
    assert!(m.contains("fifo") && m.contains("not a regular file"), "a FIFO is refused without blocking: {m}");
    let m = msg(w.handle.attach(&attach_req(&tiny, "x", false)).unwrap_err());
    assert!(m.contains("tiny") && m.contains("smaller than one 512-byte sector"), "{m}");
    let m = msg(w.handle.attach(&attach_req(&img, &"y".repeat(21), false)).unwrap_err());
    assert!(m.contains(&"y".repeat(21)), "{m}");
    assert_eq!((w.capacity(), w.reg(0x0fc)), (0, 0), "refusals change nothing the guest sees");
    assert!(!w.config_interrupt());

    w.handle.attach(&attach_req(&img, "first", false)).unwrap();
    let e = w.handle.attach(&attach_req(&tiny, "second", false)).unwrap_err();
    assert!(matches!(e, SlotError::Occupied { .. }));
    let m = msg(e);
    assert!(m.contains("slot slot0 is occupied by") && m.contains(&img.display().to_string()), "{m}");
    assert_eq!(w.handle.info().id, "first");
    let c = w.dev.lock().unwrap().counters().clone();
    assert_eq!((c.attaches.get(), c.hotplug_errors.get()), (1, 7));

    // A boot disk is not a slot.
    let boot = wire(Block::new(BlockConfig { path: img.clone(), read_only: true, id: "rootfs".into(), fd: None }).unwrap(), &mem);
    assert_eq!(boot.handle.info().kind, DiskKind::Boot);
    assert_ne!(boot.features() & feature(VIRTIO_BLK_F_RO), 0, "a read-only boot disk offers RO");
    let m = msg(boot.handle.detach().unwrap_err());
    assert!(m.contains("rootfs is a boot disk"), "{m}");
    assert!(matches!(boot.handle.attach(&attach_req(&img, "x", false)), Err(SlotError::BootDisk { .. })));
    assert_eq!(boot.capacity(), 8);
}
