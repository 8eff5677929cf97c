//! Block device tests on mock queues with a real image file.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::metrics::BlockMetrics;
use super::worker::{process_queue, Disk};
use super::*;
use crate::devices::virtio::active::Active;
use crate::devices::virtio::test_utils::{assert_config_writes_ignored, get, guest_mem, interrupt, put, TestQueue, F_NEXT};
use crate::devices::virtio::{feature, VirtioDevice};
use crate::memory::GuestMemoryMmap;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

struct Img(PathBuf);

impl Img {
    fn new(sectors: u64) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!("husk-blk-test-{}-{}.img", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let mut f = std::fs::File::create(&p).unwrap();
        let data: Vec<u8> = (0..sectors * 512).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        Self(p)
    }
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for Img {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn disk(img: &Img, read_only: bool) -> Disk {
    let file = std::fs::OpenOptions::new().read(true).write(!read_only).open(&img.0).unwrap();
    let sectors = file.metadata().unwrap().len() / 512;
    let mut id = [0u8; ID_BYTES];
    id[..6].copy_from_slice(b"rootfs");
    Disk { file, sectors, read_only, id }
}

fn header(mem: &GuestMemoryMmap, slot: u64, type_: u32, sector: u64) -> u64 {
    let addr = HDR + slot * 0x100;
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&type_.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    put(mem, addr, &h);
    addr
}

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    q: TestQueue<'a>,
    active: Active,
    m: BlockMetrics,
    slot: u64,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let q = TestQueue::new(mem, 0x1000, 256);
        let active = Active::new(mem.clone(), interrupt(), vec![q.queue()]);
        Self { mem, q, active, m: BlockMetrics::default(), slot: 0 }
    }

    /// Submits a request with `len` data bytes; returns the status address.
    fn submit(&mut self, type_: u32, sector: u64, len: u32, data_writable: bool) -> u64 {
        let h = header(self.mem, self.slot, type_, sector);
        let st = STATUS + self.slot;
        put(self.mem, st, &[0xee]);
        let data = DATA + self.slot * 0x1_0000;
        self.slot += 1;
        if len == 0 {
            self.q.add(&[(h, 16, false), (st, 1, true)]);
        } else {
            self.q.add(&[(h, 16, false), (data, len, data_writable), (st, 1, true)]);
        }
        st
    }
}

#[test]
fn read_write_flush_get_id() {
    let mem = guest_mem();
    let img = Img::new(64);
    let d = disk(&img, false);
    let mut rig = Rig::new(&mem);

    let st_read = rig.submit(VIRTIO_BLK_T_IN, 2, 1024, true);
    put(&mem, DATA + 0x1_0000, &[0xab; 512]);
    let st_write = rig.submit(VIRTIO_BLK_T_OUT, 10, 512, false);
    let st_flush = rig.submit(VIRTIO_BLK_T_FLUSH, 0, 0, false);
    let st_id = rig.submit(VIRTIO_BLK_T_GET_ID, 0, 20, true);
    process_queue(&mut rig.active, Some(&d), &rig.m);

    let used = rig.q.used();
    assert_eq!(used.len(), 4);
    assert_eq!(used[0].1, 1025, "data plus status byte");
    for st in [st_read, st_write, st_flush, st_id] {
        assert_eq!(get(&mem, st, 1)[0], VIRTIO_BLK_S_OK);
    }
    let file = img.bytes();
    assert_eq!(get(&mem, DATA, 1024), file[1024..2048]);
    assert_eq!(&file[10 * 512..11 * 512], &[0xab; 512][..]);
    assert_eq!(&get(&mem, DATA + 3 * 0x1_0000, 20)[..7], b"rootfs\0");
    assert_eq!(rig.m.read_bytes.get(), 1024);
    assert_eq!(rig.m.write_bytes.get(), 512);
    assert_eq!(rig.m.flushes.get(), 1);
    assert_eq!(rig.m.requests.get(), 4, "read, write, flush and get-id");
}

#[test]
fn read_only_disk_refuses_writes_and_file_is_untouched() {
    let mem = guest_mem();
    let img = Img::new(8);
    let before = img.bytes();
    let d = disk(&img, true);
    let mut rig = Rig::new(&mem);
    put(&mem, DATA, &[0x55; 512]);
    let st = rig.submit(VIRTIO_BLK_T_OUT, 0, 512, false);
    let st_r = rig.submit(VIRTIO_BLK_T_IN, 0, 512, true);
    process_queue(&mut rig.active, Some(&d), &rig.m);
    assert_eq!(get(&mem, st, 1)[0], VIRTIO_BLK_S_IOERR);
    assert_eq!(get(&mem, st_r, 1)[0], VIRTIO_BLK_S_OK);
    assert_eq!(img.bytes(), before);
    assert_eq!(rig.m.errors.get(), 1);
}

