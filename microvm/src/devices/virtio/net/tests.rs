//! Net device tests: mock queues, a datagram socket pair standing in for the tap.

#![allow(clippy::unwrap_used)]

use std::io;

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use virtio_queue::QueueT;

use super::device::FrameIo;
use super::*;
use crate::devices::virtio::interrupt::INT_VRING;
use crate::devices::virtio::test_utils::{assert_config_writes_ignored, get, guest_mem, interrupt, notify_before_activation, put, TestQueue};
use crate::devices::virtio::{feature, Interrupt, QueueProgress, VirtioDevice, COMMON_FEATURES};
use crate::memory::GuestMemoryMmap;

struct Dgram(UnixDatagram, Arc<Mutex<Option<u32>>>);

impl std::os::fd::AsRawFd for Dgram {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for Dgram {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        *self.1.lock().unwrap() = Some(flags);
        Ok(())
    }
}

struct Rig<'a> {
    dev: Net,
    host: UnixDatagram,
    offload: Arc<Mutex<Option<u32>>>,
    rxq: TestQueue<'a>,
    txq: TestQueue<'a>,
}

fn cfg() -> NetConfig {
    NetConfig { tap: "tap-test".into(), mac: Some([2, 0, 0, 0, 0, 7]), netns: None, fd: None }
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap, acked: u64) -> Self {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let offload = Arc::new(Mutex::new(None));
        let mut dev = Net::with_backend(cfg(), Box::new(Dgram(a, offload.clone()))).unwrap();
        let rxq = TestQueue::new(mem, 0x1000, 256);
        let txq = TestQueue::new(mem, 0x8000, 256);
        dev.set_acked_features(acked);
        dev.activate(mem.clone(), interrupt(), vec![rxq.queue(), txq.queue()]).unwrap();
        Self { dev, host: b, offload, rxq, txq }
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_SIZE];
    f.extend_from_slice(payload);
    f
}

#[test]
fn guest_frames_reach_the_backend_whole() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, COMMON_FEATURES);
    let f = frame(&[0xaa; 100]);
    put(&mem, 0x10_0000, &f[..VNET_HDR_SIZE]);
    put(&mem, 0x11_0000, &f[VNET_HDR_SIZE..]);
    rig.txq.add(&[(0x10_0000, VNET_HDR_SIZE as u32, false), (0x11_0000, 100, false)]);
    rig.dev.process_tx();
    let mut buf = [0u8; 512];
    let n = rig.host.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &f[..]);
    assert_eq!(rig.txq.used().len(), 1);
    assert_eq!(rig.dev.counters().tx_bytes.get(), 100);
}

#[test]
fn backend_frames_wait_for_guest_buffers() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, COMMON_FEATURES);
    rig.host.send(&frame(b"first frame")).unwrap();
    rig.host.send(&frame(b"second")).unwrap();
    rig.dev.process_rx(); // no buffers yet: the first frame is held
    assert!(rig.rxq.used().is_empty());
    rig.rxq.add(&[(0x20_0000, 2048, true)]);
    rig.rxq.add(&[(0x21_0000, 2048, true)]);
    rig.dev.process_rx();
    let used = rig.rxq.used();
    assert_eq!(used.len(), 2);
    assert_eq!(used[0].1 as usize, VNET_HDR_SIZE + 11);
    assert_eq!(&get(&mem, 0x20_0000 + VNET_HDR_SIZE as u64, 11), b"first frame");
    assert_eq!(&get(&mem, 0x21_0000 + VNET_HDR_SIZE as u64, 6), b"second");
    // num_buffers is 1.
    assert_eq!(get(&mem, 0x20_0000 + 10, 2), vec![1, 0]);
}

