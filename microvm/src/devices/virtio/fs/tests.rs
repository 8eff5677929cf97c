//! virtio-fs device tests: the MMIO transport driven as the guest's driver would, the device
//! on a real event loop, and a real vhost-user backend (rust-vmm's vhost-user-backend, which
//! virtiofsd is built on) that maps guest memory from the memfd and answers FUSE-shaped
//! requests on the queues.

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vhost::vhost_user::{Listener, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use super::device::Phase;
use super::*;
use crate::devices::virtio::interrupt::{INT_CONFIG, INT_VRING};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::test_utils::{assert_config_writes_ignored, get, put, TestQueue};
use crate::devices::virtio::{
    feature, VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::devices::BusDevice;
use crate::memory::{create_guest_memory, GuestMemoryMmap};

const TAG: &str = "hostshare";
/// A request opcode the test backend takes from the queue but never answers.
const STALL: u32 = 0xdead;
/// What the test backend puts after its reply header.
const PAYLOAD: &[u8; 8] = b"husk-ok\0";
const QSIZE: u16 = 16;
const RING_BASES: [u64; NUM_QUEUES] = [0x1_0000, 0x2_0000];
const BUFS: u64 = 0x10_0000;

// ---- the backend -------------------------------------------------------------------------

/// Answers each request with a FUSE reply header (error 0, the request's unique) and
/// [`PAYLOAD`], except [`STALL`] requests, which it takes and keeps.
struct EchoFs {
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    exit: (EventConsumer, EventNotifier),
    /// Set to play dead: the worker stops touching the queues at once.
    dead: Arc<AtomicBool>,
    /// How many STALL requests it took.
    stalled: Arc<AtomicU32>,
    /// Bytes of memory the frontend gave it last.
    mapped: Arc<std::sync::atomic::AtomicU64>,
}

impl VhostUserBackendMut for EchoFs {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }
    fn max_queue_size(&self) -> usize {
        usize::from(QUEUE_SIZE)
    }
    fn features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_RING_F_INDIRECT_DESC)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            // A feature the frontend does not pass on (VIRTIO_F_ACCESS_PLATFORM).
            | (1 << 33)
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }
    fn set_event_idx(&mut self, _enabled: bool) {}
    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        self.mapped.store(vm_memory::GuestMemoryBackend::iter(&*mem.memory()).map(vm_memory::GuestMemoryRegion::len).sum(), Ordering::SeqCst);
        self.mem = Some(mem);
        Ok(())
    }
    fn exit_event(&self, _thread: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }
    fn handle_event(&mut self, device_event: u16, _evset: EventSet, vrings: &[VringRwLock], _thread: usize) -> std::io::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (Some(vring), Some(mem)) = (vrings.get(usize::from(device_event)), self.mem.as_ref()) else {
            return Ok(());
        };
        let mem = mem.memory();
        let mut used = false;
        loop {
            let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let (mut request, mut reply_at) = (None, None);
            for d in chain {
                if d.is_write_only() {
                    reply_at.get_or_insert(d.addr());
                } else if request.is_none() && d.len() >= 16 {
                    let mut h = [0u8; 16];
                    mem.read_slice(&mut h, d.addr()).unwrap();
                    request = Some(h);
                }
            }
            let Some(h) = request else {
                vring.add_used(head, 0).unwrap();
                used = true;
                continue;
            };
            if u32::from_le_bytes(h[4..8].try_into().unwrap()) == STALL {
                self.stalled.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let mut reply = Vec::new();
            reply.extend_from_slice(&((FUSE_OUT_HEADER_LEN + PAYLOAD.len()) as u32).to_le_bytes());
            reply.extend_from_slice(&0i32.to_le_bytes());
            reply.extend_from_slice(&h[8..16]);
            reply.extend_from_slice(PAYLOAD);
            let len = match reply_at {
                Some(at) => {
                    mem.write_slice(&reply, at).unwrap();
                    reply.len() as u32
                }
                None => 0,
            };
            vring.add_used(head, len).unwrap();
            used = true;
        }
        if used {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

/// A running test backend listening on its own socket.
struct TestBackend {
    socket: PathBuf,
    daemon: VhostUserDaemon<Arc<RwLock<EchoFs>>>,
    dead: Arc<AtomicBool>,
    stalled: Arc<AtomicU32>,
    mapped: Arc<std::sync::atomic::AtomicU64>,
    exit: EventNotifier,
}

fn tmp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("husk-fs-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl TestBackend {
    /// Listens, then accepts the frontend's connection on another thread: the caller
    /// connects (`Fs::new`) and gets the backend back from [`Accepting::accepted`].
    fn listen() -> Accepting {
        let socket = tmp_dir().join("vfs.sock");
        let mut listener = Listener::new(&socket, true).unwrap();
        let dead = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicU32::new(0));
        let exit = new_event_consumer_and_notifier(EventFlag::NONBLOCK).unwrap();
        let exit_notifier = exit.1.try_clone().unwrap();
        let mapped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let backend = EchoFs { mem: None, exit, dead: dead.clone(), stalled: stalled.clone(), mapped: mapped.clone() };
        let mut daemon = VhostUserDaemon::new("echo-fs".into(), Arc::new(RwLock::new(backend)), GuestMemoryAtomic::new(GuestMemoryMmap::new())).unwrap();
        let s = socket.clone();
        let thread = std::thread::spawn(move || {
            daemon.start(&mut listener).unwrap();
            TestBackend { socket: s, daemon, dead, stalled, mapped, exit: exit_notifier }
        });
        Accepting { socket, thread }
    }

    /// Plays a backend process that dies: it stops touching the queues at once, its worker
    /// thread ends and its socket is shut down.
    fn die(&mut self) {
        self.dead.store(true, Ordering::SeqCst);
        let _ = self.exit.notify();
        self.daemon.request_shutdown();
    }
}

struct Accepting {
    socket: PathBuf,
    thread: std::thread::JoinHandle<TestBackend>,
}

impl Accepting {
    fn accepted(self) -> TestBackend {
        self.thread.join().unwrap()
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.die();
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// ---- the guest side ----------------------------------------------------------------------

fn w(t: &MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// The device on an event loop, behind its transport, with a driver's queues in memfd
/// guest memory.
struct Rig {
    backend: TestBackend,
    dev: Arc<Mutex<Fs>>,
    t: MmioTransport,
    em: EventManager<Arc<Mutex<Fs>>>,
    mem: GuestMemoryMmap,
    next_buf: u64,
}

impl Rig {
    fn new() -> Self {
        Self::with_mem(create_guest_memory(16 << 20).unwrap())
    }

    /// A device connected to a backend of its own, over `mem` (a restored VM's memory).
    fn with_mem(mem: GuestMemoryMmap) -> Self {
        let accepting = TestBackend::listen();
        let dev = Fs::new(FsConfig { tag: TAG.into(), socket: accepting.socket.clone(), fd: None }).unwrap();
        let backend = accepting.accepted();
        let dev = Arc::new(Mutex::new(dev));
        let t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        Self { backend, dev, t, em, mem, next_buf: BUFS }
    }

    /// Initialises the device as Linux's virtio_mmio + virtio_fs do, up to DRIVER_OK.
    fn driver_init(&self, queues: &[Queue]) {
        let t = &self.t;
        w(t, 0x70, 0);
        w(t, 0x70, STATUS_ACKNOWLEDGE);
        w(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let features = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_INDIRECT_DESC);
        for sel in 0..2u32 {
            w(t, 0x24, sel);
            w(t, 0x20, (features >> (32 * sel)) as u32);
        }
        w(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        for (i, q) in queues.iter().enumerate() {
            w(t, 0x30, i as u32);
            w(t, 0x38, u32::from(q.size()));
            for (lo, addr) in [(0x80, q.desc_table()), (0x90, q.avail_ring()), (0xa0, q.used_ring())] {
                w(t, lo, addr as u32);
                w(t, lo + 4, (addr >> 32) as u32);
            }
            w(t, 0x44, 1);
        }
        w(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }

    /// Initialises the device with the rings of `qs`.
    fn activate(&self, qs: &[TestQueue<'_>]) {
        self.driver_init(&qs.iter().map(|q| q.queue()).collect::<Vec<_>>());
    }

    /// Runs the event loop until `done` holds (at most 10 s).
    fn run_until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            self.em.run_with_timeout(50).unwrap();
        }
    }

    fn phase(&self) -> Phase {
        self.dev.lock().unwrap().phase()
    }

    /// Queues a request (header with `opcode` and `unique`, then a 64-byte reply buffer) on
    /// `tq`, notifies the queue, and returns where the reply goes.
    fn request(&mut self, tq: &mut TestQueue<'_>, q: u32, opcode: u32, unique: u64) -> u64 {
        let (hdr, reply) = (self.next_buf, self.next_buf + 0x100);
        self.next_buf += 0x1000;
        let mut h = [0u8; FUSE_IN_HEADER_LEN];
        h[0..4].copy_from_slice(&(FUSE_IN_HEADER_LEN as u32).to_le_bytes());
        h[4..8].copy_from_slice(&opcode.to_le_bytes());
        h[8..16].copy_from_slice(&unique.to_le_bytes());
        put(&self.mem, hdr, &h);
        put(&self.mem, reply, &[0xee; 64]);
        tq.add(&[(hdr, FUSE_IN_HEADER_LEN as u32, false), (reply, 64, true)]);
        w(&self.t, 0x50, q);
        reply
    }

    /// The reply header at `at`: (len, error, unique).
    fn reply(&self, at: u64) -> (u32, i32, u64) {
        let b = get(&self.mem, at, FUSE_OUT_HEADER_LEN);
        (u32::from_le_bytes(b[0..4].try_into().unwrap()), i32::from_le_bytes(b[4..8].try_into().unwrap()), u64::from_le_bytes(b[8..16].try_into().unwrap()))
    }

    fn counter(&self, name: &str) -> u64 {
        self.dev.lock().unwrap().metrics()[name].as_u64().unwrap()
    }
}

/// With the backend gone: activating the device again fails at once, with
/// DEVICE_NEEDS_RESET, and a request gets EIO (with its unique) instead of hanging.
fn assert_activation_fails_with_eio(rig: &mut Rig, unique: u64) {
    let mem = rig.mem.clone();
    let mut qs = queues(&mem);
    rig.activate(&qs);
    rig.run_until("the activation fails", |r| r.phase() == Phase::Failed);
    assert_eq!(rig.t.status() & STATUS_DEVICE_NEEDS_RESET, STATUS_DEVICE_NEEDS_RESET);
    let reply = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, unique);
    rig.run_until("the request fails", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    assert_eq!(rig.reply(reply), (16, -5, unique));
}

/// The driver's queues (fresh rings) in `mem`.
fn queues(mem: &GuestMemoryMmap) -> Vec<TestQueue<'_>> {
    RING_BASES.iter().map(|&b| TestQueue::new(mem, b, QSIZE)).collect()
}

// ---- the tests ---------------------------------------------------------------------------

#[test]
fn config_space_holds_the_tag_and_one_request_queue() {
    let rig = Rig::new();
    let mut dev = rig.dev.lock().unwrap();
    assert_eq!(dev.device_type(), 26);
    let mut cfg = [0xffu8; CONFIG_SPACE_SIZE];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..TAG.len()], TAG.as_bytes());
    assert!(cfg[TAG.len()..TAG_LEN].iter().all(|&b| b == 0), "tag padded with NULs");
    assert_eq!(u32::from_le_bytes(cfg[TAG_LEN..].try_into().unwrap()), 1);
    assert_config_writes_ignored(&mut *dev, CONFIG_SPACE_SIZE as u64);
    // The backend's features, less what this frontend does not handle.
    let f = dev.avail_features();
    assert_eq!(f, feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_INDIRECT_DESC) | feature(VIRTIO_RING_F_EVENT_IDX));
}

#[test]
fn the_backend_serves_the_queues_and_its_calls_become_interrupts() {
    let mut rig = Rig::new();
    let mem = rig.mem.clone();
    let mut qs = queues(&mem);
    rig.activate(&qs);
    assert_eq!(rig.phase(), Phase::Starting, "the handshake waits for the event loop");
    rig.run_until("the backend runs", |r| r.phase() == Phase::Running);
    assert_eq!(rig.t.status() & STATUS_DRIVER_OK, STATUS_DRIVER_OK);

    let reply = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 0x1234_5678);
    rig.run_until("the reply arrives", |r| r.t.interrupt().status() & INT_VRING != 0);
    assert_eq!(qs[REQUEST_QUEUE].used(), vec![(0, (FUSE_OUT_HEADER_LEN + PAYLOAD.len()) as u32)]);
    assert_eq!(rig.reply(reply), (24, 0, 0x1234_5678), "the backend read the request and wrote the reply in guest memory");
    assert_eq!(get(&rig.mem, reply + 16, 8), PAYLOAD);
    assert_eq!(rig.t.interrupt().event().read().unwrap(), 1, "one interrupt");

    // The high-priority queue is served too (a FORGET-like request without reply buffer).
    let hdr = 0x30_0000;
    put(&rig.mem, hdr, &[0u8; FUSE_IN_HEADER_LEN]);
    qs[HIPRIO_QUEUE].add(&[(hdr, FUSE_IN_HEADER_LEN as u32, false)]);
    w(&rig.t, 0x50, HIPRIO_QUEUE as u32);
    rig.run_until("the hiprio request is used and signalled", |r| qs[HIPRIO_QUEUE].used_idx() == 1 && r.counter("interrupts") == 2);
    assert_eq!((rig.counter("activations"), rig.counter("connected"), rig.counter("failed_requests")), (1, 1, 0));
}

