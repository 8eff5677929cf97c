//! Vsock device tests: mock queues in guest memory, real unix sockets on the host side.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use event_manager::EventSet;

use super::packet::*;
use super::*;
use crate::devices::virtio::test_utils::{assert_config_writes_ignored, get, guest_mem, interrupt, notify_before_activation, put, TestQueue, F_NEXT};
use crate::devices::virtio::VirtioDevice;
use crate::memory::GuestMemoryMmap;

const GUEST_CID: u64 = 3;
const RX_BUF: u64 = 0x10_0000;
const TX_BUF: u64 = 0x80_0000;

fn tmp_uds() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("husk-vsock-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("v.sock")
}

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    dev: Vsock,
    rxq: TestQueue<'a>,
    txq: TestQueue<'a>,
    rx_slot: u64,
    tx_slot: u64,
    uds: PathBuf,
    /// The receive buffer the guest advertises in its packets.
    guest_buf_alloc: u32,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let uds = tmp_uds();
        let mut dev = Vsock::new(VsockConfig { guest_cid: GUEST_CID, uds_path: uds.clone() }).unwrap();
        let rxq = TestQueue::new(mem, 0x1000, 256);
        let txq = TestQueue::new(mem, 0x8000, 256);
        let evq = TestQueue::new(mem, 0xf000, 256);
        dev.activate(mem.clone(), interrupt(), vec![rxq.queue(), txq.queue(), evq.queue()]).unwrap();
        Self { mem, dev, rxq, txq, rx_slot: 0, tx_slot: 0, uds, guest_buf_alloc: 64 * 1024 }
    }

    /// Offers one receive buffer of `len` bytes (header + data in one descriptor).
    fn give_rx(&mut self, len: u32) -> u64 {
        let addr = RX_BUF + self.rx_slot * 0x1_0000;
        self.rx_slot += 1;
        self.rxq.add(&[(addr, len, true)]);
        addr
    }

    /// Transmits a packet from the guest.
    fn send(&mut self, op: u16, src_port: u32, dst_port: u32, data: &[u8], flags: u32) {
        let hdr = Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: data.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: self.guest_buf_alloc,
            fwd_cnt: 0,
        };
        let addr = TX_BUF + self.tx_slot * 0x1_0000;
        self.tx_slot += 1;
        put(self.mem, addr, &hdr.to_bytes());
        put(self.mem, addr + 0x100, data);
        if data.is_empty() {
            self.txq.add(&[(addr, HDR_SIZE as u32, false)]);
        } else {
            self.txq.add(&[(addr, HDR_SIZE as u32, false), (addr + 0x100, data.len() as u32, false)]);
        }
        self.dev.process_tx();
    }

    /// The packets delivered to the guest so far: (header, payload).
    fn received(&self) -> Vec<(Header, Vec<u8>)> {
        self.rxq
            .used()
            .iter()
            .filter(|(_, len)| *len >= HDR_SIZE as u32)
            .map(|&(head, len)| {
                let addr = RX_BUF + u64::from(head) * 0x1_0000;
                let raw: [u8; HDR_SIZE] = get(self.mem, addr, HDR_SIZE).try_into().unwrap();
                let h = Header::from_bytes(&raw);
                let data = get(self.mem, addr + HDR_SIZE as u64, len as usize - HDR_SIZE);
                (h, data)
            })
            .collect()
    }

    /// The guest connects from `guest_port` to a host listener on `host_port` (after offering
    /// `rx_buffers` receive buffers); returns the host's end.
    fn guest_connect(&mut self, guest_port: u32, host_port: u32, rx_buffers: usize) -> UnixStream {
        let listener = UnixListener::bind(format!("{}_{host_port}", self.uds.display())).unwrap();
        for _ in 0..rx_buffers {
            self.give_rx(4096);
        }
        self.send(OP_REQUEST, guest_port, host_port, &[], 0);
        listener.accept().unwrap().0
    }

    /// Gives the device's host sockets a small send buffer (32 KiB asked): a slow host whose
    /// socket fills after a few packets.
    fn small_host_buffers(&mut self) {
        for c in self.dev.muxer.conns.values() {
            super::unix::set_send_buffer(&c.stream, 32 * 1024);
        }
    }

    fn poke_all(&mut self) {
        self.dev.host_sockets_readable();
    }
}

