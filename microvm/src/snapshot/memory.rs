//! Guest RAM in a snapshot: a sparse file laid out as RAM's memfd (the same offsets), holding
//! only the pages that are not zero. Saving walks the memfd's data extents (`SEEK_DATA`), so
//! pages the guest never touched or the balloon gave back are not even read; a restored VM
//! maps the file copy-on-write ([`map`]).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::unistd::{lseek, Whence};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::SnapshotError;
use crate::memory::GuestMemoryMmap;

/// Pages are compared and written in this unit.
const PAGE: usize = 4096;
/// Bytes read at a time when saving.
const CHUNK: usize = 1 << 20;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io { op, path: path.to_path_buf(), source }
}

/// The data extents of `file` within `start..end`, as (offset, length).
fn data_extents(file: &File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let off = i64::try_from(pos).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let data = match lseek(file.as_fd(), off, Whence::SeekData) {
            Ok(d) => d as u64,
            // No data after `pos`.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            break;
        }
        let hole = lseek(file.as_fd(), data as i64, Whence::SeekHole).map_err(std::io::Error::from)? as u64;
        let stop = hole.min(end);
        out.push((data, stop - data));
        pos = stop;
    }
    Ok(out)
}

/// The memfd behind `mem`'s regions (they all share one) and the total size.
fn memfd(mem: &GuestMemoryMmap) -> Result<(&File, u64), SnapshotError> {
    let mut file = None;
    let mut size = 0u64;
    for r in mem.iter() {
        if crate::memory::is_private(r) {
            return Err(SnapshotError::Invalid(COW_UNSAVED.into()));
        }
        let fo = r.file_offset().ok_or_else(|| SnapshotError::Invalid("guest memory is not file-backed".into()))?;
        file.get_or_insert(fo.file());
        size = size.max(fo.start() + r.len());
    }
    file.map(|f| (f, size)).ok_or_else(|| SnapshotError::Invalid("no guest memory".into()))
}

/// Writes the non-zero pages of `mem` to a new file at `path`; returns the bytes written.
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> Result<u64, SnapshotError> {
    let (src, size) = memfd(mem)?;
    let out = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io("create", path))?;
    out.set_len(size).map_err(io("size", path))?;
    let extents = data_extents(src, 0, size).map_err(io("find the data of guest memory for", path))?;
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    for (start, len) in extents {
        let mut off = start;
        while off < start + len {
            let n = ((start + len - off) as usize).min(CHUNK);
            src.read_exact_at(&mut buf[..n], off).map_err(io("read guest memory for", path))?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    out.write_all_at(page, off + (i * PAGE) as u64).map_err(io("write", path))?;
                    written += page.len() as u64;
                }
            }
            off += n as u64;
        }
    }
    out.sync_all().map_err(io("sync", path))?;
    Ok(written)
}

/// Why the memory of a VM restored copy-on-write ([`map`]) is not saved: it is not in one
/// file (the pages it wrote are this process's own, the rest is its snapshot's file).
pub const COW_UNSAVED: &str = "this VM's memory is a copy-on-write view of the snapshot it was restored from, which cannot be saved again; snapshot a booted VM, or one restored with a virtio-fs device";

/// Opens the memory file at `path` and checks that it is as large as `mem`.
fn open_sized(mem: &GuestMemoryMmap, path: &Path) -> Result<(File, u64), SnapshotError> {
    let size: u64 = mem.iter().map(|r| r.len()).sum();
    let src = File::open(path).map_err(io("open", path))?;
    let len = src.metadata().map_err(io("stat", path))?.len();
    if len != size {
        return Err(SnapshotError::Invalid(format!("{} holds {len} bytes of memory, the VM has {size}", path.display())));
    }
    Ok((src, size))
}