#[test]
fn frames_go_straight_into_big_guest_buffers() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, COMMON_FEATURES);
    // A "big packets" chain: a header-sized descriptor, then enough for a 64 KiB frame.
    rig.rxq.add(&[(0x20_0000, VNET_HDR_SIZE as u32, true), (0x30_0000, MAX_FRAME as u32, true)]);
    rig.rxq.add(&[(0x40_0000, MAX_FRAME as u32, true)]);
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    rig.host.send(&frame(&big)).unwrap();
    rig.host.send(&frame(b"tail")).unwrap();
    rig.dev.process_rx();
    let used = rig.rxq.used();
    assert_eq!(used.len(), 2);
    assert_eq!(used[0].1 as usize, VNET_HDR_SIZE + big.len());
    assert_eq!(get(&mem, 0x30_0000, big.len()), big);
    assert_eq!(get(&mem, 0x20_0000 + 10, 2), vec![1, 0], "num_buffers");
    assert_eq!(&get(&mem, 0x40_0000 + VNET_HDR_SIZE as u64, 4), b"tail");
    assert_eq!(rig.dev.counters().rx_bytes.get(), big.len() as u64 + 4);
    // Nothing left: the next call finds the backend drained and the guest out of buffers.
    rig.dev.process_rx();
    assert_eq!(rig.rxq.used().len(), 2);
}

#[test]
fn frame_larger_than_guest_buffer_is_dropped_and_buffer_reused() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, COMMON_FEATURES);
    rig.rxq.add(&[(0x20_0000, 64, true)]);
    rig.host.send(&frame(&[1; 200])).unwrap();
    rig.host.send(&frame(&[2; 20])).unwrap();
    rig.dev.process_rx();
    let used = rig.rxq.used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1 as usize, VNET_HDR_SIZE + 20);
    assert_eq!(rig.dev.counters().dropped.get(), 1);
}

#[test]
fn hostile_tx_chains_are_dropped() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, COMMON_FEATURES);
    rig.txq.add(&[(0x10_0000, 4, false)]); // shorter than the header
    rig.txq.add(&[(0x10_0000, 0x20_0000, false)]); // larger than any frame
    rig.txq.add(&[(0xdead_0000_0000, 64, false)]); // outside memory
    rig.txq.add(&[(0x10_0000, 64, true)]); // write-only
    rig.dev.process_tx();
    assert_eq!(rig.txq.used().len(), 4);
    assert_eq!(rig.dev.counters().errors.get(), 4);
    let mut buf = [0u8; 16];
    rig.host.set_nonblocking(true).unwrap();
    assert_eq!(rig.host.recv(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn offloads_follow_what_the_guest_accepted() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, COMMON_FEATURES);
    assert_eq!(*rig.offload.lock().unwrap(), None, "not applied on the vCPU thread");
    rig.dev.apply_offload();
    assert_eq!(*rig.offload.lock().unwrap(), Some(0));
    let mut rig = Rig::new(&mem, COMMON_FEATURES | feature(VIRTIO_NET_F_GUEST_CSUM) | feature(VIRTIO_NET_F_GUEST_TSO4));
    rig.dev.apply_offload();
    assert_eq!(*rig.offload.lock().unwrap(), Some(tap::TUN_F_CSUM | tap::TUN_F_TSO4));
}

#[test]
fn mac_in_config_space() {
    let mem = guest_mem();
    let rig = Rig::new(&mem, COMMON_FEATURES);
    let mut b = [0u8; 6];
    rig.dev.read_config(0, &mut b);
    assert_eq!(b, [2, 0, 0, 0, 0, 7]);
    assert_ne!(rig.dev.avail_features() & feature(VIRTIO_NET_F_MAC), 0);
}

#[test]
fn bad_tap_names_and_namespaces_are_reported() {
    let e = tap::Tap::open("a-name-that-is-far-too-long", None).unwrap_err();
    assert!(e.to_string().contains("a-name-that-is-far-too-long"), "{e}");
    let e = tap::Tap::open("husktest0", Some(std::path::Path::new("/nonexistent/netns"))).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
}

