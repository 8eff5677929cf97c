//! Guest memory: the one type every part of husk-vmm uses to reach it.

use vm_memory::GuestAddress;

use crate::layout;

/// Guest memory of one microVM (vm-memory, anonymous mmap regions).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Guest memory could not be mapped.
#[derive(Debug, thiserror::Error)]
#[error("cannot map {size} bytes of guest memory")]
pub struct MemoryError {
    /// Requested size.
    pub size: u64,
    /// vm-memory's error.
    #[source]
    pub source: vm_memory::mmap::FromRangesError,
}

/// Maps `size` bytes of anonymous guest RAM laid out as [`layout::ram_regions`]. Pages are
/// only backed when the guest touches them.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let regions: Vec<(GuestAddress, usize)> = layout::ram_regions(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&regions).map_err(|source| MemoryError { size, source })
}
