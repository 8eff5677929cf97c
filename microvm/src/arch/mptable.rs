//! Intel MultiProcessor Specification 1.4 table, so an SMP guest without ACPI finds its CPUs,
//! its IOAPIC and how ISA interrupts are routed.
//!
//! The husk guest kernel has no ACPI (it would cost boot time and size), and without ACPI or
//! an MP table Linux only brings up the boot CPU. No maintained crates.io crate writes an MP
//! table, so it is built here byte by byte (little endian, as the spec lays it out), which
//! also keeps it free of `unsafe`.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{APIC_START, IOAPIC_START, MPTABLE_START, MP_FLOATING_POINTER};
use crate::memory::GuestMemoryMmap;

/// IOAPIC pins routed 1:1 from ISA/GSI numbers.
pub const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

/// The MP table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// Too many vCPUs for the space reserved for the table (or for 8-bit APIC ids).
    #[error("an MP table for {0} vCPUs does not fit")]
    TooManyCpus(u8),
    /// Writing guest memory failed.
    #[error("cannot write the MP table to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the configuration table (header + entries) for `cpus` CPUs, to live at `addr`.
pub fn config_table(cpus: u8) -> Vec<u8> {
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        entries.push(0); // processor entry
        entries.push(id); // local APIC id
        entries.push(APIC_VERSION);
        entries.push(if id == 0 { 0x3 } else { 0x1 }); // enabled, bootstrap processor
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // CPU signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]); // bus entry, bus 0
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic_id = cpus; // first id after the CPUs
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS {
        // I/O interrupt: INT, bus-default polarity/trigger, ISA irq -> same IOAPIC pin.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts to every local APIC: LINT0 ExtINT, LINT1 NMI.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let len = (44 + entries.len()) as u16;
    let mut t = Vec::with_capacity(usize::from(len));
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&len.to_le_bytes());
    t.push(4); // spec revision 1.4
    t.push(0); // checksum, below
    t.extend_from_slice(b"HUSK    ");
    t.extend_from_slice(b"HUSK-VMM    ");
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&count.to_le_bytes());
    t.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    t.push(0); // extended table checksum
    t.push(0);
    t.extend_from_slice(&entries);
    t[7] = checksum(&t);
    t
}

/// Builds the 16-byte floating pointer that points at a config table at `table_addr`.
pub fn floating_pointer(table_addr: u32) -> [u8; 16] {
    let mut f = [0u8; 16];
    f[..4].copy_from_slice(b"_MP_");
    f[4..8].copy_from_slice(&table_addr.to_le_bytes());
    f[8] = 1; // length in 16-byte units
    f[9] = 4; // spec revision 1.4
              // f[11] feature1 = 0: a configuration table is present; f[12] bit 7 = 0: virtual wire.
    f[10] = checksum(&f);
    f
}

/// Writes the MP table for `cpus` vCPUs to guest memory.
pub fn setup_mptable(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MpTableError> {
    let table = config_table(cpus);
    if cpus == 0 || u16::from(cpus) + 1 > 0xff || MPTABLE_START + table.len() as u64 > MP_FLOATING_POINTER {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    mem.write_slice(&table, GuestAddress(MPTABLE_START)).map_err(MpTableError::Memory)?;
    let fp = floating_pointer(MPTABLE_START as u32);
    mem.write_slice(&fp, GuestAddress(MP_FLOATING_POINTER)).map_err(MpTableError::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn table_checksums_and_counts() {
        for cpus in [1u8, 2, 64] {
            let t = config_table(cpus);
            assert_eq!(&t[..4], b"PCMP");
            assert_eq!(sum(&t), 0, "config table checksum");
            assert_eq!(u16::from_le_bytes([t[4], t[5]]) as usize, t.len());
            let count = u16::from_le_bytes([t[34], t[35]]);
            assert_eq!(count, u16::from(cpus) + 1 + 1 + u16::from(IOAPIC_PINS) + 2);
            // Processor entries: ids 0..cpus, only the first is the BSP.
            let procs: Vec<_> = (0..cpus as usize).map(|i| &t[44 + 20 * i..44 + 20 * (i + 1)]).collect();
            for (i, p) in procs.iter().enumerate() {
                assert_eq!((p[0], p[1]), (0, i as u8));
                assert_eq!(p[3] & 2 != 0, i == 0);
            }
        }
        let f = floating_pointer(0x9f000);
        assert_eq!(sum(&f), 0);
        assert_eq!(u32::from_le_bytes([f[4], f[5], f[6], f[7]]), 0x9f000);
    }

    #[test]
    fn written_to_guest_memory_and_bounded() {
        let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
        setup_mptable(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MP_FLOATING_POINTER)).unwrap();
        assert_eq!(&sig, b"_MP_");
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(&sig, b"PCMP");
        setup_mptable(&mem, 64).unwrap();
        assert!(matches!(setup_mptable(&mem, 0), Err(MpTableError::TooManyCpus(0))));
        assert!(matches!(setup_mptable(&mem, 255), Err(MpTableError::TooManyCpus(255))));
    }
}