/// Whether this process has CAP_NET_ADMIN (bit 12 of CapEff in /proc/self/status).
fn has_net_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << 12) != 0
}

#[test]
fn real_tap_is_created_and_vanishes_when_closed() {
    let name = format!("husk{}", std::process::id() % 100_000);
    let tun = std::path::Path::new("/dev/net/tun").exists();
    let dev = match Net::new(NetConfig { tap: name.clone(), mac: None, netns: None, fd: None }) {
        Ok(d) => d,
        // Where no tap can be made, the failure must say why and name the tap; where one
        // can (root with /dev/net/tun, as `make test` runs), it must work.
        Err(e) if !tun || !has_net_admin() => {
            let msg = format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default());
            assert!(msg.contains(&name), "{msg}");
            assert!(if tun { msg.contains("ermission") || msg.contains("not permitted") } else { msg.contains("/dev/net/tun") }, "{msg}");
            return;
        }
        Err(e) => panic!("creating tap {name} failed with CAP_NET_ADMIN and /dev/net/tun: {e:?}"),
    };
    let sys = std::path::PathBuf::from(format!("/sys/class/net/{name}"));
    assert!(sys.exists());
    drop(dev);
    assert!(!sys.exists(), "tap left behind");
}

/// Opens tap `name` the way the shim does (or with other `flags`) and gives up ownership of
/// the descriptor, as a parent does for its child.
fn inherited_tap(name: &str, flags: i16) -> std::os::fd::RawFd {
    use std::os::fd::{AsRawFd, IntoRawFd};
    let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").unwrap();
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one 40-byte `struct ifreq` (name, then flags);
    // `req` is that buffer and outlives the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), 0x4004_54ca, req.as_mut_ptr()) };
    assert_eq!(r, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    f.into_raw_fd()
}

fn inherited(name: &str, fd: std::os::fd::RawFd) -> NetConfig {
    NetConfig { tap: name.into(), mac: None, netns: None, fd: Some(fd) }
}

#[test]
fn an_inherited_tap_is_taken_over_and_checked() {
    let name = format!("huskfd{}", std::process::id() % 100_000);
    let fd = inherited_tap(&name, 0x0002 | 0x1000 | 0x4000);
    let sys = std::path::PathBuf::from(format!("/sys/class/net/{name}"));
    // The wrong name is refused, naming both, and the descriptor stays the caller's.
    let e = Net::new(inherited("other0", fd)).unwrap_err().to_string();
    assert!(e.contains(&name) && e.contains("other0") && e.contains(&fd.to_string()), "{e}");
    let dev = Net::new(inherited(&name, fd)).unwrap();
    // SAFETY: F_GETFD/F_GETFL on a descriptor the device now owns; no memory is passed.
    let (fdflags, flflags) = unsafe { (libc::fcntl(fd, libc::F_GETFD), libc::fcntl(fd, libc::F_GETFL)) };
    assert_ne!(fdflags & libc::FD_CLOEXEC, 0, "close-on-exec");
    assert_ne!(flflags & libc::O_NONBLOCK, 0, "non-blocking");
    assert!(sys.exists());
    drop(dev);
    assert!(!sys.exists(), "the device owned the last descriptor: its tap must be gone");

    // Without a virtio-net header the tap is refused.
    let plain = inherited_tap(&name, 0x0002 | 0x1000);
    let e = Net::new(inherited(&name, plain)).unwrap_err().to_string();
    assert!(e.contains("IFF_VNET_HDR"), "{e}");
    // SAFETY: closing the descriptor the refused attempt left to us.
    unsafe { libc::close(plain) };
    // Not open, and not a tap.
    let e = Net::new(inherited(&name, 999)).unwrap_err().to_string();
    assert!(e.contains("999") && e.contains("not open"), "{e}");
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let e = Net::new(inherited(&name, std::os::fd::AsRawFd::as_raw_fd(&file))).unwrap_err();
    assert!(e.to_string().contains("not a tap"), "{e}");
}

const MRG: u64 = COMMON_FEATURES | feature(VIRTIO_NET_F_MRG_RXBUF);

/// Posts `n` single-descriptor receive buffers of `len` bytes, 8 KiB apart from `base`;
/// returns (head, address) of each.
fn post(rig: &mut Rig, base: u64, n: u64, len: u32) -> Vec<(u16, u64)> {
    (0..n)
        .map(|i| {
            let addr = base + i * 0x2000;
            (rig.rxq.add(&[(addr, len, true)]), addr)
        })
        .collect()
}

fn num_buffers(mem: &GuestMemoryMmap, addr: u64) -> u16 {
    let b = get(mem, addr + 10, 2);
    u16::from_le_bytes([b[0], b[1]])
}

#[test]
fn mergeable_receive_is_offered() {
    let mem = guest_mem();
    let rig = Rig::new(&mem, COMMON_FEATURES);
    assert_ne!(rig.dev.avail_features() & feature(VIRTIO_NET_F_MRG_RXBUF), 0);
}

#[test]
fn big_frame_spreads_over_mergeable_buffers() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, MRG);
    // The first buffer splits the header over two descriptors (num_buffers in the second).
    let first = rig.rxq.add(&[(0x20_0000, 6, true), (0x20_1000, 4090, true)]);
    let rest = post(&mut rig, 0x30_0000, 24, 4096);
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    rig.host.send(&frame(&big)).unwrap();
    rig.dev.process_rx();
    let used = rig.rxq.used();
    let total = VNET_HDR_SIZE + big.len();
    let k = total.div_ceil(4096);
    assert_eq!(used.len(), k, "{used:?}");
    assert_eq!(get(&mem, 0x20_1000 + 4, 2), (k as u16).to_le_bytes(), "num_buffers");
    assert_eq!(used[0], (u32::from(first), 4096));
    for (i, &(head, len)) in used.iter().enumerate().skip(1) {
        assert_eq!(head, u32::from(rest[i - 1].0), "used in posting order");
        let want = if i + 1 == k { total - 4096 * (k - 1) } else { 4096 };
        assert_eq!(len as usize, want, "buffer {i}");
    }
    // The payload, stitched back together in the guest's order, is intact.
    let mut got = get(&mem, 0x20_1000, 4090)[VNET_HDR_SIZE - 6..].to_vec();
    for (&(_, addr), &(_, len)) in rest.iter().zip(&used[1..]) {
        got.extend(get(&mem, addr, len as usize));
    }
    assert_eq!(got, big);
    assert_eq!(rig.dev.counters().rx_frames.get(), 1);
    assert_eq!(rig.dev.counters().rx_bytes.get(), big.len() as u64);
}