impl Drop for Rig<'_> {
    fn drop(&mut self) {
        if let Some(dir) = self.uds.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Vsock {
    fn muxer_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.muxer.fds()
    }
}

#[test]
fn guest_connects_to_host_listener_and_exchanges_data() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    let mut host = rig.guest_connect(1234, 5000, 4);
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, OP_RESPONSE);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (5000, 1234));
    assert_eq!(got[0].0.dst_cid, GUEST_CID);

    rig.send(OP_RW, 1234, 5000, b"hello host", 0);
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");
    assert_eq!(rig.dev.metrics.tx_bytes.get(), 10);

    host.write_all(b"hello guest").unwrap();
    rig.poke_all();
    let got = rig.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].0.op, OP_RW);
    assert_eq!(got[1].1, b"hello guest");

    // Host half-closes: the guest learns the host sends no more, and can still send.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    rig.poke_all();
    let got = rig.received();
    assert_eq!(got[2].0.op, OP_SHUTDOWN);
    assert_eq!(got[2].0.flags, SHUTDOWN_SEND);
    rig.send(OP_RW, 1234, 5000, b"reply", 0);
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"reply");
    // Guest closes both directions: the connection ends with a RST to the guest.
    rig.send(OP_SHUTDOWN, 1234, 5000, &[], SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!(rig.dev.muxer.connection_count(), 0);
    assert_eq!(rig.received().last().unwrap().0.op, OP_RST);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "host sees EOF");
}

#[test]
fn guest_connect_to_port_without_listener_gets_rst() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    rig.give_rx(4096);
    rig.send(OP_REQUEST, 1234, 6000, &[], 0);
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, OP_RST);
    assert_eq!(rig.dev.metrics.conns_refused.get(), 1);
    assert_eq!(rig.dev.muxer.connection_count(), 0);
}

#[test]
fn host_connect_handshake_ok_line_then_data() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    rig.give_rx(4096);
    rig.give_rx(4096);
    let mut host = UnixStream::connect(&rig.uds).unwrap();
    host.write_all(b"CONNECT 1024\nearly").unwrap();
    rig.dev.muxer.accept();
    rig.poke_all();
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, OP_REQUEST);
    assert_eq!(got[0].0.dst_port, 1024);
    let host_port = got[0].0.src_port;
    assert!(host_port >= HOST_PORT_BASE);
    rig.send(OP_RESPONSE, 1024, host_port, &[], 0);
    let mut line = [0u8; 14];
    host.read_exact(&mut line).unwrap();
    assert_eq!(std::str::from_utf8(&line).unwrap(), format!("OK {host_port}\n"));
    // Bytes sent right after the CONNECT line are the first payload, not lost.
    rig.poke_all();
    let got = rig.received();
    assert_eq!(got[1].0.op, OP_RW);
    assert_eq!(got[1].1, b"early");
}

#[test]
fn host_connect_refused_by_guest_closes_the_socket() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    rig.give_rx(4096);
    let mut host = UnixStream::connect(&rig.uds).unwrap();
    host.write_all(b"CONNECT 77\n").unwrap();
    rig.dev.muxer.accept();
    rig.poke_all();
    let req = rig.received()[0].0;
    rig.send(OP_RST, 77, req.src_port, &[], 0);
    rig.dev.muxer.fd_ops.clear();
    let mut buf = Vec::new();
    host.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty(), "no OK line for a refused port");
}

