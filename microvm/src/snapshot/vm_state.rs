//! The VM-wide KVM state: the in-kernel interrupt controllers (two PICs and the IOAPIC), the
//! PIT and the kvmclock.

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// The in-kernel devices' state of one VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    /// PIC master, PIC slave, IOAPIC, in that order.
    pub irqchips: Vec<kvm_irqchip>,
    /// The i8254 timer.
    pub pit: kvm_pit_state2,
    /// kvmclock's time.
    pub clock: kvm_clock_data,
}

const CHIPS: [u32; 3] = [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC];

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { op, source }
}

/// Reads the state of `vm` (every vCPU paused).
pub fn save(vm: &VmFd) -> Result<VmState, SnapshotError> {
    let mut irqchips = Vec::with_capacity(CHIPS.len());
    for chip_id in CHIPS {
        let mut c = kvm_irqchip { chip_id, ..Default::default() };
        vm.get_irqchip(&mut c).map_err(kvm("KVM_GET_IRQCHIP"))?;
        irqchips.push(c);
    }
    let pit = vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?;
    let clock = vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
    Ok(VmState { irqchips, pit, clock })
}

/// Writes `state` to `vm`, whose irqchip and PIT exist, before its vCPUs run.
///
/// The clock continues from the saved time: its flags are cleared, so KVM does not move it by
/// the wall time that passed since the save (KVM_CLOCK_REALTIME), and the guest's monotonic
/// clocks do not jump by the snapshot's age.
pub fn restore(vm: &VmFd, state: &VmState) -> Result<(), SnapshotError> {
    if state.irqchips.len() != CHIPS.len() || state.irqchips.iter().zip(CHIPS).any(|(c, id)| c.chip_id != id) {
        return Err(SnapshotError::Invalid("the interrupt controllers are not PIC master, PIC slave and IOAPIC".into()));
    }
    for c in &state.irqchips {
        vm.set_irqchip(c).map_err(kvm("KVM_SET_IRQCHIP"))?;
    }
    vm.set_pit2(&state.pit).map_err(kvm("KVM_SET_PIT2"))?;
    let clock = kvm_clock_data { clock: state.clock.clock, ..Default::default() };
    vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_pit_config;
    use kvm_ioctls::Kvm;

    fn vm(kvm: &Kvm) -> VmFd {
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(kvm_pit_config::default()).unwrap();
        vm
    }

    #[test]
    fn the_clock_and_the_interrupt_controllers_carry_over_to_another_vm() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let a = vm(&kvm);
        let clock = kvm_clock_data { clock: 5_000_000_000, ..Default::default() };
        a.set_clock(&clock).unwrap();
        let saved = save(&a).unwrap();
        let back: VmState = serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
        let b = vm(&kvm);
        restore(&b, &back).unwrap();
        let now = b.get_clock().unwrap().clock;
        // Continues from the saved time, not from the new VM's zero nor the wall clock's.
        assert!(now >= saved.clock.clock && now < saved.clock.clock + 60_000_000_000, "{now} vs {}", saved.clock.clock);
        let mut ioapic = kvm_irqchip { chip_id: KVM_IRQCHIP_IOAPIC, ..Default::default() };
        b.get_irqchip(&mut ioapic).unwrap();
        // SAFETY: reading the IOAPIC member of the union KVM just filled for chip IOAPIC.
        let (got, want) = unsafe { (ioapic.chip.ioapic.redirtbl[0].bits, saved.irqchips[2].chip.ioapic.redirtbl[0].bits) };
        assert_eq!(got, want);
    }

    #[test]
    fn a_state_without_the_three_interrupt_controllers_is_refused() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let mut saved = save(&vm(&kvm)).unwrap();
        saved.irqchips.pop();
        let e = restore(&vm(&kvm), &saved).unwrap_err().to_string();
        assert!(e.contains("IOAPIC"), "{e}");
    }
}