#[test]
fn a_backend_that_dies_leaves_eio_and_device_needs_reset_not_a_hang() {
    let mut rig = Rig::new();
    let mem = rig.mem.clone();
    let mut qs = queues(&mem);
    rig.activate(&qs);
    rig.run_until("the backend runs", |r| r.phase() == Phase::Running);
    let answered = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 1);
    rig.run_until("the first reply", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    let in_flight = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, STALL, 2);
    rig.run_until("the backend takes the stalling request", |r| r.backend.stalled.load(Ordering::SeqCst) == 1);
    assert_eq!(qs[REQUEST_QUEUE].used_idx(), 1);

    rig.backend.die();
    rig.run_until("the device notices", |r| r.phase() == Phase::Failed);
    assert_eq!(rig.t.status() & STATUS_DEVICE_NEEDS_RESET, STATUS_DEVICE_NEEDS_RESET);
    assert_eq!(rig.t.interrupt().status() & INT_CONFIG, INT_CONFIG, "a config interrupt announces it");
    // The request the backend died with is answered, with EIO and its own unique.
    assert_eq!(qs[REQUEST_QUEUE].used_idx(), 2);
    assert_eq!(rig.reply(in_flight), (16, -5, 2));
    assert_eq!(rig.reply(answered), (24, 0, 1), "earlier replies are left alone");
    // New requests fail at once; so do FORGETs (no reply buffer) on the hiprio queue.
    let later = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 3);
    rig.run_until("the next request fails", |_| qs[REQUEST_QUEUE].used_idx() == 3);
    assert_eq!(rig.reply(later), (16, -5, 3));
    qs[HIPRIO_QUEUE].add(&[(0x30_0000, FUSE_IN_HEADER_LEN as u32, false)]);
    w(&rig.t, 0x50, HIPRIO_QUEUE as u32);
    rig.run_until("the forget is used", |_| qs[HIPRIO_QUEUE].used_idx() == 1);
    assert_eq!(qs[HIPRIO_QUEUE].used(), vec![(0, 0)]);
    assert_eq!((rig.counter("backend_failures"), rig.counter("connected"), rig.counter("failed_requests")), (1, 0, 3));

    // The driver resets the device: the reset state ends; activating it again fails the
    // same way (the backend is gone for good) instead of hanging.
    w(&rig.t, 0x70, 0);
    assert_eq!(rig.t.status(), 0);
    rig.run_until("the device is idle", |r| r.phase() == Phase::Idle && !r.dev.lock().unwrap().kicks_registered);
    assert_activation_fails_with_eio(&mut rig, 4);
}