#[test]
fn small_frames_take_one_mergeable_buffer_each_in_order() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, MRG);
    // More than a maximal frame's worth: frames are read straight into held buffers.
    let bufs = post(&mut rig, 0x20_0000, 40, 2048);
    for i in 0..5u8 {
        rig.host.send(&frame(&vec![i; 100 + usize::from(i)])).unwrap();
    }
    rig.dev.process_rx();
    // Buffers taken for one frame and not needed carry over: the next frames, read later,
    // go on in posting order.
    for i in 5..8u8 {
        rig.host.send(&frame(&vec![i; 100 + usize::from(i)])).unwrap();
    }
    rig.dev.backend_readable = true; // what the event loop does when the tap becomes readable
    rig.dev.process_rx();
    let used = rig.rxq.used();
    assert_eq!(used.len(), 8);
    for (i, &(head, len)) in used.iter().enumerate() {
        let (want_head, addr) = bufs[i];
        assert_eq!(head, u32::from(want_head), "frame {i}");
        assert_eq!(len as usize, VNET_HDR_SIZE + 100 + i);
        assert_eq!(num_buffers(&mem, addr), 1);
        assert_eq!(get(&mem, addr + VNET_HDR_SIZE as u64, 100 + i), vec![i as u8; 100 + i]);
    }
    assert_eq!(rig.dev.counters().rx_frames.get(), 8);
}