#[test]
fn bad_connect_lines_are_rejected() {
    assert_eq!(unix::parse_connect(b"CONNECT 1024"), Some(1024));
    assert_eq!(unix::parse_connect(b"CONNECT 1024\r"), Some(1024));
    assert_eq!(unix::parse_connect(b"CONNECT"), None);
    assert_eq!(unix::parse_connect(b"CONNECT -1"), None);
    assert_eq!(unix::parse_connect(b"CONNECT 99999999999"), None);
    assert_eq!(unix::parse_connect(b"connect 5"), None);
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    let mut host = UnixStream::connect(&rig.uds).unwrap();
    host.write_all(&[b'A'; 100]).unwrap();
    rig.dev.muxer.accept();
    rig.poke_all();
    // The client sees EOF or a reset (its unread bytes), never an OK line.
    let mut buf = Vec::new();
    let r = host.read_to_end(&mut buf);
    assert!(r.is_err() || buf.is_empty());
    assert_eq!(rig.dev.metrics.conns_refused.get(), 1);
}

#[test]
fn credit_limits_host_to_guest_data() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    // Guest advertises 64 KiB of buffer (see `send`); host writes 100 KiB.
    let mut host = rig.guest_connect(1, 5001, 8);
    host.set_nonblocking(true).unwrap();
    let _ = host.write(&vec![7u8; 100 * 1024]);
    for _ in 0..40 {
        rig.give_rx(4096);
    }
    for _ in 0..40 {
        rig.poke_all();
    }
    let data: usize = rig.received().iter().filter(|p| p.0.op == OP_RW).map(|p| p.1.len()).sum();
    assert_eq!(data, 64 * 1024, "never more than the guest's credit");
}

#[test]
fn guest_overrunning_credit_is_reset() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    let _listener = UnixListener::bind(format!("{}_5002", rig.uds.display())).unwrap();
    for _ in 0..32 {
        rig.give_rx(4096);
    }
    rig.send(OP_REQUEST, 1, 5002, &[], 0);
    rig.small_host_buffers();
    // Nobody reads the host side: after the socket buffer fills, data is buffered up to
    // CONN_BUF_ALLOC; more is a credit violation.
    let chunk = vec![1u8; MAX_PKT_PAYLOAD as usize];
    for _ in 0..64 {
        rig.send(OP_RW, 1, 5002, &chunk, 0);
        if rig.dev.muxer.connection_count() == 0 {
            break;
        }
    }
    assert_eq!(rig.dev.muxer.connection_count(), 0);
    assert!(rig.received().iter().any(|p| p.0.op == OP_RST));
}

#[test]
fn malformed_tx_packets_are_dropped_and_counted() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    // Header shorter than 44 bytes.
    rig.txq.add(&[(TX_BUF, 10, false)]);
    // Header claiming more payload than the chain holds.
    let h = Header { src_cid: GUEST_CID, dst_cid: HOST_CID, len: 5000, type_: TYPE_STREAM, op: OP_RW, ..Header::default() };
    put(&mem, TX_BUF + 0x1000, &h.to_bytes());
    rig.txq.add(&[(TX_BUF + 0x1000, HDR_SIZE as u32, false), (TX_BUF + 0x2000, 100, false)]);
    // Buffer outside guest memory.
    rig.txq.add(&[(0xffff_0000_0000, 64, false)]);
    // Absurd length.
    rig.txq.add(&[(TX_BUF, u32::MAX, false)]);
    // Device-writable descriptor followed by a readable one.
    rig.txq.add(&[(TX_BUF, 64, true), (TX_BUF + 0x100, 64, false)]);
    rig.dev.process_tx();
    assert_eq!(rig.txq.used().len(), 5, "every chain is returned");
    assert_eq!(rig.dev.metrics.errors.get(), 5);
    assert!(rig.dev.is_activated());
}

#[test]
fn descriptor_loop_is_rejected() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    // 0 -> 1 -> 0 ...
    rig.txq.add_raw(0, &[(TX_BUF, 44, F_NEXT, 1), (TX_BUF, 44, F_NEXT, 0)]);
    rig.dev.process_tx();
    assert_eq!(rig.txq.used().len(), 1);
    assert_eq!(rig.dev.metrics.errors.get(), 1);
}

