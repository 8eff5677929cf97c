//! The interrupt line of one virtio-mmio device: status bits plus the way the interrupt
//! reaches KVM, either `KVM_IRQ_LINE` on the device's GSI or an irqfd EventFd.
//!
//! `KVM_IRQ_LINE` is the default: KVM cannot set an IOAPIC pin from an irqfd's wake-up (only
//! MSI routes are injected there), so each irqfd interrupt waits for a kernel worker thread,
//! one more context switch per interrupt. The ioctl sets the pin at once, on the thread that
//! used the buffers. tests/virtio/bench-irq.sh measures both against QEMU in one testbed
//! run: over four runs the line came out 1-5% faster host->guest and 2-6% faster
//! guest->host over vsock than the irqfd.
//!
//! A vhost-user backend signals used buffers on EventFds of its own (its "call" EventFds).
//! Relaying them costs a wake-up of husk-vmm's event loop per reply; instead they can be
//! routed to the GSI as irqfds ([`Interrupt::route_used_queue_events`]): KVM then raises the
//! interrupt itself. Nobody sets the status bit for such an interrupt, so while they are
//! routed the status register always reports `INT_VRING` (a driver that finds no new used
//! buffer in a queue just moves on; the virtio-mmio driver of Linux checks every queue).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

/// Interrupt status bit: a queue has new used buffers.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the device configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Interrupt status and trigger of one device, shared between the transport (vCPU side reads
/// and acknowledges the status) and the device (event loop side raises it).
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    /// The device stopped working until the driver resets it (a vhost-user backend died);
    /// the transport reports it as DEVICE_NEEDS_RESET in the device status.
    needs_reset: AtomicBool,
    evt: EventFd,
    /// Set once the device is wired with `KVM_IRQ_LINE`.
    line: OnceLock<Line>,
    /// The VM and GSI the device is wired to (either way), for routing EventFds to it.
    gsi: OnceLock<(Arc<VmFd>, u32)>,
    /// EventFds of a backend are routed to the GSI as irqfds.
    vring_routed: AtomicBool,
}

/// A GSI of a VM, pulsed with `KVM_IRQ_LINE`.
#[derive(Debug)]
struct Line {
    vm: Arc<VmFd>,
    gsi: u32,
    /// Held for a whole pulse: raises from two threads (a vCPU's config change and the
    /// device's own thread) could otherwise overlap, and the second, finding the pin high,
    /// would make no edge of its own after its status bit was set.
    pulse: Mutex<()>,
}

