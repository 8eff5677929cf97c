//! CPUID the guest sees: what KVM supports, plus the hypervisor bit and per-vCPU APIC ids,
//! minus VMX/SVM (no nested virtualization inside a container VM).

use kvm_bindings::CpuId;

/// Leaf 1 ECX bit 31: "running under a hypervisor". Without it the guest kernel believes it is
/// on bare metal, calibrates the TSC against the PIT and stalls under nested emulation.
pub const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX bit 5: VMX (Intel virtualization), not offered to guests.
pub const ECX_VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX bit 2: SVM (AMD virtualization), not offered to guests.
pub const ECX_SVM: u32 = 1 << 2;
/// Leaf 1 EDX bit 28: the logical-processor count in EBX[23:16] is valid.
pub const EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX bit 24: the local APIC timer has TSC-deadline mode. KVM emulates it
/// (`KVM_CAP_TSC_DEADLINE_TIMER`) but leaves the bit to the VMM. With it the guest kernel
/// programs its timer against the TSC and skips calibrating the APIC timer against the PIT
/// (two rounds of ten 100 Hz ticks at boot, and under nested emulation a calibration that
/// fails: "APIC timer disabled due to verification failure").
pub const ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Adjusts the supported CPUID for vCPU `index` of `count`; `tsc_deadline`: whether KVM
/// emulates the TSC-deadline timer.
pub fn filter(cpuid: &mut CpuId, index: u8, count: u8, tsc_deadline: bool) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ecx = (e.ecx | ECX_HYPERVISOR) & !ECX_VMX;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package,
                // EBX[15:8] CLFLUSH line size in quadwords.
                e.ebx = (u32::from(index) << 24) | (u32::from(count) << 16) | (8 << 8);
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            0x8000_0001 => e.ecx &= !ECX_SVM,
            // Extended topology: EDX is the x2APIC id of this vCPU.
            0xb | 0x1f => e.edx = u32::from(index),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn sets_hypervisor_bit_and_apic_id() {
        let entries = [
            kvm_cpuid_entry2 { function: 1, ecx: 0x21, ebx: 0xffff_ffff, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xb, index: 1, ..Default::default() },
            kvm_cpuid_entry2 { function: 0x8000_0001, ecx: 0xff, ..Default::default() },
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        filter(&mut c, 3, 4, false);
        let s = c.as_slice();
        assert_eq!(s[0].ecx, 0x8000_0001);
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_ne!(s[0].edx & EDX_HTT, 0);
        assert_eq!(s[1].edx, 3);
        assert_eq!(s[2].ecx & ECX_SVM, 0, "no nested virtualization");
    }

    #[test]
    fn tsc_deadline_mode_is_offered_only_where_kvm_emulates_it() {
        let entries = [kvm_cpuid_entry2 { function: 1, ecx: 0x21, ..Default::default() }];
        let mut with = CpuId::from_entries(&entries).unwrap();
        filter(&mut with, 0, 1, true);
        assert_ne!(with.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
        let mut without = CpuId::from_entries(&entries).unwrap();
        filter(&mut without, 0, 1, false);
        assert_eq!(without.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
    }
}
