//! Register-level tests of the virtio-mmio transport against a mock device.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::test_utils::{guest_mem, TestQueue};
use crate::devices::virtio::{ActivateError, QueueProgress, COMMON_FEATURES};

struct MockDevice {
    evts: Vec<EventFd>,
    acked: u64,
    activated: Option<usize>,
    resets: usize,
    config: [u8; 8],
    fail_activate: bool,
    /// What `save_progress` answers (None: it refuses).
    progress: Option<Vec<QueueProgress>>,
    /// Each activated queue's descriptor table and progress.
    got: Vec<(u64, u16, u16)>,
}

impl MockDevice {
    fn new() -> Self {
        Self {
            evts: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap(), EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            acked: 0,
            activated: None,
            resets: 0,
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            fail_activate: false,
            progress: None,
            got: Vec::new(),
        }
    }
}

impl VirtioDevice for MockDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }
    fn avail_features(&self) -> u64 {
        COMMON_FEATURES | 1
    }
    fn set_acked_features(&mut self, f: u64) {
        self.acked = f;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(dst) = self.config.get_mut(offset as usize..offset as usize + data.len()) {
            dst.copy_from_slice(data);
        }
    }
    fn activate(&mut self, _mem: GuestMemoryMmap, _i: Arc<Interrupt>, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::AlreadyActive);
        }
        self.activated = Some(queues.len());
        self.got = queues.iter().map(|q| (q.desc_table(), q.next_avail(), q.next_used())).collect();
        Ok(())
    }
    fn reset(&mut self) {
        self.activated = None;
        self.resets += 1;
    }
    fn is_activated(&self) -> bool {
        self.activated.is_some()
    }
    fn metrics(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn save_progress(&mut self) -> Result<Vec<QueueProgress>, String> {
        self.progress.clone().ok_or_else(|| "mock holds a request".to_string())
    }
}

