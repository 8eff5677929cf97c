//! The virtio-mmio transport (version 2, "modern"): the register file one device is reached
//! through.

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    feature, Interrupt, VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::devices::BusDevice;
use crate::guest_warn;
use crate::memory::GuestMemoryMmap;

/// Size of the MMIO window of one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (the VMM puts the ioeventfds there).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Offset where the device-specific config space starts.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b53_5548; // "HUSK"

/// Why the transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An EventFd could not be created or duplicated.
    #[error("cannot create the {what} EventFd of a virtio-mmio transport")]
    EventFd {
        /// Which EventFd.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The device declared an invalid queue size.
    #[error("device declares invalid maximum size {size} for queue {index}")]
    QueueSize {
        /// Queue index.
        index: usize,
        /// Declared size.
        size: u16,
    },
}

/// One queue in a snapshot: its configuration and the device's progress in it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedQueue {
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available entry the device takes.
    pub next_avail: u16,
    /// Next used entry the device writes.
    pub next_used: u16,
}

/// A transport's registers and queues in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    /// The device type (checked on restore).
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// The device status.
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus bits not acknowledged yet.
    pub interrupt_status: u32,
    /// The queues, in device order.
    pub queues: Vec<SavedQueue>,
}

struct Registers {
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    status: u32,
    config_generation: u32,
}

/// One virtio device exposed through a virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    device_type: u32,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,
    regs: Mutex<Registers>,
}

