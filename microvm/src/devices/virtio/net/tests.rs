//! Net device tests: mock queues, a datagram socket pair standing in for the tap.

#![allow(clippy::unwrap_used)]

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use super::device::FrameIo;
use super::*;
use crate::devices::virtio::test_utils::{get, guest_mem, interrupt, put, TestQueue};
use crate::devices::virtio::{feature, VirtioDevice, COMMON_FEATURES};
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
    NetConfig { tap: "tap-test".into(), mac: Some([2, 0, 0, 0, 0, 7]), netns: None }
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
    let mut rig = Rig::new(
        &mem,
        COMMON_FEATURES | feature(VIRTIO_NET_F_GUEST_CSUM) | feature(VIRTIO_NET_F_GUEST_TSO4),
    );
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

#[test]
fn real_tap_is_created_and_vanishes_when_closed() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return;
    }
    let name = format!("husk{}", std::process::id() % 100_000);
    let dev = match Net::new(NetConfig { tap: name.clone(), mac: None, netns: None }) {
        Ok(d) => d,
        // Without CAP_NET_ADMIN the error must name the tap.
        Err(e) => {
            assert!(e.to_string().contains(&name), "{e}");
            return;
        }
    };
    let sys = std::path::PathBuf::from(format!("/sys/class/net/{name}"));
    assert!(sys.exists());
    drop(dev);
    assert!(!sys.exists(), "tap left behind");
}