#[test]
fn a_reset_stops_the_backend_rings_and_a_new_activation_restarts_them() {
    let mut rig = Rig::new();
    let mem = rig.mem.clone();
    let mut qs = queues(&mem);
    rig.activate(&qs);
    rig.run_until("the backend runs", |r| r.phase() == Phase::Running);
    rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 1);
    rig.run_until("the first reply", |_| qs[REQUEST_QUEUE].used_idx() == 1);

    w(&rig.t, 0x70, 0);
    rig.run_until("the rings are stopped", |r| !r.dev.lock().unwrap().stop_pending);
    // A notification after the reset is not served: the backend stopped the ring.
    qs[REQUEST_QUEUE].add(&[(0x30_0000, FUSE_IN_HEADER_LEN as u32, false), (0x30_1000, 64, true)]);
    w(&rig.t, 0x50, REQUEST_QUEUE as u32);
    for _ in 0..5 {
        rig.em.run_with_timeout(20).unwrap();
    }
    assert_eq!(qs[REQUEST_QUEUE].used_idx(), 1, "a reset device's ring is left alone");

    // The driver sets the device up again, with fresh rings.
    let mut qs = queues(&mem);
    rig.activate(&qs);
    rig.run_until("the backend runs again", |r| r.phase() == Phase::Running);
    let reply = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 7);
    rig.run_until("the reply after the restart", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    assert_eq!(rig.reply(reply), (24, 0, 7));
    assert_eq!(rig.counter("activations"), 2);
    assert_eq!(rig.counter("backend_failures"), 0);
}

