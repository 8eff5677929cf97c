//! Entry points for the fuzz targets in `microvm/fuzz/` (and for the bounded pseudo-random
//! tests below, which run the same code on every `cargo test`).
//!
//! Each entry point lays the input out as guest memory: a 16-entry queue with the descriptor
//! table at 0, the available ring at 0x100, the used ring at 0x200, buffers anywhere after
//! (so a few hundred input bytes already reach every ring field). The guest thus
//! controls every descriptor, index and length; the device must neither panic nor touch
//! anything outside guest memory.

use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::active::Active;
use super::block::metrics::BlockMetrics;
use super::block::worker::{process_queue, Disk};
use super::fs::failover;
use super::fs::metrics::FsMetrics;
use super::mmio::MmioTransport;
use super::net::device::FrameIo;
use super::net::{Net, NetConfig};
use super::vsock::{Vsock, VsockConfig};
use super::{feature, Interrupt, VirtioDevice};
use crate::devices::BusDevice;
use crate::memory::GuestMemoryMmap;

const MEM_SIZE: usize = 1 << 20;
const DESC: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
const QSIZE: u16 = 16;

fn memory(data: &[u8]) -> Option<GuestMemoryMmap> {
    filled(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?, data)
}

/// `mem` with the start of `data` written at address 0.
fn filled(mem: GuestMemoryMmap, data: &[u8]) -> Option<GuestMemoryMmap> {
    let n = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..n], GuestAddress(0)).ok()?;
    Some(mem)
}

fn queue() -> Queue {
    let mut q = match Queue::new(QSIZE) {
        Ok(q) => q,
        Err(_) => return Queue::default(),
    };
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    q
}

fn interrupt() -> Option<Arc<Interrupt>> {
    Interrupt::new().ok().map(Arc::new)
}

/// Block requests from hostile guest memory against a 64 KiB scratch image.
pub fn block_requests(data: &[u8]) {
    let (Some(mem), Some(irq)) = (memory(data), interrupt()) else { return };
    let Ok(mut file) = tempfile("blk") else { return };
    let _ = file.write_all(&[0u8; 65536]);
    let disk = Disk { file, sectors: 128, read_only: data.first().is_some_and(|b| b & 1 == 1), id: *b"fuzz-disk\0\0\0\0\0\0\0\0\0\0\0" };
    let mut active = Active::new(mem, irq, vec![queue()]);
    // The second input byte picks an empty slot: every request but GET_ID fails there.
    let backing = (data.get(1).is_none_or(|b| b & 1 == 0)).then_some(&disk);
    process_queue(&mut active, backing, &BlockMetrics::default());
}

/// Vsock packets from hostile guest memory (transmit, then receive processing). Returns the
/// host data bytes delivered into receive buffers.
pub fn vsock_packets(data: &[u8]) -> u64 {
    let (Some(mem), Some(irq)) = (memory(data), interrupt()) else { return 0 };
    let dir = std::env::temp_dir().join(format!("husk-fuzz-vsock-{}-{}", std::process::id(), next()));
    if std::fs::create_dir_all(&dir).is_err() {
        return 0;
    }
    let cfg = VsockConfig { guest_cid: 3, uds_path: dir.join("v.sock") };
    // A host listener on the port the first transmitted packet asks for (its header's
    // dst_port), so a well-formed request gets a connection and the receive path moves host
    // data into the guest's (hostile) buffers.
    let first_desc: Option<u64> = mem.read_obj(GuestAddress(DESC)).ok();
    let port: Option<u32> = first_desc.and_then(|a| mem.read_obj(GuestAddress(a.wrapping_add(20))).ok());
    let listener = port.and_then(|p| UnixListener::bind(dir.join(format!("v.sock_{p}"))).ok());
    let mut delivered = 0;
    if let Ok(mut dev) = Vsock::new(cfg) {
        let queues = vec![queue(), queue(), queue()];
        if dev.activate(mem, irq, queues).is_ok() {
            dev.process_tx();
            dev.process_rx();
            if let Some(l) = &listener {
                if l.set_nonblocking(true).is_ok() {
                    while let Ok((mut host, _)) = l.accept() {
                        let _ = host.set_nonblocking(true);
                        let _ = host.write(&data[data.len().saturating_sub(9000)..]);
                        dev.host_sockets_readable();
                        dev.process_tx();
                        dev.host_sockets_readable();
                    }
                }
            }
        }
        delivered = dev.counters().rx_bytes.get();
    }
    let _ = std::fs::remove_dir_all(&dir);
    delivered
}

struct Pair(UnixDatagram);