#[test]
fn mergeable_frame_waits_for_enough_buffers() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, MRG);
    let mut bufs = post(&mut rig, 0x20_0000, 2, 4096);
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    rig.host.send(&frame(&big)).unwrap();
    rig.host.send(&frame(b"next")).unwrap();
    rig.dev.process_rx();
    assert!(rig.rxq.used().is_empty(), "8 KiB of buffers cannot hold the frame");
    bufs.extend(post(&mut rig, 0x40_0000, 2, 4096));
    rig.dev.process_rx();
    let used = rig.rxq.used();
    assert_eq!(used.len(), 4, "{used:?}");
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(lens, [4096, 4096, (VNET_HDR_SIZE + big.len() - 8192) as u32, VNET_HDR_SIZE as u32 + 4]);
    assert_eq!(num_buffers(&mem, bufs[0].1), 3);
    let mut got = get(&mem, bufs[0].1 + VNET_HDR_SIZE as u64, 4096 - VNET_HDR_SIZE);
    got.extend(get(&mem, bufs[1].1, 4096));
    got.extend(get(&mem, bufs[2].1, lens[2] as usize));
    assert_eq!(got, big);
    assert_eq!(num_buffers(&mem, bufs[3].1), 1);
    assert_eq!(&get(&mem, bufs[3].1 + VNET_HDR_SIZE as u64, 4), b"next");
    assert_eq!(rig.dev.counters().rx_bytes.get(), big.len() as u64 + 4);
}

#[test]
fn hostile_mergeable_chains_are_completed_empty() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, MRG);
    rig.rxq.add(&[(0x20_0000, 8, true)]); // shorter than the header
    rig.rxq.add(&[(0x21_0000, 2048, false)]); // device-readable only
    rig.rxq.add(&[(0x22_0000, 0, true)]); // zero length
    rig.rxq.add(&[(0xdead_0000_0000, 2048, true)]); // outside memory
    let good = post(&mut rig, 0x30_0000, 2, 2048);
    rig.host.send(&frame(b"still works")).unwrap();
    rig.dev.process_rx();
    let used = rig.rxq.used();
    assert_eq!(used.len(), 5, "{used:?}");
    assert!(used[..4].iter().all(|u| u.1 == 0), "{used:?}");
    assert_eq!(used[4], (u32::from(good[0].0), VNET_HDR_SIZE as u32 + 11));
    assert_eq!(&get(&mem, good[0].1 + VNET_HDR_SIZE as u64, 11), b"still works");
    assert_eq!(rig.dev.counters().errors.get(), 4);
    assert_eq!(rig.dev.counters().rx_frames.get(), 1);
}

#[test]
fn frame_too_big_for_a_full_queue_of_buffers_is_dropped() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, MRG);
    // Every slot of the queue holds a header-sized buffer: 3 KiB in all.
    post(&mut rig, 0x20_0000, u64::from(QUEUE_SIZE), VNET_HDR_SIZE as u32);
    rig.host.send(&frame(&[7; 4000])).unwrap();
    rig.host.send(&frame(b"tiny")).unwrap();
    rig.dev.process_rx();
    assert_eq!(rig.dev.counters().dropped.get(), 1);
    let used = rig.rxq.used();
    // The small frame needs one header-sized buffer plus one for its payload.
    assert_eq!(used.len(), 2, "{used:?}");
    assert_eq!(num_buffers(&mem, 0x20_0000), 2);
    assert_eq!(&get(&mem, 0x20_2000, 4), b"tiny");
}

#[test]
fn config_writes_leave_the_mac() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, COMMON_FEATURES);
    assert_config_writes_ignored(&mut rig.dev, 6);
}