#[test]
fn packet_from_wrong_cid_is_dropped() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    rig.give_rx(4096);
    let h = Header { src_cid: 99, dst_cid: HOST_CID, type_: TYPE_STREAM, op: OP_REQUEST, dst_port: 1, ..Header::default() };
    put(&mem, TX_BUF, &h.to_bytes());
    rig.txq.add(&[(TX_BUF, HDR_SIZE as u32, false)]);
    rig.dev.process_tx();
    assert!(rig.received().is_empty());
    assert_eq!(rig.dev.metrics.errors.get(), 1);
}

#[test]
fn rx_buffer_too_small_is_returned_empty() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    rig.give_rx(8);
    rig.send(OP_REQUEST, 1234, 6001, &[], 0); // refused -> RST queued
    assert_eq!(rig.rxq.used(), vec![(0, 0)]);
    rig.give_rx(4096);
    rig.dev.process_rx();
    assert_eq!(rig.received()[0].0.op, OP_RST);
}

#[test]
fn many_concurrent_streams() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    let listener = UnixListener::bind(format!("{}_7000", rig.uds.display())).unwrap();
    for _ in 0..64 {
        rig.give_rx(4096);
    }
    let mut hosts = Vec::new();
    for i in 0..16 {
        rig.send(OP_REQUEST, 100 + i, 7000, &[], 0);
        hosts.push(listener.accept().unwrap().0);
    }
    for i in 0..16u32 {
        rig.send(OP_RW, 100 + i, 7000, format!("stream {i}").as_bytes(), 0);
    }
    for (i, h) in hosts.iter_mut().enumerate() {
        let want = format!("stream {i}");
        let mut buf = vec![0u8; want.len()];
        h.read_exact(&mut buf).unwrap();
        assert_eq!(buf, want.as_bytes());
    }
    assert_eq!(rig.dev.muxer.connection_count(), 16);
    assert_eq!(rig.dev.metrics()["connections"], 16);
}

#[test]
fn reset_drops_connections_and_drop_removes_socket() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    let _l = UnixListener::bind(format!("{}_7001", rig.uds.display())).unwrap();
    rig.give_rx(4096);
    rig.send(OP_REQUEST, 1, 7001, &[], 0);
    assert_eq!(rig.dev.muxer.connection_count(), 1);
    rig.dev.reset();
    assert!(!rig.dev.is_activated());
    assert_eq!(rig.dev.muxer.connection_count(), 0);
    let uds = rig.uds.clone();
    assert!(uds.exists());
    let dev = std::mem::replace(&mut rig.dev, Vsock::new(VsockConfig { guest_cid: 3, uds_path: tmp_uds() }).unwrap());
    drop(dev);
    assert!(!uds.exists());
    let _ = std::fs::remove_dir_all(rig.dev.cfg.uds_path.parent().unwrap());
}

#[test]
fn config_space_holds_the_guest_cid() {
    let uds = tmp_uds();
    let dev = Vsock::new(VsockConfig { guest_cid: 0x1234_5678, uds_path: uds.clone() }).unwrap();
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x1234_5678);
    let mut b = [0xffu8; 4];
    dev.read_config(8, &mut b);
    assert_eq!(b, [0; 4]);
    assert!(matches!(Vsock::new(VsockConfig { guest_cid: 2, uds_path: uds.clone() }), Err(VsockError::InvalidCid(2))));
    // The path is taken: a second device on it fails with the path in the error.
    let err = Vsock::new(VsockConfig { guest_cid: 4, uds_path: uds.clone() }).unwrap_err();
    assert!(err.to_string().contains(&uds.display().to_string()), "{err}");
    drop(dev);
    let _ = std::fs::remove_dir_all(uds.parent().unwrap());
}