#[test]
fn setup_errors_name_the_socket_and_the_step() {
    let dir = tmp_dir();
    let missing = dir.join("nobody.sock");
    let e = Fs::new(FsConfig { tag: TAG.into(), socket: missing.clone(), fd: None }).unwrap_err();
    assert!(matches!(e, FsError::Connect { .. }) && e.to_string().contains("nobody.sock"), "{e}");

    // Something that accepts and hangs up is no vhost-user backend.
    let sock = dir.join("mute.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || drop(listener.accept().unwrap()));
    let e = Fs::new(FsConfig { tag: TAG.into(), socket: sock.clone(), fd: None }).unwrap_err();
    t.join().unwrap();
    assert!(e.to_string().contains("mute.sock") && e.to_string().contains("failed"), "{e}");

    for tag in [String::new(), "t".repeat(TAG_LEN + 1)] {
        let e = Fs::new(FsConfig { tag: tag.clone(), socket: sock.clone(), fd: None }).unwrap_err();
        assert!(matches!(e, FsError::Tag(ref t) if *t == tag), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_inherited_connection_is_negotiated_and_a_bad_descriptor_is_named() {
    use std::os::fd::IntoRawFd;
    // The parent (the shim) connected; the device negotiates over that connection.
    let accepting = TestBackend::listen();
    let fd = std::os::unix::net::UnixStream::connect(&accepting.socket).unwrap().into_raw_fd();
    let dev = Fs::new(FsConfig { tag: TAG.into(), socket: PathBuf::from("/not/reachable/from/a/jail.sock"), fd: Some(fd) }).unwrap();
    let _backend = accepting.accepted();
    assert_ne!(VirtioDevice::avail_features(&dev), 0, "features came over the inherited connection");
    // SAFETY: F_GETFD on a descriptor the device owns now.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "inherited descriptors become close-on-exec");

    // A file, a datagram socket and a closed number are refused, naming the descriptor.
    let dir = tmp_dir();
    let file = std::fs::File::create(dir.join("f")).unwrap().into_raw_fd();
    let (dgram, _peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let dgram = dgram.into_raw_fd();
    for (bad, why) in [(file, "non-socket"), (dgram, "not a stream socket"), (9999, "Bad file descriptor")] {
        let e = Fs::new(FsConfig { tag: TAG.into(), socket: "/vfs.sock".into(), fd: Some(bad) }).unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default());
        assert!(matches!(e, FsError::Inherit { .. }) && chain.contains(&format!("descriptor {bad}")) && chain.contains(why), "{chain}");
    }
    // SAFETY: closing descriptors this test opened and still owns (refused ones were not taken).
    unsafe {
        libc::close(file);
        libc::close(dgram);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_backend_gone_before_activation_fails_the_activation_not_the_vmm() {
    let mut rig = Rig::new();
    rig.backend.die();
    rig.run_until("the hang-up is seen", |r| r.counter("connected") == 0);
    assert_eq!(rig.phase(), Phase::Idle);
    assert_eq!(rig.t.status() & STATUS_DEVICE_NEEDS_RESET, 0, "nothing to reset before the driver came");
    assert_activation_fails_with_eio(&mut rig, 9);
}

#[test]
fn with_a_gsi_the_backend_calls_reach_kvm_directly_until_the_backend_dies() {
    use kvm_ioctls::Kvm;
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = Arc::new(kvm.create_vm().unwrap());
    vm.create_irq_chip().unwrap();
    let mut rig = Rig::new();
    assert!(rig.t.interrupt().set_gsi(vm.clone(), 5));
    let mem = rig.mem.clone();
    let mut qs = queues(&mem);
    rig.activate(&qs);
    rig.run_until("the backend runs", |r| r.phase() == Phase::Running);
    assert_eq!(rig.counter("routed_calls"), 1);
    // KVM holds the call EventFds: registering one again is refused.
    assert!(vm.register_irqfd(&rig.dev.lock().unwrap().call_evts[REQUEST_QUEUE], 5).is_err());

    let reply = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 11);
    rig.run_until("the reply arrives", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    assert_eq!(rig.reply(reply), (24, 0, 11));
    for _ in 0..5 {
        rig.em.run_with_timeout(20).unwrap();
    }
    assert_eq!(rig.counter("interrupts"), 0, "the event loop relayed nothing");
    assert!(rig.t.interrupt().event().read().is_err(), "husk-vmm raised nothing itself");
    assert_eq!(rig.t.interrupt().status(), INT_VRING, "the driver is told to look at its queues");

    // The backend dies: the EventFds come back to the event loop before husk-vmm answers the
    // queues, so its own interrupts (and the config interrupt) say exactly what happened.
    rig.backend.die();
    rig.run_until("the device notices", |r| r.phase() == Phase::Failed);
    assert_eq!(rig.counter("routed_calls"), 0);
    assert_eq!(rig.t.interrupt().status(), INT_CONFIG);
    vm.register_irqfd(&rig.dev.lock().unwrap().call_evts[REQUEST_QUEUE], 5).expect("the EventFd was released");
    let later = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 12);
    rig.run_until("the next request fails", |_| qs[REQUEST_QUEUE].used_idx() == 2);
    assert_eq!(rig.reply(later), (16, -5, 12));
    assert_eq!(rig.t.interrupt().status() & INT_VRING, INT_VRING);
}

// ---- snapshots ---------------------------------------------------------------------------

/// A copy of `mem` in fresh memfd memory, as a restored VM gets it.
fn copy_of(mem: &GuestMemoryMmap) -> GuestMemoryMmap {
    let copy = create_guest_memory(16 << 20).unwrap();
    let mut bytes = vec![0u8; 16 << 20];
    mem.read_slice(&mut bytes, vm_memory::GuestAddress(0)).unwrap();
    copy.write_slice(&bytes, vm_memory::GuestAddress(0)).unwrap();
    copy
}

/// A device the driver activated and never used, saved as a snapshot would (through JSON),
/// with the guest memory it was saved with; its backend is gone afterwards.
fn saved_unused_device() -> (TransportState, GuestMemoryMmap) {
    let mut rig = Rig::new();
    let mem = rig.mem.clone();
    let qs = queues(&mem);
    rig.activate(&qs);
    rig.run_until("the backend runs", |r| r.phase() == Phase::Running);
    let state = rig.t.save().unwrap();
    let state: TransportState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    (state, copy_of(&mem))
}

use crate::devices::virtio::mmio::TransportState;
use crate::devices::virtio::QueueProgress;

#[test]
fn a_device_the_guest_never_used_saves_at_the_start_of_its_queues() {
    // Not activated (no driver yet): saved as registers only.
    let rig = Rig::new();
    let st = rig.t.save().unwrap();
    assert_eq!(st.status, 0);

    // Activated, before the event loop ran the handshake, and once the backend serves it.
    let mut rig = Rig::new();
    let mem = rig.mem.clone();
    let qs = queues(&mem);
    rig.activate(&qs);
    assert_eq!(rig.phase(), Phase::Starting);
    assert_eq!(rig.dev.lock().unwrap().save_progress().unwrap(), vec![QueueProgress { next_avail: 0, next_used: 0 }; NUM_QUEUES]);
    rig.run_until("the backend runs", |r| r.phase() == Phase::Running);
    assert_eq!(rig.dev.lock().unwrap().save_progress().unwrap(), vec![QueueProgress { next_avail: 0, next_used: 0 }; NUM_QUEUES]);
    let st = rig.t.save().unwrap();
    assert_eq!(st.status & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
    assert_eq!(st.queues.len(), NUM_QUEUES);
    for (q, s) in st.queues.iter().zip(RING_BASES) {
        assert_eq!((q.size, q.ready, q.desc_table, q.next_avail, q.next_used), (QSIZE, true, s, 0, 0));
    }
}

#[test]
fn a_device_the_guest_used_is_refused_with_a_message_saying_to_snapshot_before_the_mount() {
    let expect_refusal = |rig: &Rig, queue: usize, avail: u16, used: u16| {
        let e = rig.t.save().unwrap_err();
        assert_eq!(
            e,
            format!("virtio-fs {TAG} has been used by the guest (mounted?): queue {queue} has available index {avail}, used index {used}; snapshot a VM before it mounts virtio-fs")
        );
    };
    // A request the driver offered, not yet taken by anyone (the handshake has not run).
    let mut rig = Rig::new();
    let mem = rig.mem.clone();
    let mut qs = queues(&mem);
    rig.activate(&qs);
    rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 1);
    expect_refusal(&rig, REQUEST_QUEUE, 1, 0);

    // Answered requests (as after a mount's FUSE_INIT), on either queue.
    rig.run_until("the reply", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    expect_refusal(&rig, REQUEST_QUEUE, 1, 1);
    let mut rig = Rig::new();
    let mem = rig.mem.clone();
    let mut qs = queues(&mem);
    rig.activate(&qs);
    rig.run_until("the backend runs", |r| r.phase() == Phase::Running);
    qs[HIPRIO_QUEUE].add(&[(0x30_0000, FUSE_IN_HEADER_LEN as u32, false)]);
    w(&rig.t, 0x50, HIPRIO_QUEUE as u32);
    rig.run_until("the forget is used", |_| qs[HIPRIO_QUEUE].used_idx() == 1);
    expect_refusal(&rig, HIPRIO_QUEUE, 1, 1);

    // A device whose backend died is refused too, naming the backend.
    rig.backend.die();
    rig.run_until("the device notices", |r| r.phase() == Phase::Failed);
    let e = rig.dev.lock().unwrap().save_progress().unwrap_err();
    assert!(e.contains("vfs.sock is gone") && e.starts_with(&format!("virtio-fs {TAG}:")), "{e}");
}

#[test]
fn a_restored_device_hands_a_second_backend_its_new_memory_and_queues_and_routes_its_calls() {
    use kvm_ioctls::Kvm;
    let (state, mem) = saved_unused_device();
    // The restored VM: its own memory, a device connected to another backend, wired to a GSI.
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = Arc::new(kvm.create_vm().unwrap());
    vm.create_irq_chip().unwrap();
    let mut rig = Rig::with_mem(mem);
    assert!(rig.t.interrupt().set_gsi(vm.clone(), 5));
    rig.t.restore(&state).unwrap();
    assert_eq!(rig.phase(), Phase::Starting, "the handshake waits for the event loop, as at boot");
    rig.run_until("the second backend runs", |r| r.phase() == Phase::Running);
    assert_eq!(rig.t.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert_eq!((rig.counter("activations"), rig.counter("routed_calls")), (1, 1), "the call EventFds go to KVM as at boot");

    // The guest's first request after the restore: the second backend reads it from, and
    // answers it in, the restored VM's memory.
    let mem = rig.mem.clone();
    let mut qs = queues(&mem);
    let reply = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 0x77);
    rig.run_until("the reply", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    assert_eq!(rig.reply(reply), (24, 0, 0x77));
    assert_eq!(get(&rig.mem, reply + 16, 8), PAYLOAD);
}

#[test]
fn a_restored_device_hands_the_new_backend_the_saved_queue_progress() {
    let (mut state, mem) = saved_unused_device();
    let mut rig = Rig::with_mem(mem);
    let mem = rig.mem.clone();
    let mut qs = queues(&mem);
    // Two requests the saved device had taken and answered (their replies are long read):
    // the new backend must start after them, at the saved next available entry.
    let old = [rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 100), rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 101)];
    put(&mem, qs[REQUEST_QUEUE].queue().used_ring() + 2, &2u16.to_le_bytes());
    state.queues[REQUEST_QUEUE].next_avail = 2;
    state.queues[REQUEST_QUEUE].next_used = 2;
    rig.t.restore(&state).unwrap();
    rig.run_until("the backend runs", |r| r.phase() == Phase::Running);
    let reply = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 102);
    rig.run_until("the reply", |_| qs[REQUEST_QUEUE].used_idx() == 3);
    assert_eq!(rig.reply(reply), (24, 0, 102));
    assert_eq!(qs[REQUEST_QUEUE].used()[2], (4, 24), "the third chain (descriptors 4-5) is the one answered, in used entry 2");
    for r in old {
        assert_eq!(get(&mem, r, 16), vec![0xee; 16], "requests before the saved progress are not served again");
    }
}

#[test]
fn a_restored_device_whose_backend_is_gone_fails_requests_with_eio_as_at_boot() {
    let (state, mem) = saved_unused_device();
    let mut rig = Rig::with_mem(mem);
    rig.backend.die();
    rig.t.restore(&state).unwrap();
    rig.run_until("the activation fails", |r| r.phase() == Phase::Failed);
    assert_eq!(rig.t.status() & STATUS_DEVICE_NEEDS_RESET, STATUS_DEVICE_NEEDS_RESET);
    let mem = rig.mem.clone();
    let mut qs = queues(&mem);
    let reply = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 5);
    rig.run_until("the request fails", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    assert_eq!(rig.reply(reply), (16, -5, 5));
}

// ---- relaying (RAM mapped copy-on-write) -------------------------------------------------

/// Guest memory mapped copy-on-write from a 16 MiB file filled with `fill`, as a VM restored
/// from a template has it; and the file.
fn private_mem(fill: u8) -> (GuestMemoryMmap, std::fs::File) {
    use std::io::Write;
    let path = tmp_dir().join("memory");
    let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    f.write_all(&vec![fill; 16 << 20]).unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let mem = crate::memory::map_private(&create_guest_memory(16 << 20).unwrap(), Arc::new(f.try_clone().unwrap())).unwrap();
    (mem, f)
}

/// A device over copy-on-write RAM (a restored VM's), which relays; and that RAM.
fn relaying_rig() -> (Rig, GuestMemoryMmap) {
    let (mem, _file) = private_mem(0);
    (Rig::with_mem(mem.clone()), mem)
}

impl Rig {
    /// Activates the device with the rings of `qs` and waits until the backend serves them.
    fn start(&mut self, qs: &[TestQueue<'_>]) {
        self.activate(qs);
        self.run_until("the backend runs", |r| r.phase() == Phase::Running);
    }
}

fn file_bytes(f: &std::fs::File, at: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, at).unwrap();
    b
}

#[test]
fn with_copy_on_write_ram_the_backend_gets_only_the_shadow_memory_and_requests_are_relayed() {
    let (mem, file) = private_mem(0x5a);
    let mut rig = Rig::with_mem(mem.clone());
    let mut qs = queues(&mem);
    rig.activate(&qs);
    rig.run_until("the backend runs", |r| r.phase() == Phase::Running);
    assert_eq!((rig.counter("relaying"), rig.counter("routed_calls")), (1, 0));
    assert_eq!(rig.backend.mapped.load(Ordering::SeqCst), relay::SHADOW_BYTES, "the backend maps the shadow memory, not guest RAM");

    // Requests on both queues, one with its reply split over two buffers.
    let reply = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 0xabcd);
    rig.run_until("the reply arrives", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    assert_eq!(qs[REQUEST_QUEUE].used(), vec![(0, 24)]);
    assert_eq!(rig.reply(reply), (24, 0, 0xabcd));
    assert_eq!(get(&rig.mem, reply + 16, 8), PAYLOAD);
    assert_eq!(get(&rig.mem, reply + 24, 8), vec![0xee; 8], "nothing past the reply");
    assert_eq!(rig.t.interrupt().status() & INT_VRING, INT_VRING);
    let (hdr, a, b) = (0x40_0000, 0x41_0000, 0x42_0000);
    let mut h = [0u8; FUSE_IN_HEADER_LEN];
    h[0..4].copy_from_slice(&(FUSE_IN_HEADER_LEN as u32).to_le_bytes());
    h[4..8].copy_from_slice(&1u32.to_le_bytes());
    h[8..16].copy_from_slice(&7u64.to_le_bytes());
    put(&rig.mem, hdr, &h);
    qs[REQUEST_QUEUE].add(&[(hdr, 20, false), (hdr + 20, 20, false), (a, 10, true), (b, 64, true)]);
    w(&rig.t, 0x50, REQUEST_QUEUE as u32);
    rig.run_until("the split reply arrives", |_| qs[REQUEST_QUEUE].used_idx() == 2);
    let mut got = get(&rig.mem, a, 10);
    got.extend(get(&rig.mem, b, 14));
    assert_eq!(&got[0..16], &[&24u32.to_le_bytes()[..], &0i32.to_le_bytes(), &7u64.to_le_bytes()].concat()[..]);
    assert_eq!(&got[16..], PAYLOAD);
    qs[HIPRIO_QUEUE].add(&[(hdr, FUSE_IN_HEADER_LEN as u32, false)]);
    w(&rig.t, 0x50, HIPRIO_QUEUE as u32);
    rig.run_until("the forget is used", |_| qs[HIPRIO_QUEUE].used_idx() == 1);
    assert_eq!(rig.counter("relayed_requests"), 3);
    // The guest's writes stayed its own: the template file still holds its bytes there.
    assert_eq!(file_bytes(&file, reply, 24), vec![0x5a; 24]);
}

#[test]
fn relayed_requests_that_do_not_fit_wait_for_room_and_oversized_ones_fail() {
    let (mut rig, mem) = relaying_rig();
    let mut qs = queues(&mem);
    rig.start(&qs);
    // Five requests, each with 4 MiB of reply room (one buffer, shared): the pool holds
    // three at a time, the rest wait in the guest's queue and go as replies free room.
    let room = 0x80_0000;
    let mut heads = Vec::new();
    for i in 0..5u64 {
        let hdr = 0x40_0000 + i * 0x100;
        let mut h = [0u8; FUSE_IN_HEADER_LEN];
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..16].copy_from_slice(&(100 + i).to_le_bytes());
        put(&rig.mem, hdr, &h);
        heads.push(qs[REQUEST_QUEUE].add(&[(hdr, FUSE_IN_HEADER_LEN as u32, false), (room, 4 << 20, true)]));
    }
    w(&rig.t, 0x50, REQUEST_QUEUE as u32);
    rig.run_until("all five are answered", |_| qs[REQUEST_QUEUE].used_idx() == 5);
    assert_eq!(qs[REQUEST_QUEUE].used().iter().map(|u| u.1).collect::<Vec<_>>(), vec![24; 5]);
    assert_eq!(rig.counter("relayed_requests"), 5);
    // More reply room than the pool: completed with nothing written, counted as an error.
    let hdr = 0x40_1000;
    put(&rig.mem, hdr, &[0u8; FUSE_IN_HEADER_LEN]);
    let bufs: Vec<(u64, u32, bool)> = std::iter::once((hdr, FUSE_IN_HEADER_LEN as u32, false)).chain((0..5).map(|_| (room, 4 << 20, true))).collect();
    qs[REQUEST_QUEUE].add(&bufs);
    w(&rig.t, 0x50, REQUEST_QUEUE as u32);
    rig.run_until("the oversized request is completed", |_| qs[REQUEST_QUEUE].used_idx() == 6);
    assert_eq!(qs[REQUEST_QUEUE].used()[5].1, 0);
    assert_eq!((rig.counter("errors"), rig.counter("relayed_requests")), (1, 5));
}

#[test]
fn a_relaying_device_answers_what_a_dead_backend_held_with_eio() {
    let (mut rig, mem) = relaying_rig();
    let mut qs = queues(&mem);
    rig.start(&qs);
    let answered = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 1);
    rig.run_until("the first reply", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    let held = [rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, STALL, 2), rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, STALL, 3)];
    rig.run_until("the backend holds both", |r| r.backend.stalled.load(Ordering::SeqCst) == 2);
    rig.backend.die();
    rig.run_until("the device notices", |r| r.phase() == Phase::Failed);
    assert_eq!(rig.t.status() & STATUS_DEVICE_NEEDS_RESET, STATUS_DEVICE_NEEDS_RESET);
    assert_eq!(qs[REQUEST_QUEUE].used_idx(), 3);
    assert_eq!((rig.reply(held[0]), rig.reply(held[1])), ((16, -5, 2), (16, -5, 3)));
    assert_eq!(rig.reply(answered), (24, 0, 1));
    let later = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 4);
    rig.run_until("the next request fails", |_| qs[REQUEST_QUEUE].used_idx() == 4);
    assert_eq!(rig.reply(later), (16, -5, 4));
    assert_eq!(rig.counter("failed_requests"), 3);
}