#[test]
fn out_of_range_unaligned_and_unknown_requests_fail() {
    let mem = guest_mem();
    let img = Img::new(8);
    let d = disk(&img, false);
    let mut rig = Rig::new(&mem);
    let past_end = rig.submit(VIRTIO_BLK_T_IN, 7, 1024, true);
    let overflow = rig.submit(VIRTIO_BLK_T_OUT, u64::MAX, 512, false);
    let unaligned = rig.submit(VIRTIO_BLK_T_IN, 0, 100, true);
    let unknown = rig.submit(77, 0, 0, false);
    process_queue(&mut rig.active, Some(&d), &rig.m);
    assert_eq!(get(&mem, past_end, 1)[0], VIRTIO_BLK_S_IOERR);
    assert_eq!(get(&mem, overflow, 1)[0], VIRTIO_BLK_S_IOERR);
    assert_eq!(get(&mem, unaligned, 1)[0], VIRTIO_BLK_S_IOERR);
    assert_eq!(get(&mem, unknown, 1)[0], VIRTIO_BLK_S_UNSUPP);
    assert_eq!(rig.m.errors.get(), 4);
}

#[test]
fn hostile_chains_are_returned_without_touching_the_disk() {
    let mem = guest_mem();
    let img = Img::new(8);
    let before = img.bytes();
    let d = disk(&img, false);
    let mut rig = Rig::new(&mem);
    let h = header(&mem, 0, VIRTIO_BLK_T_OUT, 0);
    // Data buffer outside guest memory.
    rig.q.add(&[(h, 16, false), (0x7fff_0000_0000, 512, false), (STATUS, 1, true)]);
    // Header short.
    rig.q.add(&[(h, 8, false), (STATUS, 1, true)]);
    // No status byte.
    rig.q.add(&[(h, 16, false), (DATA, 512, false)]);
    // Status before data (writable then readable).
    rig.q.add(&[(h, 16, false), (STATUS, 1, true), (DATA, 512, false)]);
    // A loop: 20 -> 21 -> 20.
    rig.q.add_raw(20, &[(h, 16, F_NEXT, 21), (DATA, 512, F_NEXT, 20)]);
    // Next index past the table.
    rig.q.add_raw(30, &[(h, 16, F_NEXT, 9999)]);
    process_queue(&mut rig.active, Some(&d), &rig.m);
    let used = rig.q.used();
    assert_eq!(used.len(), 6, "every chain completed: {used:?}");
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_eq!(rig.m.errors.get(), 6);
    assert_eq!(rig.m.requests.get(), 6);
    assert_eq!(img.bytes(), before);
}

#[test]
fn avail_index_beyond_queue_size_marks_device_broken() {
    let mem = guest_mem();
    let img = Img::new(8);
    let d = disk(&img, false);
    let mut rig = Rig::new(&mem);
    rig.q.vq.avail().idx().store(1000);
    process_queue(&mut rig.active, Some(&d), &rig.m);
    assert!(rig.active.broken);
    assert!(rig.q.used().is_empty());
}