#[test]
fn guest_connect_to_full_backlog_is_refused_without_blocking() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    let path = format!("{}_7002", rig.uds.display());
    // A listener that never accepts, with its backlog filled.
    let listener = UnixListener::bind(&path).unwrap();
    // SAFETY: listen(2) again on our own listening socket only shrinks its backlog.
    assert_eq!(unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 1) }, 0);
    let mut fillers = Vec::new();
    for _ in 0..64 {
        match super::unix::connect_nonblocking(&path) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    for _ in 0..8 {
        rig.give_rx(4096);
    }
    let start = std::time::Instant::now();
    rig.send(OP_REQUEST, 1, 7002, &[], 0);
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(rig.received()[0].0.op, OP_RST);
    assert_eq!(rig.dev.metrics.conns_refused.get(), 1);
}

#[test]
fn host_data_fills_several_receive_buffers_with_one_read() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    let mut host = rig.guest_connect(1234, 5000, 16);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    host.write_all(&data).unwrap();
    rig.poke_all();
    let got = rig.received();
    let rw: Vec<_> = got.iter().filter(|(h, _)| h.op == OP_RW).collect();
    // Full packets (4096-byte buffers less the header), the last one short.
    let sizes: Vec<usize> = rw.iter().map(|(_, d)| d.len()).collect();
    assert_eq!(sizes, vec![4052, 4052, 1896]);
    assert!(rw.iter().all(|(h, d)| h.len as usize == d.len()));
    assert_eq!(rw.iter().flat_map(|(_, d)| d.clone()).collect::<Vec<u8>>(), data);
    assert_eq!(rig.dev.metrics.host_reads.get(), 1, "one read for all three");
    // The buffers not needed stay with the device for later data.
    host.write_all(b"more").unwrap();
    rig.poke_all();
    assert_eq!(rig.received().last().unwrap().1, b"more");
    assert_eq!(rig.rxq.used().len(), 1 + 3 + 1, "response, three packets, one more");
    // A control packet takes the next of those buffers too: every buffer is used once, in
    // the order the guest offered them.
    rig.send(OP_CREDIT_REQUEST, 1234, 5000, &[], 0);
    assert_eq!(rig.received().last().unwrap().0.op, OP_CREDIT_UPDATE);
    let heads: Vec<u32> = rig.rxq.used().iter().map(|u| u.0).collect();
    assert_eq!(heads, (0..6).collect::<Vec<u32>>());
}

#[test]
fn host_data_then_hang_up_reaches_the_guest_with_the_shutdown() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    let mut host = rig.guest_connect(1234, 5000, 16);
    let data = vec![5u8; 10_000];
    host.write_all(&data).unwrap();
    drop(host);
    let fds = rig.dev.muxer_fds();
    for fd in fds {
        rig.dev.muxer.handle_fd(fd, EventSet::IN | EventSet::HANG_UP, &rig.dev.metrics.clone());
    }
    rig.dev.process_rx();
    let got = rig.received();
    let rx: Vec<u8> = got.iter().filter(|(h, _)| h.op == OP_RW).flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(rx, data);
    let last = got.last().unwrap().0;
    assert_eq!((last.op, last.flags), (OP_SHUTDOWN, SHUTDOWN_SEND), "EOF follows the data");
}

#[test]
fn header_only_receive_buffer_comes_back_empty_and_data_goes_on() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    let mut host = rig.guest_connect(1234, 5000, 1);
    rig.give_rx(HDR_SIZE as u32);
    for _ in 0..4 {
        rig.give_rx(4096);
    }
    let data = vec![9u8; 6000];
    host.write_all(&data).unwrap();
    rig.poke_all();
    let used = rig.rxq.used();
    assert_eq!(used[1], (1, 0), "the header-only buffer, unused");
    assert_eq!(rig.dev.metrics.errors.get(), 1);
    let got: Vec<u8> = rig.received().iter().filter(|(h, _)| h.op == OP_RW).flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(got, data);
}