#[test]
fn a_reset_relaying_device_starts_on_fresh_shadow_rings() {
    let (mut rig, mem) = relaying_rig();
    let mut qs = queues(&mem);
    rig.start(&qs);
    rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 1);
    rig.run_until("the first reply", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    w(&rig.t, 0x70, 0);
    rig.run_until("the rings are stopped", |r| !r.dev.lock().unwrap().stop_pending && r.phase() == Phase::Idle);
    let mut qs = queues(&mem);
    rig.activate(&qs);
    rig.run_until("the backend runs again", |r| r.phase() == Phase::Running);
    let reply = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 9);
    rig.run_until("the reply after the reset", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    assert_eq!(rig.reply(reply), (24, 0, 9));
    assert_eq!(rig.counter("activations"), 2);
}

#[test]
fn a_full_request_pool_does_not_hold_up_the_high_priority_queue() {
    let (mut rig, mem) = relaying_rig();
    let mut qs = queues(&mem);
    rig.start(&qs);
    // Three requests the backend keeps, 5 MiB of reply room each: the request queue's pool is
    // full (a fourth could not go).
    for i in 0..3u64 {
        let hdr = 0x40_0000 + i * 0x100;
        let mut h = [0u8; FUSE_IN_HEADER_LEN];
        h[4..8].copy_from_slice(&STALL.to_le_bytes());
        put(&rig.mem, hdr, &h);
        qs[REQUEST_QUEUE].add(&[(hdr, FUSE_IN_HEADER_LEN as u32, false), (0x80_0000, 5 << 20, true)]);
    }
    w(&rig.t, 0x50, REQUEST_QUEUE as u32);
    rig.run_until("the backend holds all three", |r| r.backend.stalled.load(Ordering::SeqCst) == 3);
    // A FORGET still goes through its own queue.
    put(&rig.mem, 0x30_0000, &[0u8; FUSE_IN_HEADER_LEN]);
    qs[HIPRIO_QUEUE].add(&[(0x30_0000, FUSE_IN_HEADER_LEN as u32, false)]);
    w(&rig.t, 0x50, HIPRIO_QUEUE as u32);
    rig.run_until("the forget is used", |_| qs[HIPRIO_QUEUE].used_idx() == 1);
    assert_eq!(qs[REQUEST_QUEUE].used_idx(), 0);
}

