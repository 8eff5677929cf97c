//! Balloon device tests: mock queues over memfd-backed guest RAM, as husk-vmm creates it.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::device::discards;
use super::*;
use crate::devices::virtio::chain::{Chain, ChainError};
use crate::devices::virtio::test_utils::{get, interrupt, notify_before_activation, put, TestQueue};
use crate::devices::virtio::{feature, Interrupt, VirtioDevice, COMMON_FEATURES};
use crate::memory::{create_guest_memory, GuestMemoryMmap};

const MIB: u64 = 1 << 20;
/// Where the tests' free blocks are: well above the rings.
const BLOCK: u64 = 8 * MIB;
const PATTERN: u8 = 0xa5;

struct Rig<'a> {
    dev: Balloon,
    irq: Arc<Interrupt>,
    queues: Vec<TestQueue<'a>>,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let queues: Vec<_> = (0..NUM_QUEUES as u64).map(|i| TestQueue::new(mem, 0x1000 + i * 0x2000, QUEUE_SIZE)).collect();
        let irq = interrupt();
        let mut dev = Balloon::new().unwrap();
        dev.set_acked_features(dev.avail_features());
        dev.activate(mem.clone(), irq.clone(), queues.iter().map(TestQueue::queue).collect()).unwrap();
        Self { dev, irq, queues }
    }

    /// Adds a report chain of device-writable `(addr, len)` ranges.
    fn report(&mut self, ranges: &[(u64, u32)]) -> u16 {
        let bufs: Vec<_> = ranges.iter().map(|&(a, l)| (a, l, true)).collect();
        self.queues[REPORTQ].add(&bufs)
    }

    fn counter(&self, name: &str) -> u64 {
        self.dev.counters().pairs().into_iter().find(|(n, _)| *n == name).unwrap().1
    }
}

/// The memfd behind the guest RAM region at `addr`.
fn memfd(mem: &GuestMemoryMmap, addr: u64) -> &File {
    mem.find_region(GuestAddress(addr)).unwrap().file_offset().unwrap().file()
}

/// Bytes the memfd holds in memory (its allocated 512-byte blocks).
fn resident(file: &File) -> u64 {
    file.metadata().unwrap().blocks() * 512
}

fn fill(mem: &GuestMemoryMmap, addr: u64, len: u64) {
    put(mem, addr, &vec![PATTERN; len as usize]);
}

fn is_zero(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    get(mem, addr, len as usize).iter().all(|&b| b == 0)
}

fn is_pattern(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    get(mem, addr, len as usize).iter().all(|&b| b == PATTERN)
}

#[test]
fn reported_ranges_go_back_to_the_host_and_read_as_zeros() {
    let mem = create_guest_memory(16 * MIB).unwrap();
    let mut rig = Rig::new(&mem);
    let before = resident(memfd(&mem, BLOCK));
    fill(&mem, BLOCK, 4 * MIB);
    let filled = resident(memfd(&mem, BLOCK));
    assert!(filled >= before + 4 * MIB, "writing 4 MiB allocated {} bytes", filled - before);

    let head = rig.report(&[(BLOCK, 2 << 20), (BLOCK + 2 * MIB, 2 << 20)]);
    rig.dev.process_reports();

    // Measured before reading the pages back: a read of a hole in shared memory allocates it.
    let after = resident(memfd(&mem, BLOCK));
    assert!(after + 4 * MIB <= filled, "the memfd still holds {after} bytes (was {filled} after the fill)");
    assert!(is_zero(&mem, BLOCK, 4 * MIB), "reported pages still hold the guest's data");
    assert_eq!(rig.queues[REPORTQ].used(), vec![(u32::from(head), 0)]);
    assert_eq!(rig.irq.event().read().unwrap(), 1, "the driver is told the report is done");
    assert_eq!((rig.counter("report_chains"), rig.counter("reported_bytes")), (1, 4 * MIB));
    assert_eq!((rig.counter("rejected_reports"), rig.counter("discard_errors")), (0, 0));
    // The guest can use the pages again.
    fill(&mem, BLOCK, 4096);
    assert!(is_pattern(&mem, BLOCK, 4096));
}