/// Activates `dev`, submits a GET_ID request, notifies the queue and waits (at most 5 s) for
/// the I/O thread to complete it.
fn get_id_through_worker<'a>(mem: &'a GuestMemoryMmap, dev: &mut Block) -> (TestQueue<'a>, std::sync::Arc<crate::devices::virtio::Interrupt>) {
    let mut q = TestQueue::new(mem, 0x1000, 256);
    let irq = interrupt();
    dev.activate(mem.clone(), irq.clone(), vec![q.queue()]).unwrap();
    let h = header(mem, 0, VIRTIO_BLK_T_GET_ID, 0);
    q.add(&[(h, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    dev.queue_events()[0].write(1).unwrap();
    let start = Instant::now();
    while q.used().is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    (q, irq)
}

#[test]
fn device_config_features_and_worker_thread() {
    let mem = guest_mem();
    let img = Img::new(16);
    let cfg = BlockConfig { path: img.0.clone(), read_only: true, id: "data1".into(), fd: None };
    let mut dev = Block::new(cfg).unwrap();
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 16);
    assert_ne!(dev.avail_features() & feature(VIRTIO_BLK_F_RO), 0);
    // seg_max lets the driver send many pages per request.
    assert_ne!(dev.avail_features() & feature(VIRTIO_BLK_F_SEG_MAX), 0);
    let mut w = [0u8; 4];
    dev.read_config(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), u32::from(QUEUE_SIZE) - 2);

    let (q, irq) = get_id_through_worker(&mem, &mut dev);
    assert_eq!(q.used().len(), 1);
    assert_eq!(&get(&mem, DATA, 5), b"data1");
    assert_eq!(irq.event().read().unwrap(), 1, "interrupt raised");
    dev.reset();
    assert!(!dev.is_activated());
    assert_eq!(dev.metrics()["id"], "data1");
}

#[test]
fn bad_configs_name_the_problem() {
    let err = Block::new(BlockConfig { path: "/nonexistent/disk.img".into(), read_only: false, id: "x".into(), fd: None }).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
    let img = Img::new(1);
    let err = Block::new(BlockConfig { path: img.0.clone(), read_only: false, id: "x".repeat(21), fd: None }).unwrap_err();
    assert!(err.to_string().contains(&"x".repeat(21)), "{err}");
}

#[test]
fn a_boot_disk_can_be_an_inherited_descriptor_of_the_right_mode() {
    use std::os::fd::IntoRawFd;
    let img = Img::new(8);
    // The path only names it: the device opens nothing.
    let fd = std::fs::File::open(&img.0).unwrap().into_raw_fd();
    let dev = Block::new(BlockConfig { path: "/disks/0".into(), read_only: true, id: "rootfs".into(), fd: Some(fd) }).unwrap();
    assert_eq!(dev.metrics()["id"], "rootfs");
    drop(dev);
    // A read-only descriptor for a writable disk, a descriptor that is not open, stdio.
    let fd = std::fs::File::open(&img.0).unwrap().into_raw_fd();
    let err = Block::new(BlockConfig { path: "/disks/0".into(), read_only: false, id: "rw".into(), fd: Some(fd) }).unwrap_err();
    assert!(err.to_string().contains("/disks/0"), "{err}");
    // Far above anything this process opens (other tests run in parallel threads).
    let unused = 60_000;
    let err = Block::new(BlockConfig { path: "/disks/1".into(), read_only: true, id: "gone".into(), fd: Some(unused) }).unwrap_err();
    assert!(format!("{err}: {:?}", std::error::Error::source(&err)).contains("not open"), "{err}");
    let err = Block::new(BlockConfig { path: "/disks/2".into(), read_only: true, id: "stdio".into(), fd: Some(1) }).unwrap_err();
    assert!(format!("{err}: {:?}", std::error::Error::source(&err)).contains("stdio"), "{err}");
}

#[test]
fn notification_before_driver_ok_is_counted_and_ignored() {
    let img = Img::new(8);
    let dev = Block::new(BlockConfig { path: img.0.clone(), read_only: false, id: "early".into(), fd: None }).unwrap();
    dev.queue_events()[0].write(1).unwrap();
    let start = Instant::now();
    while dev.counters().early_notifications.get() == 0 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(dev.counters().early_notifications.get(), 1);
    assert!(!dev.is_activated());
}

#[test]
fn io_thread_installs_a_seccomp_filter_when_told() {
    let img = Img::new(8);
    let dev = Block::new(BlockConfig { path: img.0.clone(), read_only: false, id: "sc".into(), fd: None }).unwrap();
    let filter = crate::seccomp::filters().unwrap().get(crate::seccomp::ThreadKind::BlockIo);
    dev.io_thread().install_filter(filter).unwrap();
    // The confined thread still serves requests: a GET_ID round trip.
    let mem = guest_mem();
    let mut dev = dev;
    let (q, _) = get_id_through_worker(&mem, &mut dev);
    assert_eq!(q.used().len(), 1);
    assert_eq!(&get(&mem, DATA, 2), b"sc");
    dev.reset();
}

#[test]
fn config_writes_leave_the_capacity() {
    let img = Img::new(8);
    let mut dev = Block::new(BlockConfig { path: img.0.clone(), read_only: false, id: "cfg".into(), fd: None }).unwrap();
    assert_config_writes_ignored(&mut dev, 16);
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 8, "capacity in sectors");
}
