//! Register, MSR, FPU, LAPIC and page-table setup for entering Linux in 64-bit mode.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;
use crate::memory::GuestMemoryMmap;

/// Setting up a vCPU's registers failed.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM vCPU ioctl failed.
    #[error("KVM_{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Writing boot tables to guest memory failed.
    #[error("cannot write the {0} to guest memory")]
    Memory(&'static str, #[source] vm_memory::GuestMemoryError),
    /// KVM accepted fewer MSRs than given.
    #[error("KVM set only {set} of {wanted} boot MSRs")]
    Msrs {
        /// Written.
        set: usize,
        /// Asked.
        wanted: usize,
    },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from flags, base and limit (the usual packed layout).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

fn segment(entry: u64, index: u8) -> kvm_segment {
    let get = |shift: u32, bits: u32| ((entry >> shift) & ((1 << bits) - 1)) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let g = get(55, 1);
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: get(40, 4),
        present: get(47, 1),
        dpl: get(45, 2),
        db: get(54, 1),
        s: get(44, 1),
        l: get(53, 1),
        g,
        avl: get(52, 1),
        unusable: u8::from(get(47, 1) == 0),
        padding: 0,
    }
}

/// Writes the GDT and identity page tables, then sets the special registers of `vcpu` for
/// 64-bit long mode with paging.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd) -> Result<(), RegsError> {
    let gdt = [
        gdt_entry(0, 0, 0),            // null
        gdt_entry(0xa09b, 0, 0xfffff), // code, 64-bit
        gdt_entry(0xc093, 0, 0xfffff), // data
        gdt_entry(0x808b, 0, 0xfffff), // TSS
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64)).map_err(|e| RegsError::Memory("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START)).map_err(|e| RegsError::Memory("IDT", e))?;
    // Identity map the first GiB with 2 MiB pages: PML4[0] -> PDPT[0] -> PD[0..512].
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START)).map_err(|e| RegsError::Memory("PML4", e))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START)).map_err(|e| RegsError::Memory("PDPT", e))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8)).map_err(|e| RegsError::Memory("PD", e))?;
    }

    let mut sregs = vcpu.get_sregs().map_err(|e| RegsError::Kvm("GET_SREGS", e))?;
    let code = segment(gdt[1], 1);
    let data = segment(gdt[2], 2);
    let tss = segment(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(|e| RegsError::Kvm("SET_SREGS", e))
}

/// Sets the general registers: entry point, stack, and RSI pointing at the zero page.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let regs = kvm_regs { rflags: 0x2, rip: entry, rsp: BOOT_STACK_POINTER, rbp: BOOT_STACK_POINTER, rsi: ZERO_PAGE_START, ..Default::default() };
    vcpu.set_regs(&regs).map_err(|e| RegsError::Kvm("SET_REGS", e))
}

/// Sets a sane x87/SSE state.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(|e| RegsError::Kvm("SET_FPU", e))
}

/// Sets the boot MSRs: SYSENTER/SYSCALL cleared, TSC 0, fast strings on, MTRRs write-back.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entry = |index: u32, data: u64| kvm_msr_entry { index, data, ..Default::default() };
    let entries = [
        entry(0x174, 0),             // IA32_SYSENTER_CS
        entry(0x175, 0),             // IA32_SYSENTER_ESP
        entry(0x176, 0),             // IA32_SYSENTER_EIP
        entry(0xc000_0081, 0),       // STAR
        entry(0xc000_0082, 0),       // LSTAR
        entry(0xc000_0083, 0),       // CSTAR
        entry(0xc000_0102, 0),       // KERNEL_GS_BASE
        entry(0xc000_0084, 0),       // SYSCALL_MASK
        entry(0x10, 0),              // TSC
        entry(0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        entry(0x2ff, (1 << 11) | 6), // MTRR default type: enabled, write-back
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs { set: 0, wanted: entries.len() })?;
    let set = vcpu.set_msrs(&msrs).map_err(|e| RegsError::Kvm("SET_MSRS", e))?;
    if set != entries.len() {
        return Err(RegsError::Msrs { set, wanted: entries.len() });
    }
    Ok(())
}

/// Local APIC: LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as the MP table says.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const LVT0: usize = 0x350;
    const LVT1: usize = 0x360;
    let mut lapic = vcpu.get_lapic().map_err(|e| RegsError::Kvm("GET_LAPIC", e))?;
    let set = |regs: &mut [std::os::raw::c_char; 1024], off: usize, mode: u32| {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = regs[off + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            regs[off + i] = *x as std::os::raw::c_char;
        }
    };
    set(&mut lapic.regs, LVT0, 0b111);
    set(&mut lapic.regs, LVT1, 0b100);
    vcpu.set_lapic(&lapic).map_err(|e| RegsError::Kvm("SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode() {
        let code = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.l, code.present, code.type_, code.selector, code.g), (1, 1, 0xb, 8, 1));
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.l, data.db, data.type_, data.selector), (0, 1, 3, 16));
        assert_eq!(segment(0, 0).unusable, 1);
    }
}
