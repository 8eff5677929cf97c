//! Guest memory: the one type every part of husk-vmm uses to reach it.
//!
//! RAM is one memfd, mapped shared: a vhost-user backend (virtiofsd) maps the same pages
//! from the file descriptors each region carries ([`vm_memory::GuestMemoryRegion::file_offset`]),
//! and a snapshot can save the memory from the file. The file is sealed against growing and
//! shrinking, so no process that holds it can make the VMM's mapping fault (SIGBUS).
//! A VM restored from a snapshot without a vhost-user device maps the snapshot's memory file
//! copy-on-write instead ([`map_private`]): the VMs restored from one template share its pages.
//!
//! Each region is mapped 2 MiB-aligned and marked `MADV_HUGEPAGE`, so that where the host
//! lets shared memory use transparent huge pages
//! (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` = `advise` or `always`) both the host
//! and KVM's nested page tables back it with 2 MiB pages. Debian's default there is `never`:
//! shared memory then takes one fault per 4 KiB page the guest touches first. Measured with
//! tests/vmm/bench.sh in one testbed run, interleaved, twice (start -> /init, vmlinux, as a
//! ratio to QEMU microvm's bzImage boot in the same pass): anonymous private memory with THP
//! 0.67 and 0.67, this memfd with `never` 0.91 and 0.78, with `advise` 0.62 and 0.56. Hosts
//! should set `advise`. vm-memory's own mmap cannot ask for an alignment, so the mapping is
//! made here and handed to it.

use std::fs::File;
use std::io;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::layout;

/// Guest memory of one microVM (vm-memory mmap regions; in a VM, shared mappings of one
/// memfd, each region with its file offset).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Alignment of each RAM mapping (the x86 huge page size).
const HUGE_PAGE: usize = 2 << 20;

/// Name of the memfd (shown in /proc/PID/maps as `/memfd:husk-guest-ram`).
const MEMFD_NAME: &str = "husk-guest-ram";

/// Guest memory could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} for {size} bytes of guest memory")]
pub struct MemoryError {
    /// Requested size.
    pub size: u64,
    /// The step that failed.
    pub what: &'static str,
    /// What failed.
    #[source]
    pub source: io::Error,
}

/// Creates `size` bytes of guest RAM laid out as [`layout::ram_regions`]: one sealed memfd
/// of `size` bytes, each region a shared mapping of its part of the file. Pages are only
/// backed when first touched (by the guest, the VMM or a vhost-user backend).
///
/// The mappings are never unmapped once this returns: guest memory lives as long as the
/// husk-vmm process (one process per VM), and device threads hold it until the process exits.
/// On error, whatever was mapped is unmapped again and the memfd is closed.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    create_shared_memory(size, MEMFD_NAME)
}

/// Memory laid out and mapped as guest RAM, in a memfd named `name` (`/memfd:NAME` in
/// /proc/PID/maps): guest RAM, or memory of husk-vmm's own that a vhost-user backend maps
/// (the virtio-fs relay's shadow rings).
pub fn create_shared_memory(size: u64, name: &str) -> Result<GuestMemoryMmap, MemoryError> {
    let err = |what, source| MemoryError { size, what, source };
    let file = Arc::new(create_memfd(size, name).map_err(|e| err("create the memfd", e))?);
    let mut mapped = Mappings(Vec::new());
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in layout::ram_regions(size) {
        let ulen = usize::try_from(len).map_err(|_| err("size a region", io::ErrorKind::InvalidInput.into()))?;
        let ptr = map_shared_aligned(&file, offset, ulen).map_err(|e| err("map the memfd", e))?;
        mapped.0.push((ptr, ulen));
        // SAFETY: `ptr..ptr+len` is a shared read-write mapping of the memfd at `offset`, made
        // just above and never unmapped after this function succeeds, so it stays valid for as
        // long as vm-memory uses it.
        let region = unsafe { describe(ptr, ulen, libc::MAP_SHARED, FileOffset::from_arc(file.clone(), offset), GuestAddress(start)) };
        regions.push(region.map_err(|(what, e)| err(what, e))?);
        offset += len;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| err("assemble the regions", io::Error::other(e)))?;
    mapped.0.clear();
    Ok(mem)
}