fn r(t: &MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn setup() -> (Arc<Mutex<MockDevice>>, MmioTransport, GuestMemoryMmap) {
    let mem = guest_mem();
    let dev = Arc::new(Mutex::new(MockDevice::new()));
    let t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    (dev, t, mem)
}

/// Drives the driver side of initialisation up to FEATURES_OK with `features`.
fn negotiate(t: &MmioTransport, features: u64) {
    w(t, 0x70, STATUS_ACKNOWLEDGE);
    w(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(t, 0x24, 0);
    w(t, 0x20, features as u32);
    w(t, 0x24, 1);
    w(t, 0x20, (features >> 32) as u32);
    w(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
}

fn setup_queue(t: &MmioTransport, sel: u32, q: &Queue) {
    w(t, 0x30, sel);
    w(t, 0x38, u32::from(q.size()));
    w(t, 0x80, q.desc_table() as u32);
    w(t, 0x84, (q.desc_table() >> 32) as u32);
    w(t, 0x90, q.avail_ring() as u32);
    w(t, 0x94, 0);
    w(t, 0xa0, q.used_ring() as u32);
    w(t, 0xa4, 0);
    w(t, 0x44, 1);
}

const OK: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;

#[test]
fn identification_registers() {
    let (_, t, _) = setup();
    assert_eq!(r(&t, 0x0), 0x7472_6976);
    assert_eq!(r(&t, 0x4), 2);
    assert_eq!(r(&t, 0x8), 42);
    w(&t, 0x14, 1);
    assert_eq!(r(&t, 0x10), 1, "VERSION_1 is bit 32 = bit 0 of the high word");
    w(&t, 0x14, 0);
    assert_eq!(r(&t, 0x10) & 1, 1);
    w(&t, 0x30, 1);
    assert_eq!(r(&t, 0x34), 16);
    w(&t, 0x30, 7);
    assert_eq!(r(&t, 0x34), 0, "absent queue has max size 0");
}

#[test]
fn legacy_driver_without_version_1_is_refused() {
    let (dev, t, _) = setup();
    negotiate(&t, 1);
    assert_eq!(r(&t, 0x70) & STATUS_FEATURES_OK, 0);
    assert_eq!(dev.lock().unwrap().acked, 0);
}

#[test]
fn features_outside_offer_are_refused() {
    let (_, t, _) = setup();
    negotiate(&t, COMMON_FEATURES | (1 << 5));
    assert_eq!(r(&t, 0x70) & STATUS_FEATURES_OK, 0);
}

#[test]
fn full_activation_hands_queues_to_device() {
    let (dev, t, mem) = setup();
    negotiate(&t, COMMON_FEATURES);
    assert_eq!(r(&t, 0x70), OK);
    assert_eq!(dev.lock().unwrap().acked, COMMON_FEATURES);
    let q0 = TestQueue::new(&mem, 0x10000, 16).queue();
    let q1 = TestQueue::new(&mem, 0x20000, 16).queue();
    setup_queue(&t, 0, &q0);
    setup_queue(&t, 1, &q1);
    assert_eq!(r(&t, 0x44), 1);
    w(&t, 0x70, OK | STATUS_DRIVER_OK);
    assert_eq!(r(&t, 0x70), OK | STATUS_DRIVER_OK);
    assert_eq!(dev.lock().unwrap().activated, Some(2));
    // Queue registers are frozen once live.
    w(&t, 0x30, 0);
    w(&t, 0x44, 0);
    assert_eq!(r(&t, 0x44), 1);
    // Reset.
    w(&t, 0x70, 0);
    assert_eq!(r(&t, 0x70), 0);
    assert_eq!(dev.lock().unwrap().activated, None);
    assert_eq!(dev.lock().unwrap().resets, 1);
    assert_eq!(r(&t, 0x44), 0);
}

#[test]
fn driver_ok_with_unconfigured_queue_needs_reset() {
    let (dev, t, mem) = setup();
    negotiate(&t, COMMON_FEATURES);
    let q0 = TestQueue::new(&mem, 0x10000, 16).queue();
    setup_queue(&t, 0, &q0);
    w(&t, 0x70, OK | STATUS_DRIVER_OK);
    let st = r(&t, 0x70);
    assert_eq!(st & STATUS_DRIVER_OK, 0);
    assert_ne!(st & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(dev.lock().unwrap().activated.is_none());
    assert_eq!(r(&t, 0x60) & 2, 2, "config-change interrupt raised");
    assert_eq!(t.interrupt().event().read().unwrap(), 1);
}

#[test]
fn queue_outside_memory_is_not_activated() {
    let (dev, t, mem) = setup();
    negotiate(&t, COMMON_FEATURES);
    let q0 = TestQueue::new(&mem, 0x10000, 16).queue();
    setup_queue(&t, 0, &q0);
    setup_queue(&t, 1, &q0);
    w(&t, 0x30, 1);
    w(&t, 0x84, 0xffff); // descriptor table far beyond guest RAM
    w(&t, 0x70, OK | STATUS_DRIVER_OK);
    assert_eq!(r(&t, 0x70) & STATUS_DRIVER_OK, 0);
    assert!(dev.lock().unwrap().activated.is_none());
}

#[test]
fn device_activation_failure_sets_needs_reset() {
    let (dev, t, mem) = setup();
    dev.lock().unwrap().fail_activate = true;
    negotiate(&t, COMMON_FEATURES);
    let q0 = TestQueue::new(&mem, 0x10000, 16).queue();
    setup_queue(&t, 0, &q0);
    setup_queue(&t, 1, &q0);
    w(&t, 0x70, OK | STATUS_DRIVER_OK);
    assert_ne!(r(&t, 0x70) & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn driver_ok_without_features_ok_is_ignored() {
    let (dev, t, _) = setup();
    w(&t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
    assert_eq!(r(&t, 0x70) & STATUS_DRIVER_OK, 0);
    assert!(dev.lock().unwrap().activated.is_none());
}

#[test]
fn notify_register_signals_queue_event_and_bad_index_is_ignored() {
    let (dev, t, _) = setup();
    w(&t, 0x50, 1);
    assert_eq!(dev.lock().unwrap().evts[1].read().unwrap(), 1);
    w(&t, 0x50, 99); // no such queue: ignored, no panic
    assert!(dev.lock().unwrap().evts[0].read().is_err(), "queue 0 not signalled");
}

#[test]
fn interrupt_ack_clears_status_bits() {
    let (_, t, _) = setup();
    t.interrupt.signal_used_queue().unwrap();
    t.interrupt.signal_config_change().unwrap();
    assert_eq!(r(&t, 0x60), 3);
    w(&t, 0x64, 1);
    assert_eq!(r(&t, 0x60), 2);
}

#[test]
fn config_space_reads_and_out_of_range_access() {
    let (dev, t, _) = setup();
    let mut b = [0u8; 4];
    t.read(0x100 + 4, &mut b);
    assert_eq!(b, [5, 6, 7, 8]);
    let mut b = [0xffu8; 4];
    t.read(0x100 + 6, &mut b);
    assert_eq!(b, [7, 8, 0, 0], "bytes past the config space read as zero");
    t.read(0xfff, &mut b[..1]);
    assert_eq!(b[0], 0);
    t.write(0x100 + 0xf00, &[1, 2, 3, 4]); // ignored
    assert_eq!(dev.lock().unwrap().config, [1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn odd_sized_and_unaligned_register_accesses_are_ignored() {
    let (_, t, _) = setup();
    let mut b = [0xffu8; 2];
    t.read(0x0, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 4];
    t.read(0x2, &mut b);
    assert_eq!(b, [0; 4]);
    t.write(0x70, &[1]);
    assert_eq!(r(&t, 0x70), 0);
    t.write(0x71, &[1, 0, 0, 0]);
    assert_eq!(r(&t, 0x70), 0);
}

#[test]
fn status_cannot_clear_bits_without_reset() {
    let (_, t, _) = setup();
    negotiate(&t, COMMON_FEATURES);
    w(&t, 0x70, STATUS_ACKNOWLEDGE);
    assert_eq!(r(&t, 0x70), OK);
}

#[test]
fn invalid_queue_sizes_are_ignored() {
    let (dev, t, mem) = setup();
    negotiate(&t, COMMON_FEATURES);
    let q0 = TestQueue::new(&mem, 0x10000, 16).queue();
    setup_queue(&t, 0, &q0);
    setup_queue(&t, 1, &q0);
    w(&t, 0x30, 1);
    w(&t, 0x38, 100_000); // not a power of two and > max: ignored by the queue
    w(&t, 0x38, 3);
    w(&t, 0x70, OK | STATUS_DRIVER_OK);
    // Size 3 is rejected by virtio-queue (not a power of two); the queue keeps size 16.
    assert_eq!(dev.lock().unwrap().activated, Some(2));
}

/// A live transport with both queues configured, its device at `progress`.
fn live(progress: Option<Vec<QueueProgress>>) -> (Arc<Mutex<MockDevice>>, MmioTransport, GuestMemoryMmap, [u64; 2]) {
    let (dev, t, mem) = setup();
    negotiate(&t, COMMON_FEATURES);
    let q0 = TestQueue::new(&mem, 0x10000, 16).queue();
    let q1 = TestQueue::new(&mem, 0x20000, 16).queue();
    setup_queue(&t, 0, &q0);
    setup_queue(&t, 1, &q1);
    w(&t, 0x70, OK | STATUS_DRIVER_OK);
    dev.lock().unwrap().progress = progress;
    (dev, t, mem, [q0.desc_table(), q1.desc_table()])
}

#[test]
fn a_saved_live_transport_activates_a_fresh_device_at_the_saved_progress() {
    let p = |next_avail, next_used| QueueProgress { next_avail, next_used };
    let (_, t, mem, desc) = live(Some(vec![p(5, 4), p(2, 2)]));
    t.interrupt().signal_config_change().unwrap();
    let st = t.save().unwrap();
    assert_eq!((st.status, st.queues[0].next_avail, st.queues[0].next_used), (OK | STATUS_DRIVER_OK, 5, 4));
    // Through the state file's encoding.
    let back: TransportState = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
    assert_eq!(back, st);

    let dev2 = Arc::new(Mutex::new(MockDevice::new()));
    let t2 = MmioTransport::new(mem, dev2.clone()).unwrap();
    t2.restore(&back).unwrap();
    assert_eq!(r(&t2, 0x70), OK | STATUS_DRIVER_OK);
    let d = dev2.lock().unwrap();
    assert_eq!(d.acked, COMMON_FEATURES);
    assert_eq!(d.got, vec![(desc[0], 5, 4), (desc[1], 2, 2)]);
    // Each queue is looked at once, and the driver gets an interrupt for both kinds.
    assert!(d.evts.iter().all(|e| e.read().is_ok()));
    assert_eq!(r(&t2, 0x60), crate::devices::virtio::interrupt::INT_VRING | crate::devices::virtio::interrupt::INT_CONFIG);
}

#[test]
fn a_device_holding_guest_work_or_another_type_is_not_saved_or_restored() {
    let (_, t, mem, _) = live(None);
    assert_eq!(t.save().unwrap_err(), "mock holds a request");
    // A transport that is not live saves without asking the device.
    let (_, idle, _) = setup();
    let mut st = idle.save().unwrap();
    assert_eq!(st.status, 0);
    st.device_type = 7;
    let t2 = MmioTransport::new(mem.clone(), Arc::new(Mutex::new(MockDevice::new()))).unwrap();
    assert!(t2.restore(&st).unwrap_err().contains("saved device type 7"));
    st.device_type = 42;
    st.queues.pop();
    assert!(t2.restore(&st).unwrap_err().contains("1 saved queues"));
    let (_, t3, _) = setup();
    let mut st = live(Some(vec![QueueProgress { next_avail: 0, next_used: 0 }; 2])).1.save().unwrap();
    st.queues[1].size = 64;
    assert!(t3.restore(&st).unwrap_err().contains("above the maximum 16"));
}