#[test]
fn data_the_guest_sent_before_closing_still_reaches_a_slow_host() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    let mut host = rig.guest_connect(1234, 5000, 16);
    rig.small_host_buffers();
    // More than a unix socket buffers: the rest waits in the connection.
    let chunk: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let mut sent = 0usize;
    while sent + chunk.len() <= CONN_BUF_ALLOC as usize {
        rig.send(OP_RW, 1234, 5000, &chunk, 0);
        sent += chunk.len();
    }
    rig.send(OP_SHUTDOWN, 1234, 5000, &[], SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!(rig.dev.muxer.connection_count(), 1, "kept until the host has everything");
    // The host reads; each time its socket drains, the device flushes more.
    host.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < sent {
        let n = host.read(&mut buf).unwrap();
        assert!(n > 0, "EOF after {got} of {sent} bytes");
        got += n;
        let fds = rig.dev.muxer_fds();
        for fd in fds {
            rig.dev.muxer.handle_fd(fd, EventSet::OUT, &rig.dev.metrics.clone());
        }
        rig.dev.process_rx();
    }
    assert_eq!(got, sent);
    assert_eq!(rig.dev.muxer.connection_count(), 0);
    assert!(rig.received().iter().any(|(h, _)| h.op == OP_RST), "the guest gets its RST");
    assert_eq!(host.read(&mut buf).unwrap(), 0, "then EOF");
}

#[test]
fn credit_update_comes_once_the_guest_has_used_half_its_credit() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    rig.guest_buf_alloc = CONN_BUF_ALLOC;
    let mut host = rig.guest_connect(1234, 5000, 8);
    let chunk = vec![7u8; 16 * 1024];
    let mut buf = vec![0u8; chunk.len()];
    let updates = |rig: &Rig| -> Vec<u32> { rig.received().iter().filter(|(h, _)| h.op == OP_CREDIT_UPDATE).map(|(h, _)| h.fwd_cnt).collect() };
    for i in 1..=12u32 {
        rig.send(OP_RW, 1234, 5000, &chunk, 0);
        host.read_exact(&mut buf).unwrap();
        let sent = i * chunk.len() as u32;
        if CONN_BUF_ALLOC - sent >= CONN_BUF_ALLOC / 2 {
            assert!(updates(&rig).is_empty(), "no update while the guest has half its credit ({sent} sent)");
        }
    }
    // The first packet that left the guest less than half (144 KiB of 256 KiB sent) got an
    // update with everything forwarded so far; the guest then believes it has 208 KiB again,
    // so 48 KiB more need none.
    assert_eq!(updates(&rig), vec![9 * 16 * 1024]);
}

#[test]
fn a_guest_with_a_smaller_buffer_gets_credit_within_it() {
    // Linux guests keep at most their own receive buffer in flight: with 64 KiB, waiting
    // for half of our 256 KiB to be used would stall the stream for good.
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    rig.guest_buf_alloc = 64 * 1024;
    let mut host = rig.guest_connect(1234, 5000, 8);
    let chunk = vec![3u8; 16 * 1024];
    let mut buf = vec![0u8; chunk.len()];
    for _ in 0..3 {
        rig.send(OP_RW, 1234, 5000, &chunk, 0);
        host.read_exact(&mut buf).unwrap();
    }
    let updates: Vec<u32> = rig.received().iter().filter(|(h, _)| h.op == OP_CREDIT_UPDATE).map(|(h, _)| h.fwd_cnt).collect();
    // 48 KiB of 64 KiB in flight leaves the guest less than half: it hears that all of it
    // was forwarded.
    assert_eq!(updates, vec![48 * 1024]);
}

#[test]
fn config_writes_leave_the_guest_cid() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    assert_config_writes_ignored(&mut rig.dev, 8);
    let mut b = [0u8; 8];
    rig.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), GUEST_CID);
}

#[test]
fn notification_before_activation_is_counted_and_ignored() {
    let uds = tmp_uds();
    let dev = Vsock::new(VsockConfig { guest_cid: GUEST_CID, uds_path: uds.clone() }).unwrap();
    let dev = notify_before_activation(dev, TXQ);
    assert_eq!(dev.metrics.early_notifications.get(), 1);
    assert!(!dev.is_activated());
    drop(dev);
    assert!(!uds.exists());
    let _ = std::fs::remove_dir_all(uds.parent().unwrap());
}