/// Maps `file` copy-on-write over the RAM of `mem`, each region at its own offset of the
/// file (the layout of RAM's memfd, which a snapshot's memory file keeps), and returns the
/// guest memory that describes the new mappings. The guest then reads the file's pages
/// where it has not written: every VM mapping the same file shares those pages with the
/// others in the host's page cache, and nothing is copied or zeroed before the guest runs;
/// a page the guest writes becomes this VM's own. `mem`'s memfd is left unused.
///
/// No other process can map the result (a private mapping cannot be shared): a vhost-user
/// device of such a VM relays its backend's requests through memory of its own. The file must
/// stay as it is while the VM runs (a snapshot's files are never rewritten; unlinking it
/// keeps the mapped pages).
///
/// Call it before anything holds `mem`'s regions (devices, vCPUs): they keep their
/// addresses, so KVM's memory slots stay valid, but the regions' description changes. On
/// error the VM must not run: a part of its RAM may already be remapped.
pub fn map_private(mem: &GuestMemoryMmap, file: Arc<File>) -> Result<GuestMemoryMmap, MemoryError> {
    use std::os::fd::AsRawFd;
    let size = mem.iter().map(|r| r.len()).sum();
    let err = |what, source| MemoryError { size, what, source };
    let mut regions = Vec::new();
    for r in mem.iter() {
        let offset = r.file_offset().map(|fo| fo.start()).ok_or_else(|| err("find a region's file offset", io::ErrorKind::InvalidInput.into()))?;
        let len = usize::try_from(r.len()).map_err(|_| err("size a region", io::ErrorKind::InvalidInput.into()))?;
        let off = libc::off_t::try_from(offset).map_err(|_| err("place a region in the file", io::ErrorKind::InvalidInput.into()))?;
        let ptr = r.as_ptr();
        // SAFETY: `ptr..ptr+len` is this region's own mapping (made by create_guest_memory and
        // never unmapped), which MAP_FIXED replaces in place with the file's pages. Nothing
        // runs in the guest yet and no device holds the region (the caller's contract), so no
        // reference into the old pages survives; KVM follows the new pages at that address.
        let got = unsafe {
            libc::mmap(ptr.cast(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE, file.as_raw_fd(), off)
        };
        if got == libc::MAP_FAILED {
            return Err(err("map the memory file copy-on-write", io::Error::last_os_error()));
        }
        // SAFETY: `ptr..ptr+len` is the private mapping of `file` at `offset` made just above,
        // at the address the old region had, and is never unmapped (as create_guest_memory's).
        let region = unsafe { describe(ptr, len, libc::MAP_PRIVATE, FileOffset::from_arc(file.clone(), offset), r.start_addr()) };
        regions.push(region.map_err(|(what, e)| err(what, e))?);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| err("assemble the regions", io::Error::other(e)))
}

/// The region of guest RAM at `start` that the read-write `sharing` (MAP_SHARED or
/// MAP_PRIVATE) mapping of `file` at `ptr..ptr+len` is; on error, the step that failed.
///
/// # Safety
/// `ptr..ptr+len` must be that mapping, and stay mapped for as long as the region is used.
unsafe fn describe(ptr: *mut u8, len: usize, sharing: i32, file: FileOffset, start: GuestAddress) -> Result<GuestRegionMmap, (&'static str, io::Error)> {
    // SAFETY: the caller's contract: a live read-write mapping of `file` of `len` bytes at `ptr`.
    let builder = unsafe {
        MmapRegionBuilder::<()>::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(sharing | libc::MAP_NORESERVE)
            .with_file_offset(file)
            .with_raw_mmap_pointer(ptr)
    };
    let mapping = builder.build().map_err(|e| ("describe a region", io::Error::other(e)))?;
    GuestRegionMmap::new(mapping, start).ok_or_else(|| ("place a region", io::Error::other(format!("RAM region at {:#x} overflows", start.0))))
}

/// Whether `region` is a copy-on-write view of its file ([`map_private`]): its writes reach
/// no file, and no other process can map them.
pub fn is_private(region: &GuestRegionMmap) -> bool {
    region.file_offset().is_some() && region.flags() & libc::MAP_PRIVATE != 0
}

/// A memfd of `size` bytes, sealed so that it can neither grow nor shrink.
fn create_memfd(size: u64, name: &str) -> io::Result<File> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let file = File::from(fd);
    file.set_len(size)?;
    fcntl(&file, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL))?;
    Ok(file)
}