#[test]
fn notification_before_activation_is_counted_and_ignored() {
    let (a, _b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let dev = Net::with_backend(cfg(), Box::new(Dgram(a, Arc::new(Mutex::new(None))))).unwrap();
    let dev = notify_before_activation(dev, TXQ);
    assert_eq!(dev.counters().early_notifications.get(), 1);
    assert!(!dev.is_activated());
}

#[test]
fn corrupt_avail_index_stops_the_device_and_nothing_else() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, COMMON_FEATURES);
    rig.txq.vq.avail().idx().store(1000);
    rig.dev.process_tx();
    assert!(rig.dev.active.as_ref().unwrap().broken);
    assert!(rig.txq.used().is_empty());
    // Frames from the tap are no longer put in the guest's buffers.
    rig.rxq.add(&[(0x20_0000, 2048, true)]);
    rig.host.send(&frame(&[1; 60])).unwrap();
    rig.dev.process_rx();
    assert!(rig.rxq.used().is_empty());
}

fn progress(dev: &mut Net) -> Vec<QueueProgress> {
    dev.save_progress().unwrap()
}

fn interrupt_of(dev: &Net) -> Arc<Interrupt> {
    dev.active.as_ref().unwrap().interrupt.clone()
}

/// A second device on the same guest memory and rings, activated at `saved` like a restored
/// one, with its own backend.
fn restored<'a>(rig: &Rig<'a>, mem: &GuestMemoryMmap, acked: u64, saved: &[QueueProgress]) -> (Net, UnixDatagram) {
    restored_with(rig, mem, acked, saved, Arc::new(Mutex::new(None)))
}

fn restored_with<'a>(rig: &Rig<'a>, mem: &GuestMemoryMmap, acked: u64, saved: &[QueueProgress], offload: Arc<Mutex<Option<u32>>>) -> (Net, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let mut dev = Net::with_backend(cfg(), Box::new(Dgram(a, offload))).unwrap();
    let queues = [rig.rxq.queue(), rig.txq.queue()]
        .into_iter()
        .zip(saved)
        .map(|(mut q, p)| {
            q.set_next_avail(p.next_avail);
            q.set_next_used(p.next_used);
            q
        })
        .collect();
    dev.set_acked_features(acked);
    dev.activate(mem.clone(), interrupt(), queues).unwrap();
    (dev, b)
}

#[test]
fn snapshot_gives_back_the_held_receive_chains_and_a_restored_device_fills_them_in_order() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, MRG);
    let bufs = post(&mut rig, 0x20_0000, 40, 2048);
    for i in 0..3u8 {
        rig.host.send(&frame(&[i; 100])).unwrap();
    }
    rig.dev.process_rx();
    assert_eq!(rig.rxq.used().len(), 3);
    let held = rig.dev.held.len();
    assert!(held > 30, "a maximal frame's worth of 2 KiB buffers is held: {held}");
    assert_eq!(rig.dev.active.as_ref().unwrap().queues[RXQ].next_avail(), 3 + held as u16);
    let saved = progress(&mut rig.dev);
    assert_eq!(saved, [QueueProgress { next_avail: 3, next_used: 3 }, QueueProgress { next_avail: 0, next_used: 0 }], "held chains given back");

    // The restored device takes the given-back chains again, from the first one on.
    let (mut dev, host) = restored(&rig, &mem, MRG, &saved);
    host.send(&frame(b"after the restore")).unwrap();
    dev.process_rx();
    let used = rig.rxq.used();
    assert_eq!(used.len(), 4, "{used:?}");
    assert_eq!(used[3], (u32::from(bufs[3].0), VNET_HDR_SIZE as u32 + 17));
    assert_eq!(&get(&mem, bufs[3].1 + VNET_HDR_SIZE as u64, 17), b"after the restore");
}

