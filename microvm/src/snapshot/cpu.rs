//! One vCPU's KVM state: read on the vCPU's own thread while it is parked, written to a fresh
//! vCPU before it first runs. The order follows what KVM needs (as Firecracker and Cloud
//! Hypervisor do it): MP state first on save (reading it can change the LAPIC), vCPU events
//! last on restore (setting the registers clears pending exceptions), the TSC before the TSC
//! deadline.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// IA32_TSC_DEADLINE: written after the TSC, or the deadline is read against the old TSC.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// How many MSRs one KVM_GET_MSRS reads at most (kvm-bindings' `Msrs` bound).
const MSR_CHUNK: usize = 64;

/// Everything KVM holds for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// CPUID as set at boot.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Runnable, halted, ...
    pub mp_state: kvm_mp_state,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state.
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC.
    pub lapic: kvm_lapic_state,
    /// Model-specific registers, as (index, value), the TSC deadline last.
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts and NMIs.
    pub events: kvm_vcpu_events,
    /// TSC frequency in kHz, when KVM reports it.
    pub tsc_khz: Option<u32>,
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { op, source }
}

/// Reads the state of `fd`. `msr_list` is KVM's list of MSRs to save
/// ([`kvm_ioctls::Kvm::get_msr_index_list`]); MSRs KVM lists but cannot read on this host
/// are left out. Call on the vCPU's thread, after a KVM_RUN with `immediate_exit` set has
/// completed any port or MMIO read the guest was waiting for.
pub fn save(fd: &VcpuFd, msr_list: &[u32]) -> Result<VcpuState, SnapshotError> {
    let mp_state = fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let xsave = fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
    let xcrs = fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
    let debug_regs = fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let cpuid = fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES).map_err(kvm("KVM_GET_CPUID2"))?.as_slice().to_vec();
    let msrs = read_msrs(fd, msr_list)?;
    let events = fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState { cpuid, mp_state, regs, sregs, xsave, xcrs, debug_regs, lapic, msrs, events, tsc_khz })
}

/// Reads every MSR of `list` KVM can read, in chunks; one that fails is skipped (KVM reads a
/// chunk up to its first failure and says how many it read).
fn read_msrs(fd: &VcpuFd, list: &[u32]) -> Result<Vec<(u32, u64)>, SnapshotError> {
    let mut ordered: Vec<u32> = list.iter().copied().filter(|&i| i != MSR_IA32_TSC_DEADLINE).collect();
    if list.contains(&MSR_IA32_TSC_DEADLINE) {
        ordered.push(MSR_IA32_TSC_DEADLINE);
    }
    let mut out = Vec::with_capacity(ordered.len());
    let mut rest = ordered.as_slice();
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::Invalid("too many MSRs in one read".into()))?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend(msrs.as_slice()[..n.min(chunk.len())].iter().map(|e| (e.index, e.data)));
        // Entry n (if any) could not be read: skip it.
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(out)
}

/// Writes `state` to `fd`, a vCPU that has not run yet.
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<(), SnapshotError> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| SnapshotError::Invalid(format!("{} CPUID entries", state.cpuid.len())))?;
    fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    if let Some(khz) = state.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz).map_err(kvm("KVM_SET_TSC_KHZ"))?;
        }
    }
    fd.set_mp_state(state.mp_state).map_err(kvm("KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs).map_err(kvm("KVM_SET_REGS"))?;
    fd.set_sregs(&state.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    // SAFETY: the legacy 4 KiB area KVM_GET_XSAVE filled; it holds the whole state because
    // husk-vmm never asks for dynamically enabled XSTATE features (AMX) for its guests, the
    // case in which KVM would read past 4 KiB.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&state.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&state.debug_regs).map_err(kvm("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    for chunk in state.msrs.chunks(MSR_CHUNK) {
        let entries: Vec<kvm_msr_entry> = chunk.iter().map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() }).collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::Invalid("too many MSRs in one write".into()))?;
        let n = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if n < chunk.len() {
            return Err(SnapshotError::Msr(chunk[n].0));
        }
    }
    fd.set_vcpu_events(&state.events).map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    // Tells a guest using kvmclock that it was stopped (its soft-lockup watchdog then does not
    // fire); KVM refuses when the guest has not set kvmclock up, which is fine.
    let _ = fd.kvmclock_ctrl();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kvm_ioctls::{Kvm, VmFd};

    /// MSR_IA32_SYSENTER_CS: any value is valid, and KVM saves it.
    const SYSENTER_CS: u32 = 0x174;

    fn vcpu(kvm: &Kvm) -> (VmFd, VcpuFd) {
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let fd = vm.create_vcpu(0).unwrap();
        fd.set_cpuid2(&kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap()).unwrap();
        (vm, fd)
    }

    #[test]
    fn a_vcpu_continues_in_another_vm_with_its_registers_msrs_and_lapic() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let list = kvm.get_msr_index_list().unwrap().as_slice().to_vec();
        assert!(list.contains(&SYSENTER_CS), "KVM saves SYSENTER_CS");
        let (_vm, a) = vcpu(&kvm);
        let mut regs = a.get_regs().unwrap();
        regs.rax = 0x1234_5678;
        regs.rip = 0x10_0000;
        regs.rflags = 2;
        a.set_regs(&regs).unwrap();
        let entry = kvm_msr_entry { index: SYSENTER_CS, data: 0x10, ..Default::default() };
        assert_eq!(a.set_msrs(&Msrs::from_entries(&[entry]).unwrap()).unwrap(), 1);

        let saved = save(&a, &list).unwrap();
        assert!(saved.msrs.contains(&(SYSENTER_CS, 0x10)), "{:?}", saved.msrs);
        assert!(!saved.cpuid.is_empty());
        // Through the state file's encoding.
        let back: VcpuState = serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();

        let (_vm2, b) = vcpu(&kvm);
        restore(&b, &back).unwrap();
        let r = b.get_regs().unwrap();
        assert_eq!((r.rax, r.rip), (0x1234_5678, 0x10_0000));
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry { index: SYSENTER_CS, ..Default::default() }]).unwrap();
        assert_eq!(b.get_msrs(&mut msrs).unwrap(), 1);
        assert_eq!(msrs.as_slice()[0].data, 0x10);
        assert_eq!(b.get_lapic().unwrap().regs, saved.lapic.regs);
        assert_eq!(b.get_sregs().unwrap().cr0, saved.sregs.cr0);
    }

    #[test]
    fn an_msr_kvm_refuses_is_named() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let list = kvm.get_msr_index_list().unwrap().as_slice().to_vec();
        let (_vm, a) = vcpu(&kvm);
        let mut saved = save(&a, &list).unwrap();
        // An index no x86 CPU has.
        saved.msrs.push((0x4b56_4dff, 1));
        let (_vm2, b) = vcpu(&kvm);
        let e = restore(&b, &saved).unwrap_err().to_string();
        assert!(e.contains("0x4b564dff"), "{e}");
    }
}