impl MmioTransport {
    /// Wraps `device`; `mem` is what the device receives on activation.
    pub fn new(mem: GuestMemoryMmap, device: Arc<Mutex<dyn VirtioDevice>>) -> Result<Self, TransportError> {
        let (device_type, queues, queue_evts) = {
            let d = lock(&device);
            let mut queues = Vec::new();
            for (index, &size) in d.queue_max_sizes().iter().enumerate() {
                queues.push(Queue::new(size).map_err(|_| TransportError::QueueSize { index, size })?);
            }
            let evts = d
                .queue_events()
                .iter()
                .map(|e| e.try_clone())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| TransportError::EventFd { what: "queue notify", source })?;
            (d.device_type(), queues, evts)
        };
        let interrupt = Arc::new(Interrupt::new().map_err(|source| TransportError::EventFd { what: "interrupt", source })?);
        Ok(Self {
            device,
            device_type,
            mem,
            interrupt,
            queue_evts,
            regs: Mutex::new(Registers {
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                queue_sel: 0,
                queues,
                status: 0,
                config_generation: 0,
            }),
        })
    }

    /// The queue-notify EventFds, in queue order: the VMM registers queue `i`'s as ioeventfd
    /// at `base + QUEUE_NOTIFY_OFFSET` with datamatch `i` (u32).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt: the VMM wires it to the device's GSI.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The virtio device type.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// Changes the device's configuration at run time and tells the driver: `change` runs
    /// with the register lock held and ConfigGeneration moves with it, so a driver reading the
    /// config space across the change (several register reads, each taking only the device
    /// lock) reads the generation again and sees that it moved; then the config-change
    /// interrupt is raised. Returns what `change` returned and whether raising the interrupt
    /// failed.
    pub fn change_config<R>(&self, change: impl FnOnce() -> R) -> (R, std::io::Result<()>) {
        let out = {
            let mut regs = self.regs();
            let out = change();
            regs.config_generation = regs.config_generation.wrapping_add(1);
            out
        };
        (out, self.interrupt.signal_config_change())
    }

    /// The registers and queues, with the device's progress in each queue, for a snapshot of
    /// the paused VM. An error names why the device cannot be saved now.
    pub fn save(&self) -> Result<TransportState, String> {
        let regs = self.regs();
        let progress = {
            let mut dev = lock(&self.device);
            if regs.status & STATUS_DRIVER_OK != 0 && dev.is_activated() {
                dev.save_progress()?
            } else {
                Vec::new()
            }
        };
        if !progress.is_empty() && progress.len() != regs.queues.len() {
            return Err(format!("the device reported {} queues, the transport has {}", progress.len(), regs.queues.len()));
        }
        let queues = regs
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let s = q.state();
                let p = progress.get(i);
                SavedQueue {
                    size: s.size,
                    ready: s.ready,
                    desc_table: s.desc_table,
                    avail_ring: s.avail_ring,
                    used_ring: s.used_ring,
                    next_avail: p.map_or(s.next_avail, |p| p.next_avail),
                    next_used: p.map_or(s.next_used, |p| p.next_used),
                }
            })
            .collect();
        Ok(TransportState {
            device_type: self.device_type,
            device_features_sel: regs.device_features_sel,
            driver_features_sel: regs.driver_features_sel,
            driver_features: regs.driver_features,
            queue_sel: regs.queue_sel,
            status: regs.status,
            config_generation: regs.config_generation,
            interrupt_status: self.interrupt.status(),
            queues,
        })
    }

    /// Takes over a saved transport's state before the restored guest runs: the registers,
    /// the queues (a live device is activated with them, at the saved progress), then one
    /// notification of each queue (the device looks at what the guest queued) and an
    /// interrupt for whatever the guest had not acknowledged or may have missed.
    pub fn restore(&self, st: &TransportState) -> Result<(), String> {
        if st.device_type != self.device_type {
            return Err(format!("saved device type {} where this VM has {}", st.device_type, self.device_type));
        }
        let mut regs = self.regs();
        if st.queues.len() != regs.queues.len() {
            return Err(format!("{} saved queues for a device with {}", st.queues.len(), regs.queues.len()));
        }
        for (i, (q, s)) in regs.queues.iter_mut().zip(&st.queues).enumerate() {
            if s.size > q.max_size() {
                return Err(format!("queue {i}: saved size {} above the maximum {}", s.size, q.max_size()));
            }
            q.set_size(s.size);
            q.set_ready(s.ready);
            q.set_desc_table_address(Some(s.desc_table as u32), Some((s.desc_table >> 32) as u32));
            q.set_avail_ring_address(Some(s.avail_ring as u32), Some((s.avail_ring >> 32) as u32));
            q.set_used_ring_address(Some(s.used_ring as u32), Some((s.used_ring >> 32) as u32));
            q.set_next_avail(s.next_avail);
            q.set_next_used(s.next_used);
        }
        regs.device_features_sel = st.device_features_sel;
        regs.driver_features_sel = st.driver_features_sel;
        regs.driver_features = st.driver_features;
        regs.queue_sel = st.queue_sel;
        regs.config_generation = st.config_generation;
        let live = st.status & STATUS_DRIVER_OK != 0;
        if st.status & STATUS_FEATURES_OK != 0 {
            let mut dev = lock(&self.device);
            let acked = st.driver_features & dev.avail_features();
            if acked != st.driver_features {
                return Err(format!("saved driver features {:#x} not all offered ({:#x})", st.driver_features, dev.avail_features()));
            }
            dev.set_acked_features(acked);
        }
        if live && !self.activate(&mut regs) {
            return Err("the device refused the saved queues".into());
        }
        regs.status = st.status;
        drop(regs);
        if live {
            for (i, evt) in self.queue_evts.iter().enumerate() {
                evt.write(1).map_err(|e| format!("cannot notify queue {i}: {e}"))?;
            }
            self.interrupt.signal_used_queue().map_err(|e| format!("cannot raise the interrupt: {e}"))?;
        }
        if st.interrupt_status & super::interrupt::INT_CONFIG != 0 {
            self.interrupt.signal_config_change().map_err(|e| format!("cannot raise the interrupt: {e}"))?;
        }
        Ok(())
    }

    /// The current device status register (for tests and diagnostics).
    pub fn status(&self) -> u32 {
        self.read_reg(0x070)
    }

    fn regs(&self) -> MutexGuard<'_, Registers> {
        // A poisoned lock means a panic elsewhere; the register state is still consistent
        // (every update is a single assignment), so keep serving the guest.
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let regs = self.regs();
        let q = regs.queues.get(regs.queue_sel as usize);
        match offset {
            0x000 => MAGIC_VALUE,
            0x004 => MMIO_VERSION,
            0x008 => self.device_type,
            0x00c => VENDOR_ID,
            0x010 => {
                let features = lock(&self.device).avail_features();
                match regs.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => q.map_or(0, |q| u32::from(q.max_size())),
            0x044 => q.map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            // DEVICE_NEEDS_RESET may also come from the device side, asynchronously.
            0x070 => regs.status | if self.interrupt.needs_reset() { STATUS_DEVICE_NEEDS_RESET } else { 0 },
            0x0fc => regs.config_generation,
            _ => {
                guest_warn!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&self, offset: u64, value: u32) {
        let mut regs = self.regs();
        let configurable = regs.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x014 => regs.device_features_sel = value,
            0x020 => {
                if regs.status & (STATUS_DRIVER | STATUS_FEATURES_OK) != STATUS_DRIVER {
                    guest_warn!("virtio-mmio: driver features written in status {:#x}", regs.status);
                    return;
                }
                let shift = match regs.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                regs.driver_features = (regs.driver_features & !mask) | (u64::from(value) << shift);
            }
            0x024 => regs.driver_features_sel = value,
            0x030 => regs.queue_sel = value,
            0x038 | 0x044 | 0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                if !configurable {
                    guest_warn!("virtio-mmio: queue register {offset:#x} written after DRIVER_OK");
                    return;
                }
                let sel = regs.queue_sel as usize;
                let Some(q) = regs.queues.get_mut(sel) else {
                    guest_warn!("virtio-mmio: queue register {offset:#x} for absent queue {sel}");
                    return;
                };
                match offset {
                    0x038 => q.set_size(value.try_into().unwrap_or(0)),
                    0x044 => q.set_ready(value == 1),
                    0x080 => q.set_desc_table_address(Some(value), None),
                    0x084 => q.set_desc_table_address(None, Some(value)),
                    0x090 => q.set_avail_ring_address(Some(value), None),
                    0x094 => q.set_avail_ring_address(None, Some(value)),
                    0x0a0 => q.set_used_ring_address(Some(value), None),
                    _ => q.set_used_ring_address(None, Some(value)),
                }
            }
            0x050 => {
                // Only reached when no ioeventfd matched (e.g. unit tests, or a bad index).
                match self.queue_evts.get(value as usize) {
                    Some(evt) => {
                        if let Err(e) = evt.write(1) {
                            guest_warn!("virtio-mmio: cannot signal queue {value}: {e}");
                        }
                    }
                    None => guest_warn!("virtio-mmio: notify for absent queue {value}"),
                }
            }
            0x064 => self.interrupt.ack(value),
            0x070 => self.set_status(&mut regs, value),
            _ => guest_warn!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn set_status(&self, regs: &mut Registers, value: u32) {
        if value == 0 {
            self.reset(regs);
            return;
        }
        let old = regs.status;
        if value & old != old {
            guest_warn!("virtio-mmio: status {value:#x} clears bits of {old:#x} without reset");
            return;
        }
        let new_bits = value & !old;
        let mut status = value;
        if new_bits & STATUS_FEATURES_OK != 0 {
            let mut dev = lock(&self.device);
            let acked = regs.driver_features & dev.avail_features();
            if acked & feature(VIRTIO_F_VERSION_1) == 0 || regs.driver_features != acked {
                guest_warn!("virtio-mmio: driver features {:#x} refused (offered {:#x}, VERSION_1 required)", regs.driver_features, dev.avail_features());
                status &= !STATUS_FEATURES_OK;
            } else {
                dev.set_acked_features(acked);
            }
        }
        if new_bits & STATUS_DRIVER_OK != 0 {
            let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
            if status & ready != ready {
                guest_warn!("virtio-mmio: DRIVER_OK in status {status:#x} without FEATURES_OK");
                status &= !STATUS_DRIVER_OK;
            } else if !self.activate(regs) {
                status |= STATUS_DEVICE_NEEDS_RESET;
                status &= !STATUS_DRIVER_OK;
                regs.config_generation = regs.config_generation.wrapping_add(1);
                let _ = self.interrupt.signal_config_change();
            }
        }
        if new_bits & STATUS_FAILED != 0 {
            guest_warn!("virtio-mmio: driver marked device type {} failed", self.device_type);
        }
        regs.status = status;
    }

    /// Hands configured copies of the queues to the device. Returns false if the queues are
    /// unusable or the device refused.
    fn activate(&self, regs: &mut Registers) -> bool {
        let event_idx = regs.driver_features & feature(VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(regs.queues.len());
        for (i, q) in regs.queues.iter().enumerate() {
            if !q.ready() || !q.is_valid(&self.mem) {
                guest_warn!("virtio-mmio: device type {} queue {i} not ready or invalid at DRIVER_OK", self.device_type);
                return false;
            }
            let Ok(mut copy) = Queue::try_from(q.state()) else {
                return false;
            };
            copy.set_event_idx(event_idx);
            queues.push(copy);
        }
        let mut dev = lock(&self.device);
        match dev.activate(self.mem.clone(), self.interrupt.clone(), queues) {
            Ok(()) => true,
            Err(e) => {
                log::error!("virtio-mmio: cannot activate device type {}: {e}", self.device_type);
                false
            }
        }
    }

    fn reset(&self, regs: &mut Registers) {
        lock(&self.device).reset();
        for q in regs.queues.iter_mut() {
            q.reset();
        }
        regs.status = 0;
        regs.driver_features = 0;
        regs.device_features_sel = 0;
        regs.driver_features_sel = 0;
        regs.queue_sel = 0;
        self.interrupt.clear();
    }
}

impl BusDevice for MmioTransport {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            guest_warn!("virtio-mmio: {}-byte read at unaligned register {offset:#x}", data.len());
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!("virtio-mmio: {}-byte write to register {offset:#x}", data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            guest_warn!("virtio-mmio: unaligned register write at {offset:#x}");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

/// Locks a device, tolerating poison (a device panic is a bug, not a reason to stop the VM's
/// other devices).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