#[test]
fn reported_ranges_of_copy_on_write_ram_drop_the_vms_copies() {
    // RAM mapped copy-on-write from a snapshot file whose block at BLOCK holds the pattern.
    let path = std::env::temp_dir().join(format!("husk-balloon-cow-{}", std::process::id()));
    let file = File::create(&path).unwrap();
    file.set_len(16 * MIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![PATTERN; 4 * MIB as usize], BLOCK).unwrap();
    drop(file);
    let mem = crate::memory::map_private(&create_guest_memory(16 * MIB).unwrap(), Arc::new(File::open(&path).unwrap())).unwrap();
    let mut rig = Rig::new(&mem);
    put(&mem, BLOCK, &vec![0x5a; 4 * MIB as usize]);

    let head = rig.report(&[(BLOCK, 4 << 20)]);
    rig.dev.process_reports();

    assert!(is_pattern(&mem, BLOCK, 4 * MIB), "the guest's copies were not dropped");
    assert_eq!(rig.queues[REPORTQ].used(), vec![(u32::from(head), 0)]);
    assert_eq!((rig.counter("reported_bytes"), rig.counter("discard_errors")), (4 * MIB, 0));
    assert_eq!(std::fs::read(&path).unwrap()[BLOCK as usize..(BLOCK + 4 * MIB) as usize], vec![PATTERN; 4 * MIB as usize], "the file changed");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn unaligned_ranges_are_rounded_inward_to_whole_pages() {
    let mem = create_guest_memory(16 * MIB).unwrap();
    let mut rig = Rig::new(&mem);
    fill(&mem, BLOCK - 4096, 4 * 4096);
    fill(&mem, BLOCK + MIB, 4096);
    // 100 bytes before BLOCK up to 100 bytes into the third page: only pages 1 and 2 are whole.
    rig.report(&[(BLOCK - 100, 2 * 4096 + 200)]);
    // Less than a page: nothing to give back, but a valid report.
    rig.report(&[(BLOCK + MIB + 10, 100)]);
    rig.dev.process_reports();
    assert!(is_pattern(&mem, BLOCK - 4096, 4096), "the partly reported page before was freed");
    assert!(is_zero(&mem, BLOCK, 2 * 4096));
    assert!(is_pattern(&mem, BLOCK + 2 * 4096, 4096), "the partly reported page after was freed");
    assert!(is_pattern(&mem, BLOCK + MIB, 4096), "a sub-page report freed its page");
    assert_eq!((rig.counter("report_chains"), rig.counter("reported_bytes")), (2, 2 * 4096));
    assert_eq!(rig.queues[REPORTQ].used().len(), 2);
}

#[test]
fn bad_reports_are_refused_whole_completed_and_touch_nothing() {
    let mem = create_guest_memory(16 * MIB).unwrap();
    let mut rig = Rig::new(&mem);
    fill(&mem, BLOCK, 2 * MIB);
    let filled = resident(memfd(&mem, BLOCK));
    let good = (BLOCK, 4096u32);
    // Past the end of RAM; reaching past it; empty; too many descriptors for one report.
    rig.report(&[good, (16 * MIB, 4096)]);
    rig.report(&[good, (16 * MIB - 4096, 8192)]);
    rig.report(&[good, (BLOCK + 4096, 0)]);
    let many: Vec<_> = (0..MAX_REPORT_DESCS as u64 + 1).map(|i| (BLOCK + i * 4096, 4096)).collect();
    rig.report(&many);
    // Device-readable ranges (the driver only adds device-writable ones).
    rig.queues[REPORTQ].add(&[(BLOCK, 2 << 20, false)]);
    rig.dev.process_reports();

    assert!(is_pattern(&mem, BLOCK, 2 * MIB), "a refused report freed guest memory");
    assert_eq!(resident(memfd(&mem, BLOCK)), filled);
    assert_eq!(rig.queues[REPORTQ].used().iter().map(|&(_, len)| len).collect::<Vec<_>>(), vec![0; 5], "every chain is completed");
    assert_eq!((rig.counter("rejected_reports"), rig.counter("report_chains"), rig.counter("reported_bytes")), (5, 0, 0));
    // The device keeps working afterwards.
    rig.report(&[good]);
    rig.dev.process_reports();
    assert!(is_zero(&mem, BLOCK, 4096));
    assert_eq!(rig.counter("reported_bytes"), 4096);
}

#[test]
fn validation_names_what_was_wrong() {
    let mem = create_guest_memory(16 * MIB).unwrap();
    let chain = |readable: Vec<(u64, u32)>, writable: Vec<(u64, u32)>| {
        let d = |v: Vec<(u64, u32)>| v.into_iter().map(|(a, len)| crate::devices::virtio::chain::Desc { addr: GuestAddress(a), len }).collect();
        Chain { head: 7, readable: d(readable), writable: d(writable) }
    };
    let e = discards(&mem, &chain(vec![(BLOCK, 4096)], vec![])).unwrap_err();
    assert_eq!(e, ReportError::Readable { head: 7, count: 1 });
    let e = discards(&mem, &chain(vec![], vec![(BLOCK, 4096), (BLOCK, 0)])).unwrap_err();
    assert_eq!(e, ReportError::Empty { head: 7, index: 1 });
    // Chains are validated against guest memory before; this is the last line (and covers
    // addresses no region holds and lengths that wrap).
    let e = discards(&mem, &chain(vec![], vec![(u64::MAX - 10, 4096)])).unwrap_err();
    assert!(matches!(e, ReportError::NotInOneRegion { .. }), "{e}");
    let e = discards(&mem, &chain(vec![], vec![(16 * MIB - 4096, u32::MAX)])).unwrap_err();
    assert!(e.to_string().contains("0xfff000+0xffffffff"), "{e}");
    let ok = discards(&mem, &chain(vec![], vec![(BLOCK + 1, 3 * 4096)])).unwrap();
    assert_eq!(ok.iter().map(|d| (d.addr(), d.len())).collect::<Vec<_>>(), vec![(GuestAddress(BLOCK + 4096), 2 * 4096)]);
    assert!(matches!(ReportError::from(ChainError::Empty { head: 1 }), ReportError::Chain(_)));
}

/// Two RAM regions next to each other, each a part of one memfd at an offset that differs
/// from its guest address (region 0 is the file's second MiB, region 1 its first).
fn two_adjacent_regions() -> GuestMemoryMmap {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let file = Arc::new(File::from(memfd_create("balloon-test", MFdFlags::MFD_CLOEXEC).unwrap()));
    file.set_len(2 * MIB).unwrap();
    GuestMemoryMmap::from_ranges_with_files([
        (GuestAddress(0), MIB as usize, Some(FileOffset::from_arc(file.clone(), MIB))),
        (GuestAddress(MIB), MIB as usize, Some(FileOffset::from_arc(file, 0))),
    ])
    .unwrap()
}

#[test]
fn a_range_across_two_regions_is_refused_and_file_offsets_are_per_region() {
    let mem = two_adjacent_regions();
    assert_eq!(mem.num_regions(), 2);
    let mut rig = Rig::new(&mem);
    fill(&mem, 0x80000, 0x80000 + MIB);
    // Backed all the way (vm-memory accepts it as one buffer), but in two regions.
    rig.queues[REPORTQ].add(&[(MIB - 4096, 8192, true)]);
    rig.dev.process_reports();
    assert!(is_pattern(&mem, MIB - 4096, 8192));
    assert_eq!(rig.dev.counters().rejected_reports.get(), 1);
    // A page of region 1 is file offset 0x1000, not 0x101000 (which is region 0's 0x1000).
    rig.queues[REPORTQ].add(&[(MIB + 0x1000, 4096, true)]);
    rig.queues[REPORTQ].add(&[(0x80000, 4096, true)]);
    rig.dev.process_reports();
    assert!(is_zero(&mem, MIB + 0x1000, 4096));
    assert!(is_pattern(&mem, MIB + 0x2000, 4096) && is_pattern(&mem, MIB - 4096, 4096));
    assert!(is_zero(&mem, 0x80000, 4096));
    assert!(is_pattern(&mem, 0x81000, 4096));
    assert_eq!(rig.dev.counters().reported_bytes.get(), 8192);
    assert_eq!(rig.queues[REPORTQ].used().len(), 3);
}

#[test]
fn ram_without_a_backing_file_counts_a_discard_error() {
    let mem = crate::devices::virtio::test_utils::guest_mem();
    let mut rig = Rig::new(&mem);
    fill(&mem, BLOCK, 4096);
    rig.report(&[(BLOCK, 4096)]);
    rig.dev.process_reports();
    assert!(is_pattern(&mem, BLOCK, 4096));
    assert_eq!((rig.counter("discard_errors"), rig.counter("reported_bytes"), rig.counter("report_chains")), (1, 0, 1));
    assert_eq!(rig.queues[REPORTQ].used().len(), 1, "completed all the same");
}

#[test]
fn inflate_and_deflate_chains_are_completed_unread() {
    let mem = create_guest_memory(16 * MIB).unwrap();
    let mut rig = Rig::new(&mem);
    fill(&mem, BLOCK, 4096);
    // An array of page frame numbers naming BLOCK's page (what a driver would send).
    put(&mem, 0x10_0000, &((BLOCK >> 12) as u32).to_le_bytes());
    let inflate = rig.queues[INFLATEQ].add(&[(0x10_0000, 4, false)]);
    let deflate = rig.queues[DEFLATEQ].add(&[(0x10_0000, 4, false)]);
    rig.queues[DEFLATEQ].add(&[(0x10_0000, 4, false)]);
    rig.dev.process_ignored(INFLATEQ);
    rig.dev.process_ignored(DEFLATEQ);
    assert!(is_pattern(&mem, BLOCK, 4096), "an inflate request freed memory the host never asked for");
    assert_eq!(rig.queues[INFLATEQ].used(), vec![(u32::from(inflate), 0)]);
    assert_eq!(rig.queues[DEFLATEQ].used()[0], (u32::from(deflate), 0));
    assert_eq!((rig.counter("inflate_ignored"), rig.counter("deflate_ignored"), rig.counter("reported_bytes")), (1, 2, 0));
}

#[test]
fn config_space_has_num_pages_zero_and_keeps_actual() {
    let mut dev = Balloon::new().unwrap();
    let read = |dev: &Balloon| {
        let mut b = [0xffu8; CONFIG_SIZE + 4];
        dev.read_config(0, &mut b);
        b
    };
    assert_eq!(read(&dev), [0; CONFIG_SIZE + 4]);
    dev.write_config(4, &1234u32.to_le_bytes());
    let b = read(&dev);
    assert_eq!((&b[..4], &b[4..8], &b[8..]), (&[0u8; 4][..], &1234u32.to_le_bytes()[..], &[0u8; 4][..]));
    // Byte-wise writes inside `actual`.
    dev.write_config(6, &[0x01, 0x02]);
    assert_eq!(&read(&dev)[4..8], &(0x0201_0000u32 | 1234).to_le_bytes());
    // num_pages is the host's; writes past `actual`, straddling it or at wrapping offsets are
    // ignored.
    for (offset, data) in [(0u64, &[9u8; 4][..]), (2, &[9; 4]), (6, &[9; 4]), (8, &[9; 4]), (u64::MAX, &[9; 4]), (u64::MAX - 1, &[9; 1])] {
        dev.write_config(offset, data);
    }
    assert_eq!(&read(&dev)[..8], &[0, 0, 0, 0, 0xd2, 0x04, 0x01, 0x02]);
    let mut tail = [0xffu8; 2];
    dev.read_config(7, &mut tail);
    assert_eq!(tail, [0x02, 0]);
    dev.reset();
    assert_eq!(read(&dev), [0; CONFIG_SIZE + 4], "reset forgets actual");
}

#[test]
fn offers_only_free_page_reporting_on_three_queues() {
    let dev = Balloon::new().unwrap();
    assert_eq!(dev.device_type(), 5);
    assert_eq!(dev.avail_features(), COMMON_FEATURES | feature(VIRTIO_BALLOON_F_REPORTING));
    assert_eq!(feature(VIRTIO_BALLOON_F_REPORTING), 1 << 5);
    // Not STATS_VQ (1) nor FREE_PAGE_HINT (3): with either, the reporting queue moves.
    assert_eq!(dev.avail_features() & (feature(1) | feature(3)), 0);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE; 3]);
    assert!(QUEUE_SIZE as usize >= MAX_REPORT_DESCS, "Linux refuses a reporting queue below its capacity");
    assert_eq!(dev.queue_events().len(), 3);
}

#[test]
fn activation_needs_three_queues_and_early_notifications_are_counted() {
    let mem = create_guest_memory(16 * MIB).unwrap();
    let qs: Vec<_> = (0..2u64).map(|i| TestQueue::new(&mem, 0x1000 + i * 0x2000, QUEUE_SIZE)).collect();
    let mut dev = Balloon::new().unwrap();
    let e = dev.activate(mem.clone(), interrupt(), qs.iter().map(TestQueue::queue).collect()).unwrap_err();
    assert!(e.to_string().contains("expects 3 queues"), "{e}");
    assert!(!dev.is_activated());
    let dev = notify_before_activation(dev, REPORTQ);
    assert_eq!(dev.counters().early_notifications.get(), 1);
}