/// Mappings made so far, unmapped if guest memory cannot be completed.
struct Mappings(Vec<(*mut u8, usize)>);

impl Drop for Mappings {
    fn drop(&mut self) {
        for &(ptr, len) in &self.0 {
            // SAFETY: a mapping made by `map_shared_aligned` that nothing refers to (guest
            // memory was not handed out).
            unsafe { libc::munmap(ptr.cast(), len) };
        }
    }
}

/// Maps `len` bytes of `file` at `offset`, shared, at a 2 MiB-aligned address, and asks for
/// huge pages.
fn map_shared_aligned(file: &File, offset: u64, len: usize) -> io::Result<*mut u8> {
    use std::os::fd::AsRawFd;
    let total = len.checked_add(HUGE_PAGE).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a fresh inaccessible reservation at an address of the kernel's choosing; it
    // touches no existing memory.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), total, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = raw as usize;
    let aligned = base.next_multiple_of(HUGE_PAGE);
    // SAFETY: `aligned..aligned+len` lies inside the reservation made above, which only this
    // function knows of; MAP_FIXED replaces that part of it with the file mapping.
    let got = unsafe {
        libc::mmap(
            aligned as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            off,
        )
    };
    if got == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        // SAFETY: the reservation made above, which nothing refers to.
        unsafe { libc::munmap(raw, total) };
        return Err(e);
    }
    let head = aligned - base;
    let tail = total - head - len;
    // SAFETY: both ranges lie inside the reservation made above, outside `aligned..aligned+len`,
    // and nothing refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    // SAFETY: advice on our own mapping; failure (no THP for shared memory here) only costs
    // speed.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    Ok(aligned as *mut u8)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::fd::AsRawFd;

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

    /// What a vhost-user backend does: map the region's file at its offset, in another
    /// mapping. Both must see the same bytes, in both directions, across the MMIO hole.
    #[test]
    fn a_second_mapping_of_each_region_file_shares_the_pages() {
        // 3.5 GiB: two regions, below and above the MMIO hole. Nothing is touched but a few
        // pages, so this costs no memory.
        let size = 0xe000_0000u64;
        let mem = create_guest_memory(size).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        let mut expected_offset = 0;
        for (i, r) in regions.iter().enumerate() {
            let fo = r.file_offset().expect("every region names its file");
            assert_eq!(fo.start(), expected_offset, "regions are consecutive parts of one file");
            expected_offset += r.len();
            let last = r.start_addr().0 + r.len() - 8;
            mem.write_obj(0x1111_0000_u64 + i as u64, GuestAddress(last)).unwrap();
            let page = 4096usize;
            let file_off = fo.start() + r.len() - page as u64;
            // SAFETY: a fresh shared mapping of one page of the memfd, unmapped below.
            let p = unsafe {
                libc::mmap(std::ptr::null_mut(), page, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fo.file().as_raw_fd(), file_off as libc::off_t)
            };
            assert_ne!(p, libc::MAP_FAILED);
            // SAFETY: the last 8 bytes of the page mapped above.
            let word = unsafe { p.cast::<u8>().add(page - 8).cast::<u64>() };
            // SAFETY: as above; plain reads and writes of our own mapping.
            unsafe {
                assert_eq!(word.read_volatile(), 0x1111_0000 + i as u64);
                word.write_volatile(0x2222);
                libc::munmap(p, page);
            }
            assert_eq!(mem.read_obj::<u64>(GuestAddress(last)).unwrap(), 0x2222);
        }
        assert_eq!(expected_offset, size);
    }

    #[test]
    fn the_memfd_cannot_be_resized() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let r = mem.iter().next().unwrap();
        let file = r.file_offset().unwrap().file();
        assert_eq!(file.metadata().unwrap().len(), 16 << 20);
        assert_eq!(file.set_len(4096).unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert_eq!(file.set_len(32 << 20).unwrap_err().raw_os_error(), Some(libc::EPERM));
    }
}
