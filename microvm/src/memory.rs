//! Guest memory: the one type every part of husk-vmm uses to reach it.
//!
//! RAM is mapped 2 MiB-aligned and marked `MADV_HUGEPAGE`, so that (with transparent huge
//! pages) both the host and KVM's nested page tables back it with 2 MiB pages: a guest that
//! touches fresh memory (its page cache filling during a disk read, say) takes one fault per
//! 2 MiB instead of one per 4 KiB. vm-memory's own mmap cannot ask for an alignment, so the
//! mapping is made here and handed to it.

use std::io;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestRegionMmap};

use crate::layout;

/// Guest memory of one microVM (vm-memory, anonymous mmap regions).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Alignment of each RAM mapping (the x86 huge page size).
const HUGE_PAGE: usize = 2 << 20;

/// Guest memory could not be mapped.
#[derive(Debug, thiserror::Error)]
#[error("cannot map {size} bytes of guest memory")]
pub struct MemoryError {
    /// Requested size.
    pub size: u64,
    /// What failed.
    #[source]
    pub source: io::Error,
}

/// Maps `size` bytes of anonymous guest RAM laid out as [`layout::ram_regions`]. Pages are
/// only backed when the guest touches them.
///
/// The mappings are never unmapped: guest memory lives as long as the husk-vmm process (one
/// process per VM), and device threads hold it until the process exits.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let err = |source| MemoryError { size, source };
    let mut regions = Vec::new();
    for (start, len) in layout::ram_regions(size) {
        let len = usize::try_from(len).map_err(|_| err(io::ErrorKind::InvalidInput.into()))?;
        let ptr = map_aligned(len).map_err(err)?;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: `ptr..ptr+len` is a private anonymous read-write mapping made just above
        // and never unmapped, so it stays valid for as long as vm-memory uses it.
        let builder = unsafe {
            MmapRegionBuilder::<()>::new(len)
                .with_mmap_prot(prot)
                .with_mmap_flags(flags)
                .with_raw_mmap_pointer(ptr)
        };
        let mapping = builder
            .build()
            .map_err(|e| err(io::Error::other(e)))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| err(io::Error::other(format!("RAM region at {start:#x} overflows"))))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| err(io::Error::other(e)))
}

/// Maps `len` bytes of anonymous memory at a 2 MiB-aligned address and asks for huge pages.
fn map_aligned(len: usize) -> io::Result<*mut u8> {
    let total = len
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; it touches no
    // existing memory.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = raw as usize;
    let aligned = base.next_multiple_of(HUGE_PAGE);
    let head = aligned - base;
    let tail = total - head - len;
    // SAFETY: both ranges lie inside the mapping made above, outside `aligned..aligned+len`,
    // and nothing refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    // SAFETY: advice on our own mapping; failure (no THP in this kernel) only costs speed.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    Ok(aligned as *mut u8)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn ram_is_huge_page_aligned_and_usable() {
        let mem = create_guest_memory(64 << 20).unwrap();
        for r in mem.iter() {
            let host = r.get_host_address(vm_memory::MemoryRegionAddress(0)).unwrap();
            assert_eq!(host as usize % HUGE_PAGE, 0);
        }
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 << 20);
        mem.write_obj(0xdead_beef_u32, GuestAddress((64 << 20) - 4)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress((64 << 20) - 4)).unwrap(), 0xdead_beef);
        assert!(mem.read_obj::<u32>(GuestAddress(64 << 20)).is_err());
    }
}