impl Interrupt {
    /// Creates an interrupt that signals a fresh non-blocking EventFd (for an irqfd) until
    /// [`Interrupt::use_irq_line`] is called.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            line: OnceLock::new(),
            gsi: OnceLock::new(),
            vring_routed: AtomicBool::new(false),
        })
    }

    /// Records the VM and GSI the device is wired to, for
    /// [`Interrupt::route_used_queue_events`]. Returns false if one was already recorded.
    pub fn set_gsi(&self, vm: Arc<VmFd>, gsi: u32) -> bool {
        self.gsi.set((vm, gsi)).is_ok()
    }

    /// Registers each of `evts` as an irqfd on the device's GSI: a write to one raises the
    /// interrupt without husk-vmm, and the status register reports `INT_VRING` until
    /// [`Interrupt::unroute_used_queue_events`]. On an error nothing stays registered.
    pub fn route_used_queue_events(&self, evts: &[EventFd]) -> io::Result<()> {
        let (vm, gsi) = self.gsi.get().ok_or_else(|| io::Error::other("the device is not wired to a GSI"))?;
        for (i, evt) in evts.iter().enumerate() {
            if let Err(e) = vm.register_irqfd(evt, *gsi) {
                for done in &evts[..i] {
                    let _ = vm.unregister_irqfd(done, *gsi);
                }
                return Err(e.into());
            }
        }
        self.vring_routed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Undoes [`Interrupt::route_used_queue_events`] for the same `evts`: the EventFds no
    /// longer reach the guest, and the status register says only what was raised.
    pub fn unroute_used_queue_events(&self, evts: &[EventFd]) -> io::Result<()> {
        self.vring_routed.store(false, Ordering::SeqCst);
        let Some((vm, gsi)) = self.gsi.get() else {
            return Ok(());
        };
        let mut result = Ok(());
        for evt in evts {
            if let Err(e) = vm.unregister_irqfd(evt, *gsi) {
                result = Err(e.into());
            }
        }
        result
    }

    /// The EventFd signalled when no line is set: the VMM registers it as irqfd on the
    /// device's GSI.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }

    /// From now on, raises the interrupt with `KVM_IRQ_LINE` on `gsi` of `vm` instead of the
    /// EventFd. Returns false if a line was already set (the first one stays).
    pub fn use_irq_line(&self, vm: Arc<VmFd>, gsi: u32) -> bool {
        self.line.set(Line { vm, gsi, pulse: Mutex::new(()) }).is_ok()
    }

    /// Current interrupt status bits (with `INT_VRING` while EventFds are routed).
    pub fn status(&self) -> u32 {
        let routed = if self.vring_routed.load(Ordering::SeqCst) { INT_VRING } else { 0 };
        self.status.load(Ordering::SeqCst) | routed
    }

    /// Clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears all bits and the needs-reset state (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Marks the device as needing a reset and tells the driver with a configuration-change
    /// interrupt (virtio 1.x, 2.1.2: DEVICE_NEEDS_RESET).
    pub fn signal_needs_reset(&self) -> io::Result<()> {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config_change()
    }

    /// Whether the device needs a reset (until the driver resets it).
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Raises the interrupt for used buffers.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(INT_VRING)
    }

    /// Raises the interrupt for a configuration change.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.raise(INT_CONFIG)
    }

    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        match self.line.get() {
            // A pulse, as an irqfd gives: the pin is edge-triggered (the guest sees
            // `IO-APIC n-edge`), and the status register says why it fired.
            Some(line) => {
                let _pulse = line.pulse.lock().unwrap_or_else(|e| e.into_inner());
                line.vm.set_irq_line(line.gsi, true).map_err(io::Error::from)?;
                line.vm.set_irq_line(line.gsi, false).map_err(io::Error::from)
            }
            None => self.evt.write(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    #[test]
    fn a_line_replaces_the_eventfd_and_reports_kvm_errors() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let irq = Interrupt::new().unwrap();
        assert!(irq.use_irq_line(vm.clone(), 5));
        assert!(!irq.use_irq_line(vm, 6), "the first line stays");
        irq.signal_used_queue().unwrap();
        irq.signal_config_change().unwrap();
        assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
        assert!(irq.event().read().is_err(), "the eventfd is not signalled once a line is set");

        // KVM refuses a line on a VM without an in-kernel irqchip: the error comes back, the
        // status bit is still set for the guest to find.
        let bare = Arc::new(kvm.create_vm().unwrap());
        let irq = Interrupt::new().unwrap();
        irq.use_irq_line(bare, 5);
        assert!(irq.signal_used_queue().is_err());
        assert_eq!(irq.status(), INT_VRING);
    }

    #[test]
    fn routed_eventfds_raise_the_gsi_and_report_used_buffers_until_unrouted() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let evts = [EventFd::new(libc::EFD_NONBLOCK).unwrap(), EventFd::new(libc::EFD_NONBLOCK).unwrap()];

        let irq = Interrupt::new().unwrap();
        assert!(irq.route_used_queue_events(&evts).is_err(), "no GSI recorded yet");
        assert_eq!(irq.status(), 0);

        assert!(irq.set_gsi(vm.clone(), 5));
        assert!(!irq.set_gsi(vm.clone(), 6), "the first GSI stays");
        irq.route_used_queue_events(&evts).unwrap();
        assert_eq!(irq.status(), INT_VRING);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_VRING, "an acknowledgement does not hide the next routed interrupt");
        // KVM took the EventFds: registering one again on the same GSI is refused.
        assert!(vm.register_irqfd(&evts[1], 5).is_err());

        irq.unroute_used_queue_events(&evts).unwrap();
        assert_eq!(irq.status(), 0);
        vm.register_irqfd(&evts[1], 5).expect("unrouted EventFds are free again");
        vm.unregister_irqfd(&evts[1], 5).unwrap();

        // A failure part-way leaves nothing registered: the second EventFd is taken.
        vm.register_irqfd(&evts[1], 5).unwrap();
        assert!(irq.route_used_queue_events(&evts).is_err());
        assert_eq!(irq.status(), 0);
        vm.register_irqfd(&evts[0], 5).expect("the first EventFd was released after the failure");
    }

    #[test]
    fn needs_reset_raises_a_config_interrupt_and_lasts_until_cleared() {
        let irq = Interrupt::new().unwrap();
        assert!(!irq.needs_reset());
        irq.signal_needs_reset().unwrap();
        assert!(irq.needs_reset());
        assert_eq!(irq.status(), INT_CONFIG);
        assert_eq!(irq.event().read().unwrap(), 1);
        irq.ack(INT_CONFIG);
        assert!(irq.needs_reset(), "acknowledging the interrupt does not end it");
        irq.clear();
        assert!(!irq.needs_reset());
    }

    #[test]
    fn without_a_line_the_eventfd_is_signalled() {
        let irq = Interrupt::new().unwrap();
        irq.signal_used_queue().unwrap();
        assert_eq!(irq.event().read().unwrap(), 1);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), 0);
    }
}