impl std::os::fd::AsRawFd for Pair {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for Pair {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn set_offload(&mut self, _flags: u32) -> std::io::Result<()> {
        Ok(())
    }
}

/// Network frames from hostile guest memory; one incoming frame from the input's tail.
pub fn net_frames(data: &[u8]) {
    let (Some(mem), Some(irq)) = (memory(data), interrupt()) else { return };
    let Ok((a, b)) = UnixDatagram::pair() else { return };
    if a.set_nonblocking(true).is_err() || b.set_nonblocking(true).is_err() {
        return;
    }
    let cfg = NetConfig { tap: "fuzz".into(), mac: None, netns: None, fd: None };
    let Ok(mut dev) = Net::with_backend(cfg, Box::new(Pair(a))) else { return };
    // The last input byte picks the receive mode: mergeable buffers or one chain per frame.
    if data.last().is_some_and(|b| b & 1 == 1) {
        dev.set_acked_features(feature(super::net::VIRTIO_NET_F_MRG_RXBUF));
    }
    let tail = &data[data.len().saturating_sub(1500)..];
    let _ = b.send(tail);
    if dev.activate(mem, irq, vec![queue(), queue()]).is_ok() {
        dev.process_tx();
        dev.process_rx();
    }
}

/// Requests from hostile guest memory on both queues of a virtio-fs device whose backend is
/// gone: the only virtio-fs path where husk-vmm itself reads the queues. The used index the
/// device resumes from lives in guest memory too. Returns the requests answered.
pub fn fs_failover(data: &[u8]) -> u64 {
    let (Some(mem), Some(irq)) = (memory(data), interrupt()) else { return 0 };
    let mut active = Active::new(mem, irq, vec![queue(), queue()]);
    failover::take_over(&mut active);
    let metrics = FsMetrics::default();
    for q in 0..2 {
        failover::answer_with_errors(&mut active, q, &metrics);
    }
    metrics.failed_requests.get()
}

/// Like [`memory`], backed by a memfd (vm-memory maps and unmaps it: `create_guest_memory`'s
/// mappings live as long as the process, which a fuzzer running this thousands of times
/// cannot afford).
fn memfd_memory(data: &[u8]) -> Option<GuestMemoryMmap> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let file = std::fs::File::from(memfd_create("husk-fuzz-ram", MFdFlags::MFD_CLOEXEC).ok()?);
    file.set_len(MEM_SIZE as u64).ok()?;
    filled(GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), MEM_SIZE, Some(vm_memory::FileOffset::new(file, 0)))]).ok()?, data)
}

/// Free page reports, and inflate and deflate chains, from hostile guest memory. The memory
/// is a memfd as in husk-vmm, so accepted ranges really are punched out of it. Returns the
/// bytes given back.
pub fn balloon_reports(data: &[u8]) -> u64 {
    let (Some(mem), Some(irq)) = (memfd_memory(data), interrupt()) else { return 0 };
    let Ok(mut dev) = super::balloon::Balloon::new() else { return 0 };
    // All three queues on the same rings: each chain is seen as a report first.
    if dev.activate(mem, irq, vec![queue(), queue(), queue()]).is_err() {
        return 0;
    }
    dev.process_reports();
    dev.process_ignored(super::balloon::INFLATEQ);
    dev.process_ignored(super::balloon::DEFLATEQ);
    dev.counters().reported_bytes.get()
}

/// A sequence of MMIO register accesses (6 bytes each: offset u16, value u32) against a
/// transport with a block device, including activation attempts.
pub fn mmio_registers(data: &[u8]) {
    let Some(mem) = memory(&[]) else { return };
    let Ok(mut file) = tempfile("mmio") else { return };
    let _ = file.write_all(&[0u8; 4096]);
    let path = std::env::temp_dir().join(format!("husk-fuzz-mmio-{}-{}.img", std::process::id(), next()));
    if std::fs::write(&path, [0u8; 4096]).is_err() {
        return;
    }
    let cfg = super::block::BlockConfig { path: path.clone(), read_only: false, id: "fuzz".into(), fd: None };
    let dev = super::block::Block::new(cfg);
    let _ = std::fs::remove_file(&path);
    let Ok(dev) = dev else { return };
    let dev: Arc<std::sync::Mutex<dyn VirtioDevice>> = Arc::new(std::sync::Mutex::new(dev));
    let Ok(t) = MmioTransport::new(mem, dev) else { return };
    for op in data.chunks_exact(6) {
        let off = u64::from(u16::from_le_bytes([op[0], op[1]])) & 0xfff;
        let val = [op[2], op[3], op[4], op[5]];
        if op[0] & 1 == 1 {
            let mut buf = [0u8; 4];
            t.read(off & !1, &mut buf[..(op[1] as usize % 4) + 1]);
        } else {
            t.write(off, &val);
        }
    }
}