#[test]
fn corrupt_avail_index_stops_the_device_and_nothing_else() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    rig.txq.vq.avail().idx().store(1000);
    rig.dev.process_tx();
    assert!(rig.dev.active.as_ref().unwrap().broken);
    assert!(rig.txq.used().is_empty());
    assert_eq!(rig.dev.metrics.tx_packets.get(), 0);
    // Host activity after that is handled without touching the queues.
    let mut c = UnixStream::connect(&rig.uds).unwrap();
    c.write_all(b"CONNECT 52\n").unwrap();
    rig.dev.muxer.accept();
    rig.poke_all();
    rig.give_rx(4096);
    rig.dev.process_rx();
    assert!(rig.rxq.used().is_empty());
}

#[test]
fn a_guest_that_never_receives_cannot_grow_the_control_backlog() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    // Packets on connections that do not exist: each earns a RST, which needs a receive
    // buffer the guest does not offer.
    let h = Header { src_cid: GUEST_CID, dst_cid: HOST_CID, src_port: 7, dst_port: 9, type_: TYPE_STREAM, op: OP_RW, buf_alloc: 4096, ..Header::default() };
    const HDR_AT: u64 = 0xf0_0000;
    put(&mem, HDR_AT, &h.to_bytes());
    let n = MAX_CONTROL_BACKLOG + 72;
    for _ in 0..n {
        rig.txq.add(&[(HDR_AT, HDR_SIZE as u32, false)]);
    }
    rig.dev.process_tx();
    assert_eq!(rig.txq.used().len(), MAX_CONTROL_BACKLOG, "taking stops at the backlog limit");
    assert_eq!(rig.dev.muxer.control.len(), MAX_CONTROL_BACKLOG);
    assert_eq!(rig.dev.metrics.tx_stalls.get(), 1);
    rig.dev.process_tx();
    assert_eq!(rig.txq.used().len(), MAX_CONTROL_BACKLOG, "nothing more without receive buffers");

    // Meanwhile a host client is refused rather than queue a request the guest won't read.
    let mut c = UnixStream::connect(&rig.uds).unwrap();
    c.write_all(b"CONNECT 52\n").unwrap();
    rig.dev.muxer.accept();
    rig.poke_all();
    let mut buf = [0u8; 8];
    assert_eq!(c.read(&mut buf).unwrap(), 0, "refused host client sees EOF");
    assert_eq!(rig.dev.metrics.conns_refused.get(), 1);

    // Receive buffers drain the backlog, and the rest of the transmit queue follows.
    for _ in 0..n {
        rig.give_rx(64);
    }
    rig.dev.process_rx();
    assert_eq!(rig.txq.used().len(), n);
    let got = rig.received();
    assert_eq!(got.len(), n);
    assert!(got.iter().all(|(h, _)| h.op == OP_RST && h.dst_port == 7 && h.src_port == 9));
    assert!(rig.dev.muxer.control.is_empty());
}

#[test]
fn credit_requests_queue_one_update_per_connection() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem);
    let _host = rig.guest_connect(1000, 50, 0);
    for _ in 0..5 {
        rig.send(OP_CREDIT_REQUEST, 1000, 50, &[], 0);
    }
    assert_eq!(rig.dev.muxer.control.len(), 2, "the response and one credit update");
    for _ in 0..3 {
        rig.give_rx(64);
    }
    rig.dev.process_rx();
    let ops = |rig: &Rig| rig.received().iter().map(|p| p.0.op).collect::<Vec<_>>();
    assert_eq!(ops(&rig), [OP_RESPONSE, OP_CREDIT_UPDATE]);
    rig.send(OP_CREDIT_REQUEST, 1000, 50, &[], 0);
    assert_eq!(ops(&rig), [OP_RESPONSE, OP_CREDIT_UPDATE, OP_CREDIT_UPDATE]);
}
