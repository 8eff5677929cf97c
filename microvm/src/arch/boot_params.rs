//! The Linux "zero page" (struct boot_params): e820 map, command line, initrd.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;
use crate::memory::GuestMemoryMmap;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// The zero page could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// More e820 entries than the zero page holds.
    #[error("too many e820 entries")]
    E820Full,
    /// Writing guest memory failed.
    #[error("cannot write boot_params to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

/// What goes into the zero page.
pub struct BootInfo {
    /// The bzImage's setup header as loaded, or none for an ELF kernel.
    pub setup_header: Option<setup_header>,
    /// Length of the command line at [`CMDLINE_START`], without the NUL.
    pub cmdline_len: u32,
    /// Initrd address and size.
    pub initrd: Option<(u64, u32)>,
    /// Guest RAM size.
    pub mem_size: u64,
}

fn add_e820(p: &mut boot_params, addr: u64, size: u64, kind: u32) -> Result<(), BootParamsError> {
    let i = usize::from(p.e820_entries);
    let slot = p.e820_table.get_mut(i).ok_or(BootParamsError::E820Full)?;
    *slot = boot_e820_entry { addr, size, r#type: kind };
    p.e820_entries += 1;
    Ok(())
}

/// Builds the boot_params structure.
pub fn build(info: &BootInfo) -> Result<boot_params, BootParamsError> {
    let mut p = boot_params::default();
    match info.setup_header {
        Some(h) => p.hdr = h,
        None => {
            p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            p.hdr.header = KERNEL_HDR_MAGIC;
            p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
        }
    }
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.cmd_line_ptr = CMDLINE_START as u32;
    p.hdr.cmdline_size = info.cmdline_len;
    if let Some((addr, size)) = info.initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size;
    }
    add_e820(&mut p, 0, MPTABLE_START, E820_RAM)?;
    add_e820(&mut p, MPTABLE_START, EBDA_END - MPTABLE_START, E820_RESERVED)?;
    for (start, len) in ram_regions(info.mem_size) {
        let (s, l) = if start == 0 { (HIMEM_START, len - HIMEM_START) } else { (start, len) };
        add_e820(&mut p, s, l, E820_RAM)?;
    }
    Ok(p)
}

/// Builds and writes the zero page at [`ZERO_PAGE_START`].
pub fn write(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), BootParamsError> {
    let p = build(info)?;
    mem.write_obj(p, GuestAddress(ZERO_PAGE_START)).map_err(BootParamsError::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_and_reserves_mptable() {
        let p = build(&BootInfo { setup_header: None, cmdline_len: 10, initrd: Some((0x200_0000, 4096)), mem_size: 5 << 30 }).unwrap();
        let e: Vec<_> = p.e820_table[..usize::from(p.e820_entries)].iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            e,
            vec![
                (0, 0x9f000, E820_RAM),
                (0x9f000, 0x1000, E820_RESERVED),
                (0x10_0000, 0xc000_0000 - 0x10_0000, E820_RAM),
                (1 << 32, (5 << 30) - 0xc000_0000, E820_RAM),
            ]
        );
        let (hdr, img, size, cl) = (p.hdr.header, p.hdr.ramdisk_image, p.hdr.ramdisk_size, p.hdr.cmd_line_ptr);
        assert_eq!((hdr, img, size, cl), (KERNEL_HDR_MAGIC, 0x200_0000, 4096, CMDLINE_START as u32));
    }
}
