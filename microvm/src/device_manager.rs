//! Placement of devices: the port-I/O and MMIO buses, virtio-mmio windows and GSIs, the
//! event manager the device subscribers run on, and per-device counters for the API.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use husk_config::IrqDelivery;
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, BusError};
use crate::devices::virtio::block::worker::WorkerControl;
use crate::devices::virtio::block::DiskHandle;
use crate::devices::virtio::interrupt::Interrupt;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::vsock::connector::Connector;
use crate::devices::BusDevice;
use crate::layout::*;

/// Offset of the QueueNotify register in a virtio-mmio window.
pub const VIRTIO_MMIO_QUEUE_NOTIFY: u64 = 0x50;

/// The event manager type every device subscriber runs on.
pub type SubscriberRef = Arc<Mutex<dyn MutEventSubscriber + Send>>;
/// The event manager of the event-loop thread.
pub type DeviceEventManager = EventManager<SubscriberRef>;

/// A device that exposes counters (requests, bytes, errors...) through the API.
pub trait CounterSource: Send + Sync {
    /// Current values, by counter name.
    fn counters(&self) -> Vec<(&'static str, u64)>;
}

/// Attaching a device failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No MMIO window left.
    #[error("no free virtio-mmio window for device {0} (the {VIRTIO_MMIO_START:#x}-{VIRTIO_MMIO_END:#x} range is full)")]
    NoMmioSpace(String),
    /// No interrupt line left.
    #[error("no free GSI for device {0} (GSIs {FIRST_DEVICE_GSI}-{LAST_DEVICE_GSI} are all used)")]
    NoGsi(String),
    /// A bus refused the range.
    #[error("cannot place device {0} on the bus")]
    Bus(String, #[source] BusError),
    /// KVM_IRQFD failed.
    #[error("cannot register the interrupt of device {0} as irqfd on GSI {1}")]
    Irqfd(String, u32, #[source] kvm_ioctls::Error),
    /// KVM_IOEVENTFD failed.
    #[error("cannot register queue {1} notification of device {0} as ioeventfd")]
    Ioeventfd(String, usize, #[source] kvm_ioctls::Error),
    /// Creating the event manager failed.
    #[error("cannot create the device event manager")]
    EventManager(#[source] event_manager::Error),
}

/// Where a virtio-mmio device was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// Base of its 4 KiB window.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
}

/// Buses, allocators, the event manager and counters of one VM.
pub struct DeviceManager {
    /// Port I/O bus.
    pub io_bus: Bus,
    /// MMIO bus.
    pub mmio_bus: Bus,
    next_mmio: u64,
    next_gsi: u32,
    cmdline_extra: Vec<String>,
    event_manager: Option<DeviceEventManager>,
    counters: Vec<(String, Arc<dyn CounterSource>)>,
    io_threads: Vec<WorkerControl>,
    connectors: Vec<Connector>,
    disks: Vec<Arc<DiskHandle>>,
    transports: Vec<(String, Arc<MmioTransport>)>,
    irq_delivery: IrqDelivery,
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new(IrqDelivery::default())
    }
}

impl DeviceManager {
    /// Empty buses; allocation starts at [`VIRTIO_MMIO_START`] and [`FIRST_DEVICE_GSI`];
    /// virtio interrupts will be wired as `irq_delivery` says.
    pub fn new(irq_delivery: IrqDelivery) -> Self {
        DeviceManager {
            io_bus: Bus::new(),
            mmio_bus: Bus::new(),
            next_mmio: VIRTIO_MMIO_START,
            next_gsi: FIRST_DEVICE_GSI,
            cmdline_extra: Vec::new(),
            event_manager: None,
            counters: Vec::new(),
            io_threads: Vec::new(),
            connectors: Vec::new(),
            disks: Vec::new(),
            transports: Vec::new(),
            irq_delivery,
        }
    }

    /// The event manager, created on first use (a VM without devices that need one never
    /// creates the epoll fd or the thread).
    pub fn event_manager(&mut self) -> Result<&mut DeviceEventManager, DeviceError> {
        let em = match self.event_manager.take() {
            Some(em) => em,
            None => EventManager::new().map_err(DeviceError::EventManager)?,
        };
        Ok(self.event_manager.insert(em))
    }

    /// Remembers a disk I/O thread, whose seccomp filter the runner installs.
    pub fn register_io_thread(&mut self, thread: WorkerControl) {
        self.io_threads.push(thread);
    }

    /// The disk I/O threads.
    pub fn io_threads(&self) -> &[WorkerControl] {
        &self.io_threads
    }

    /// Remembers a vsock device's connector thread, whose seccomp filter the runner installs.
    pub fn register_vsock_connector(&mut self, connector: Connector) {
        self.connectors.push(connector);
    }

    /// The vsock connector threads.
    pub fn vsock_connectors(&self) -> &[Connector] {
        &self.connectors
    }

    /// Registers the transport of an attached virtio device under its name (snapshots save
    /// and restore them in this order).
    pub fn register_transport(&mut self, name: &str, transport: Arc<MmioTransport>) {
        self.transports.push((name.to_string(), transport));
    }

    /// The virtio transports, in the order the devices were attached.
    pub fn transports(&self) -> Vec<(String, Arc<MmioTransport>)> {
        self.transports.clone()
    }

    /// Remembers a disk or slot for the control API (`/vm/disks`).
    pub fn register_disk(&mut self, disk: DiskHandle) {
        self.disks.push(Arc::new(disk));
    }

    /// The disks and slots, in the order the guest sees them.
    pub fn disks(&self) -> Vec<Arc<DiskHandle>> {
        self.disks.clone()
    }

    /// Adds a subscriber to the event loop.
    pub fn add_subscriber(&mut self, subscriber: SubscriberRef) -> Result<(), DeviceError> {
        self.event_manager()?.add_subscriber(subscriber);
        Ok(())
    }

    /// Takes the event manager for the event-loop thread.
    pub fn take_event_manager(&mut self) -> Option<DeviceEventManager> {
        self.event_manager.take()
    }

    /// Registers counters shown by the API under `name`.
    pub fn register_counters(&mut self, name: impl Into<String>, source: Arc<dyn CounterSource>) {
        self.counters.push((name.into(), source));
    }

    /// All registered counter sources.
    pub fn counter_sources(&self) -> Vec<(String, Arc<dyn CounterSource>)> {
        self.counters.clone()
    }

    /// Kernel command-line parameters announcing the attached devices.
    pub fn cmdline_extra(&self) -> &[String] {
        &self.cmdline_extra
    }

    /// Attaches one virtio-mmio device: allocates a 4 KiB window and a GSI, wires
    /// `interrupt` to the GSI (`KVM_IRQ_LINE` or irqfd, as configured), registers each
    /// `queue_notify[i]` as ioeventfd at window+0x50 matching the 32-bit value `i`, puts
    /// `transport` on the MMIO bus, adds `subscriber` to the event loop and announces the
    /// device on the kernel command line.
    pub fn attach_virtio_mmio(
        &mut self,
        vm: &Arc<VmFd>,
        name: &str,
        transport: Arc<dyn BusDevice>,
        interrupt: &Interrupt,
        queue_notify: &[EventFd],
        subscriber: SubscriberRef,
    ) -> Result<MmioSlot, DeviceError> {
        let base = self.next_mmio;
        if base + VIRTIO_MMIO_SIZE > VIRTIO_MMIO_END {
            return Err(DeviceError::NoMmioSpace(name.into()));
        }
        let gsi = self.next_gsi;
        if gsi > LAST_DEVICE_GSI {
            return Err(DeviceError::NoGsi(name.into()));
        }
        interrupt.set_gsi(vm.clone(), gsi);
        match self.irq_delivery {
            IrqDelivery::Line => {
                interrupt.use_irq_line(vm.clone(), gsi);
            }
            IrqDelivery::Irqfd => {
                vm.register_irqfd(interrupt.event(), gsi).map_err(|e| DeviceError::Irqfd(name.into(), gsi, e))?;
            }
        }
        for (i, evt) in queue_notify.iter().enumerate() {
            let addr = IoEventAddress::Mmio(base + VIRTIO_MMIO_QUEUE_NOTIFY);
            vm.register_ioevent(evt, &addr, i as u32).map_err(|e| DeviceError::Ioeventfd(name.into(), i, e))?;
        }
        self.mmio_bus.insert(transport, base, VIRTIO_MMIO_SIZE).map_err(|e| DeviceError::Bus(name.into(), e))?;
        self.add_subscriber(subscriber)?;
        self.cmdline_extra.push(format!("virtio_mmio.device=4K@{base:#x}:{gsi}"));
        self.next_mmio += VIRTIO_MMIO_SIZE;
        self.next_gsi += 1;
        log::debug!("attached {name} at {base:#x} gsi {gsi}");
        Ok(MmioSlot { base, gsi })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_limit_matches_the_gsis_and_windows_handed_out() {
        let gsis = (LAST_DEVICE_GSI - FIRST_DEVICE_GSI + 1) as usize;
        assert_eq!(husk_config::MAX_VIRTIO_DEVICES, gsis, "VmConfig::validate must refuse what attach_virtio_mmio cannot place");
        assert!(((VIRTIO_MMIO_END - VIRTIO_MMIO_START) / VIRTIO_MMIO_SIZE) as usize >= gsis, "windows are not the limit");
    }
}