#[test]
fn progress_after_traffic_is_the_queues_own() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, COMMON_FEATURES);
    rig.rxq.add(&[(0x20_0000, 2048, true)]);
    rig.rxq.add(&[(0x21_0000, 2048, true)]);
    rig.host.send(&frame(b"one")).unwrap();
    rig.host.send(&frame(b"two")).unwrap();
    rig.host.send(&frame(b"three: no buffer")).unwrap();
    rig.dev.process_rx();
    for i in 0..3 {
        put(&mem, 0x10_0000 + i * 0x1000, &frame(&[7; 50]));
        rig.txq.add(&[(0x10_0000 + i * 0x1000, (VNET_HDR_SIZE + 50) as u32, false)]);
    }
    rig.dev.process_tx();
    assert_eq!(rig.rxq.used().len(), 2);
    assert_eq!(rig.txq.used().len(), 3);
    assert_eq!(progress(&mut rig.dev), [QueueProgress { next_avail: 2, next_used: 2 }, QueueProgress { next_avail: 3, next_used: 3 }]);
}

#[test]
fn a_snapshot_holds_the_device_off_guest_memory_until_the_guest_acknowledges_its_interrupt() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, MRG);
    post(&mut rig, 0x20_0000, 40, 2048);
    rig.dev.process_rx();
    let irq = interrupt_of(&rig.dev);
    let saved = progress(&mut rig.dev);
    assert_eq!(saved[RXQ], QueueProgress { next_avail: 0, next_used: 0 });

    // Between the progress and the memory being saved, nothing reaches guest memory.
    rig.host.send(&frame(b"during the snapshot")).unwrap();
    rig.dev.backend_readable = true;
    rig.dev.process_rx();
    put(&mem, 0x10_0000, &frame(&[7; 50]));
    rig.txq.add(&[(0x10_0000, (VNET_HDR_SIZE + 50) as u32, false)]);
    rig.dev.process_tx();
    assert!(rig.rxq.used().is_empty() && rig.txq.used().is_empty());
    assert_eq!(rig.dev.active.as_ref().unwrap().queues[RXQ].next_avail(), 33, "no chain taken");
    // A second snapshot of the same paused VM saves the same.
    assert_eq!(progress(&mut rig.dev), saved);

    // The event loop raises the interrupt; until the guest acknowledges it, the hold stays.
    rig.dev.hold_started();
    assert_eq!(irq.event().read().unwrap(), 1, "interrupt raised");
    assert!(!rig.dev.hold_tick());
    assert!(rig.txq.used().is_empty());
    irq.ack(INT_VRING);
    assert!(rig.dev.hold_tick(), "the guest ran: the hold ends");
    assert_eq!(rig.txq.used().len(), 1, "the waiting transmit chain is sent");
    let mut buf = [0u8; 128];
    assert_eq!(rig.host.recv(&mut buf).unwrap(), VNET_HDR_SIZE + 50);
    let used = rig.rxq.used();
    assert_eq!(used, [(0, VNET_HDR_SIZE as u32 + 19)], "the waiting frame is delivered");
    assert!(!rig.dev.hold_tick(), "the timer stops");
}

#[test]
fn a_reset_ends_the_hold() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, COMMON_FEATURES);
    progress(&mut rig.dev);
    assert!(rig.dev.hold.on);
    rig.dev.reset();
    assert!(!rig.dev.hold.on);
    let mut rig = Rig::new(&mem, COMMON_FEATURES);
    progress(&mut rig.dev);
    rig.dev.reset();
    rig.dev.set_acked_features(COMMON_FEATURES);
    rig.dev.activate(mem.clone(), interrupt(), vec![rig.rxq.queue(), rig.txq.queue()]).unwrap();
    rig.rxq.add(&[(0x20_0000, 2048, true)]);
    rig.host.send(&frame(b"after the reset")).unwrap();
    rig.dev.process_rx();
    assert_eq!(rig.rxq.used().len(), 1, "a re-activated device works without waiting for a hold");
}

