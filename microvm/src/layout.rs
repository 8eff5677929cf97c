//! Guest physical address layout of a husk microVM (x86-64).
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)          0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  initial stack top        0x0000_9000  PML4, 0xa000 PDPT, 0xb000 PD
//! 0x0002_0000  kernel command line      0x0009_f000  MP table, floating pointer at 0x9fc00
//! 0x0010_0000  kernel (bzImage payload or ELF segments), initrd near the top of low RAM
//! 0xc000_0000 .. 4 GiB  hole: 0xd000_0000 virtio-mmio windows, 0xfec0_0000 IOAPIC,
//!                      0xfee0_0000 local APIC. RAM above 0xc000_0000 continues at 4 GiB.
//! ```

/// GDT used for 64-bit entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT (empty) used for 64-bit entry.
pub const BOOT_IDT_START: u64 = 0x520;
/// Linux boot_params ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_START: u64 = 0x9000;
/// Level-3 page table.
pub const PDPTE_START: u64 = 0xa000;
/// Level-2 page table (2 MiB pages identity-mapping the first GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Room for the command line (the kernel's COMMAND_LINE_SIZE is 2048 on x86; allow 4 KiB).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the reserved page at the end of base memory holding the MP configuration table.
pub const MPTABLE_START: u64 = 0x9f000;
/// MP floating pointer: in the last KiB of base memory, where Linux scans for it.
pub const MP_FLOATING_POINTER: u64 = 0x9fc00;
/// End of base (conventional) memory.
pub const EBDA_END: u64 = 0xa0000;
/// Where the kernel is loaded and high memory starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole; RAM above this goes to 4 GiB and up.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO hole.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// End (exclusive) of the range virtio-mmio windows are allocated from.
pub const VIRTIO_MMIO_END: u64 = 0xfec0_0000;
/// IOAPIC base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// First GSI handed to virtio devices (0-4 are PIT, keyboard, cascade, COM2, COM1).
pub const FIRST_DEVICE_GSI: u32 = 5;
/// Last GSI the in-kernel IOAPIC routes (24 pins).
pub const LAST_DEVICE_GSI: u32 = 23;
/// i8042 keyboard interrupt line.
pub const I8042_GSI: u32 = 1;
/// COM1 interrupt line.
pub const SERIAL_GSI: u32 = 4;
/// COM1 I/O ports.
pub const SERIAL_PORT: u64 = 0x3f8;
/// i8042 controller I/O ports (0x60 data ... 0x64 command).
pub const I8042_PORT: u64 = 0x60;

/// The RAM regions of a VM with `mem_size` bytes, split around the MMIO hole.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem_size - MMIO_GAP_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_skip_the_hole() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_regions(4 << 30), vec![(0, 0xc000_0000), (1 << 32, 1 << 30)]);
    }
}