/// The guest memory of a VM restored from the file at `path` copy-on-write: the file mapped
/// privately over `mem`'s RAM ([`crate::memory::map_private`]). Nothing is copied; the VMs
/// restored from one snapshot share the pages none of them wrote. No other process can map
/// it (a vhost-user device relays instead); its memory cannot be saved again
/// ([`COW_UNSAVED`]).
pub fn map(mem: &GuestMemoryMmap, path: &Path) -> Result<GuestMemoryMmap, SnapshotError> {
    let (src, _) = open_sized(mem, path)?;
    crate::memory::map_private(mem, std::sync::Arc::new(src)).map_err(|source| SnapshotError::Map { path: path.to_path_buf(), source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::memory::create_guest_memory;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn saved_memory_is_sparse_and_maps_byte_for_byte() {
        let dir = std::env::temp_dir().join(format!("husk-snap-mem-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mem = create_guest_memory(64 << 20).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[7u8; 8192], GuestAddress(40 << 20)).unwrap();
        // Touched but zero: not written.
        mem.write_slice(&[0u8; 4096], GuestAddress(50 << 20)).unwrap();
        let path = dir.join("memory");
        assert_eq!(save(&mem, &path).unwrap(), 3 * 4096);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 20);
        // A second save to the same path is refused, not overwritten.
        assert!(save(&mem, &path).is_err());

        let fresh = map(&create_guest_memory(64 << 20).unwrap(), &path).unwrap();
        let mut got = [0u8; 5];
        fresh.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(&got, b"hello");
        let mut big = vec![0u8; 8192];
        fresh.read_slice(&mut big, GuestAddress(40 << 20)).unwrap();
        assert!(big.iter().all(|&b| b == 7));

        let small = create_guest_memory(32 << 20).unwrap();
        let e = map(&small, &path).unwrap_err().to_string();
        assert!(e.contains("the VM has 33554432"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn file_bytes(path: &Path, at: u64, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        File::open(path).unwrap().read_exact_at(&mut buf, at).unwrap();
        buf
    }

    #[test]
    fn mapped_memory_reads_the_snapshot_and_keeps_its_writes_to_itself() {
        let dir = std::env::temp_dir().join(format!("husk-snap-map-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // 3.5 GiB: two regions around the MMIO hole, each at its own offset of the file.
        let size = 0xe000_0000u64;
        let mem = create_guest_memory(size).unwrap();
        let high = GuestAddress(1 << 32);
        mem.write_slice(b"low", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"high", high).unwrap();
        let path = dir.join("memory");
        save(&mem, &path).unwrap();
        let high_off = mem.find_region(high).unwrap().file_offset().unwrap().start();

        let a = map(&create_guest_memory(size).unwrap(), &path).unwrap();
        let b = map(&create_guest_memory(size).unwrap(), &path).unwrap();
        assert!(a.iter().all(crate::memory::is_private));
        for m in [&a, &b] {
            let mut got = [0u8; 4];
            m.read_slice(&mut got[..3], GuestAddress(0x1000)).unwrap();
            assert_eq!(&got[..3], b"low");
            m.read_slice(&mut got, high).unwrap();
            assert_eq!(&got, b"high");
        }
        // A write stays in the VM that made it: neither the file nor the other VM sees it.
        a.write_slice(b"mine", high).unwrap();
        a.write_slice(b"new", GuestAddress(8 << 20)).unwrap();
        let mut got = [0u8; 4];
        a.read_slice(&mut got, high).unwrap();
        assert_eq!(&got, b"mine");
        b.read_slice(&mut got, high).unwrap();
        assert_eq!(&got, b"high");
        assert_eq!(file_bytes(&path, high_off, 4), b"high");
        assert_eq!(file_bytes(&path, 8 << 20, 3), [0, 0, 0]);

        // Its memory is not one file any more: saving it is refused, and nothing is written.
        let again = dir.join("again");
        let e = save(&a, &again).unwrap_err().to_string();
        assert!(e.contains("copy-on-write"), "{e}");
        assert!(!again.exists());
        // A file of another size is refused.
        let e = map(&create_guest_memory(32 << 20).unwrap(), &path).unwrap_err().to_string();
        assert!(e.contains("the VM has 33554432"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