fn next() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// An anonymous temporary file (unlinked right away).
fn tempfile(tag: &str) -> std::io::Result<std::fs::File> {
    let p = std::env::temp_dir().join(format!("husk-fuzz-{tag}-{}-{}", std::process::id(), next()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&p)?;
    std::fs::remove_file(&p)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    //! The fuzz entry points on deterministic pseudo-random inputs that are biased toward
    //! plausible rings (so chains are actually parsed), bounded so `cargo test` stays fast.

    use super::*;

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// Guest memory image: descriptors with small addresses/lengths (mostly valid), a few
    /// available entries, random buffer contents.
    fn input(rng: &mut Rng) -> Vec<u8> {
        let mut v = vec![0u8; 0x2000];
        for i in 0..QSIZE as usize {
            let r = rng.next();
            let addr = if r & 7 == 0 { r } else { 0x400 + (r >> 8) % 0x1800 };
            let len = if r & 0x30 == 0 { (r >> 32) as u32 } else { ((r >> 40) % 0x400) as u32 };
            let flags = (rng.next() % 8) as u16;
            let next = (rng.next() % (QSIZE as u64 + 2)) as u16;
            let d = &mut v[i * 16..i * 16 + 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
        }
        let avail = (rng.next() % 20) as u16;
        let a = AVAIL as usize;
        v[a + 2..a + 4].copy_from_slice(&avail.to_le_bytes());
        for i in 0..QSIZE as usize {
            let head = (rng.next() % (QSIZE as u64 + 4)) as u16;
            v[a + 4 + 2 * i..a + 6 + 2 * i].copy_from_slice(&head.to_le_bytes());
        }
        for b in v[0x400..].iter_mut() {
            *b = rng.next() as u8;
        }
        v
    }

    #[test]
    fn vsock_entry_reaches_the_receive_data_path() {
        use crate::devices::virtio::vsock::packet::{Header, OP_REQUEST, TYPE_STREAM};
        // Descriptor 0: a connection request to host port 1024; 1-3: writable 4 KiB
        // buffers. The transmit queue takes all four (1-3 are dropped as malformed), the
        // receive queue the same ones: 0 back empty, 1 the response, 2-3 host data.
        let mut v = vec![0u8; 0x8000];
        let hdr = Header { src_cid: 3, dst_cid: 2, src_port: 1234, dst_port: 1024, type_: TYPE_STREAM, op: OP_REQUEST, buf_alloc: 65536, ..Header::default() };
        v[0x400..0x400 + 44].copy_from_slice(&hdr.to_bytes());
        for (i, (addr, len, flags)) in [(0x400u64, 44u32, 0u16), (0x1000, 4096, 2), (0x2000, 4096, 2), (0x3000, 4096, 2)].into_iter().enumerate() {
            let d = &mut v[i * 16..i * 16 + 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
        }
        let a = AVAIL as usize;
        v[a + 2..a + 4].copy_from_slice(&4u16.to_le_bytes());
        for i in 0..4u16 {
            v[a + 4 + 2 * i as usize..a + 6 + 2 * i as usize].copy_from_slice(&i.to_le_bytes());
        }
        // The host writes the input's last 9000 bytes: two buffers' worth gets through.
        assert_eq!(vsock_packets(&v), 2 * (4096 - 44));
    }

    #[test]
    fn balloon_entry_reaches_the_hole_punch() {
        // Descriptor 0: a device-writable report of the 8 KiB at 0x2000.
        let mut v = vec![0xa5u8; 0x4000];
        v[..16].copy_from_slice(&[0; 16]);
        v[..8].copy_from_slice(&0x2000u64.to_le_bytes());
        v[8..12].copy_from_slice(&0x2000u32.to_le_bytes());
        v[12..14].copy_from_slice(&2u16.to_le_bytes());
        let a = AVAIL as usize;
        v[a..a + 4].copy_from_slice(&[0, 0, 1, 0]);
        v[a + 4..a + 6].copy_from_slice(&0u16.to_le_bytes());
        v[USED as usize..USED as usize + 4].copy_from_slice(&[0; 4]);
        assert_eq!(balloon_reports(&v), 0x2000);
    }

    #[test]
    fn fuzz_entry_points_survive_pseudo_random_guests() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..60 {
            let data = input(&mut rng);
            block_requests(&data);
            vsock_packets(&data);
            net_frames(&data);
            fs_failover(&data);
            balloon_reports(&data);
            let regs: Vec<u8> = (0..600).map(|_| rng.next() as u8).collect();
            mmio_registers(&regs);
        }
    }
}