#[test]
fn a_request_of_exactly_the_pool_in_two_parts_fails_instead_of_waiting_forever() {
    let (mut rig, mem) = relaying_rig();
    let mut qs = queues(&mem);
    rig.start(&qs);
    // 1 readable byte and 16 MiB - 1 of reply room: 16 MiB in all, but each part takes whole
    // pages, one more than the pool has.
    qs[REQUEST_QUEUE].add(&[(0x1000, 1, false), (0, (relay::POOL_BYTES - 1) as u32, true)]);
    w(&rig.t, 0x50, REQUEST_QUEUE as u32);
    rig.run_until("the request is completed", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    assert_eq!(qs[REQUEST_QUEUE].used()[0].1, 0);
    let reply = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 5);
    rig.run_until("the next request is answered", |_| qs[REQUEST_QUEUE].used_idx() == 2);
    assert_eq!(rig.reply(reply), (24, 0, 5));
}

#[test]
fn what_the_backend_held_before_a_reset_is_never_answered_into_the_next_activation() {
    let (mut rig, mem) = relaying_rig();
    let mut qs = queues(&mem);
    rig.start(&qs);
    let old = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, STALL, 1);
    rig.run_until("the backend holds it", |r| r.backend.stalled.load(Ordering::SeqCst) == 1);
    // The backend dies as the driver resets the device: stopping its rings fails while the
    // device is idle, and the next activation finds no backend.
    rig.backend.die();
    w(&rig.t, 0x70, 0);
    rig.run_until("the device is idle without a backend", |r| r.phase() == Phase::Idle && r.counter("connected") == 0);
    let mut qs = queues(&mem);
    rig.activate(&qs);
    rig.run_until("the activation fails", |r| r.phase() == Phase::Failed);
    assert_eq!(qs[REQUEST_QUEUE].used_idx(), 0, "nothing of the old activation lands in the new rings");
    assert_eq!(get(&rig.mem, old, 16), vec![0xee; 16], "the request from before the reset is left alone");
    let later = rig.request(&mut qs[REQUEST_QUEUE], REQUEST_QUEUE as u32, 1, 2);
    rig.run_until("the new request fails", |_| qs[REQUEST_QUEUE].used_idx() == 1);
    assert_eq!(rig.reply(later), (16, -5, 2));
}