#[test]
fn held_chains_around_a_malformed_one_refuse_the_snapshot() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, MRG);
    post(&mut rig, 0x20_0000, 2, 2048);
    rig.rxq.add(&[(0x30_0000, 4, true)]); // shorter than the header: completed at once
    post(&mut rig, 0x40_0000, 2, 2048);
    rig.dev.process_rx();
    assert_eq!(rig.rxq.used().len(), 1);
    assert_eq!(rig.dev.held.len(), 4);
    let e = rig.dev.save_progress().unwrap_err();
    assert!(e.contains("tap-test") && e.contains("the 4 receive chains it holds are not the last ones taken"), "{e}");
    assert!(!rig.dev.hold.on, "a refused snapshot holds nothing");
    // Once traffic used the chains before the malformed one, the snapshot works.
    for i in 0..2u8 {
        rig.host.send(&frame(&[i; 2000])).unwrap();
    }
    rig.dev.backend_readable = true;
    rig.dev.process_rx();
    assert_eq!(rig.rxq.used().len(), 3);
    assert_eq!(progress(&mut rig.dev)[RXQ], QueueProgress { next_avail: 3, next_used: 3 });
}

#[test]
fn a_broken_device_refuses_the_snapshot() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, COMMON_FEATURES);
    rig.txq.vq.avail().idx().store(1000);
    rig.dev.process_tx();
    let e = rig.dev.save_progress().unwrap_err();
    assert!(e.contains("tap-test") && e.contains("corrupted a queue"), "{e}");
}

#[test]
fn an_inactive_device_saves_no_progress_and_holds_nothing() {
    let (a, _b) = UnixDatagram::pair().unwrap();
    let mut dev = Net::with_backend(cfg(), Box::new(Dgram(a, Arc::new(Mutex::new(None))))).unwrap();
    assert_eq!(progress(&mut dev), []);
    assert!(!dev.hold.on);
}

#[test]
fn a_frame_waiting_for_buffers_is_not_in_the_snapshot_and_its_buffers_are_given_back() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, MRG);
    let mut bufs = post(&mut rig, 0x20_0000, 2, 4096);
    rig.host.send(&frame(&[9; 10_000])).unwrap();
    rig.dev.process_rx();
    assert!(rig.dev.pending.is_some() && rig.dev.held.len() == 2, "8 KiB of buffers cannot hold the frame");
    let saved = progress(&mut rig.dev);
    assert_eq!(saved[RXQ], QueueProgress { next_avail: 0, next_used: 0 });
    // The restored device never gets the frame (it is lost, as on a network) and uses the
    // guest's buffers for the next one.
    bufs.extend(post(&mut rig, 0x40_0000, 2, 4096));
    let (mut dev, host) = restored(&rig, &mem, MRG, &saved);
    host.send(&frame(b"next")).unwrap();
    dev.process_rx();
    let used = rig.rxq.used();
    assert_eq!(used, [(u32::from(bufs[0].0), VNET_HDR_SIZE as u32 + 4)]);
    assert_eq!(&get(&mem, bufs[0].1 + VNET_HDR_SIZE as u64, 4), b"next");
}

#[test]
fn the_new_backend_of_a_restored_device_gets_the_offloads_the_guest_accepted() {
    let mem = guest_mem();
    let acked = MRG | feature(VIRTIO_NET_F_GUEST_CSUM) | feature(VIRTIO_NET_F_GUEST_TSO4) | feature(VIRTIO_NET_F_GUEST_TSO6);
    let mut rig = Rig::new(&mem, acked);
    let saved = progress(&mut rig.dev);
    let offload = Arc::new(Mutex::new(None));
    let (mut dev, _host) = restored_with(&rig, &mem, acked, &saved, offload.clone());
    dev.apply_offload(); // what the event loop does first for an activated device
    assert_eq!(*offload.lock().unwrap(), Some(tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6));
    assert!(!dev.hold.on, "a restored device is not held");
}
