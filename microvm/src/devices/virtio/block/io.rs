//! Vectored I/O between the image file and guest buffers: a request's data moves with one
//! `preadv`/`pwritev` (per `IOV_MAX` segments) instead of one `read`/`write` per segment.
//!
//! Hand-written over `libc` because vm-memory only offers per-slice volatile reads and writes,
//! and `std`/`nix` vectored calls need `&[u8]` slices, which must not alias guest memory that
//! the guest may change at any time.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::{GuestAddress, GuestMemory, Permissions};

use crate::memory::GuestMemoryMmap;

/// Most iovecs one syscall takes (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Direction of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// File → guest buffers (a guest read).
    FromFile,
    /// Guest buffers → file (a guest write).
    ToFile,
}

/// Moves exactly the bytes of `segs` between guest memory and `file` at `offset`.
///
/// Fails if a segment is not in guest memory or the file ends early.
pub fn transfer(
    mem: &GuestMemoryMmap,
    file: &File,
    offset: u64,
    segs: &[(GuestAddress, usize)],
    dir: Dir,
) -> io::Result<()> {
    // Host views of every segment; a segment that spans two memory regions becomes two.
    let bad = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
    let access = match dir {
        Dir::FromFile => Permissions::Write,
        Dir::ToFile => Permissions::Read,
    };
    let mut slices = Vec::with_capacity(segs.len());
    for &(addr, len) in segs {
        for s in mem.get_slices(addr, len, access).map_err(bad)? {
            let s = s.map_err(bad)?;
            if !s.is_empty() {
                slices.push(s);
            }
        }
    }
    // The guards keep the host pointers valid while the syscalls run.
    let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
    let mut iovs: Vec<libc::iovec> = guards
        .iter()
        .zip(&slices)
        .map(|(g, s)| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: s.len(),
        })
        .collect();
    let fd = file.as_raw_fd();
    let mut pos = offset;
    let mut first = 0;
    while first < iovs.len() {
        let batch = &iovs[first..iovs.len().min(first + IOV_MAX)];
        let off = libc::off_t::try_from(pos)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
        let n = match dir {
            // SAFETY: every iovec points into a mapped guest memory region and stays within
            // it (vm-memory bounds-checked each slice, and the guards above keep the mapping
            // alive); the count is at most IOV_MAX. The kernel writes only inside them.
            Dir::FromFile => unsafe { libc::preadv(fd, batch.as_ptr(), batch.len() as i32, off) },
            // SAFETY: as above; the kernel only reads the buffers.
            Dir::ToFile => unsafe { libc::pwritev(fd, batch.as_ptr(), batch.len() as i32, off) },
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut done = n as usize;
        pos += done as u64;
        // Skip the iovecs that are complete; shorten the one that is partly done.
        while done > 0 && first < iovs.len() {
            let iov = &mut iovs[first];
            if done >= iov.iov_len {
                done -= iov.iov_len;
                first += 1;
            } else {
                iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(done).cast();
                iov.iov_len -= done;
                done = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x10000), 0x10000)])
            .unwrap()
    }

    #[test]
    fn reads_into_scattered_buffers_and_across_regions() {
        let m = mem();
        let mut f = tempfile();
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        f.write_all(&data).unwrap();
        // 100 bytes, then 1900 bytes crossing the region boundary at 0x10000, then 0 bytes.
        let segs = [
            (GuestAddress(0x100), 100),
            (GuestAddress(0x10000 - 900), 1900),
            (GuestAddress(0x5000), 0),
        ];
        transfer(&m, &f, 1000, &segs, Dir::FromFile).unwrap();
        let mut a = vec![0u8; 100];
        m.read_slice(&mut a, GuestAddress(0x100)).unwrap();
        assert_eq!(a, data[1000..1100]);
        let mut b = vec![0u8; 1900];
        m.read_slice(&mut b, GuestAddress(0x10000 - 900)).unwrap();
        assert_eq!(b, data[1100..3000]);
    }

    #[test]
    fn writes_from_scattered_buffers() {
        let m = mem();
        let mut f = tempfile();
        f.write_all(&[0u8; 64]).unwrap();
        m.write_slice(b"abcd", GuestAddress(0x200)).unwrap();
        m.write_slice(b"efgh", GuestAddress(0x8000)).unwrap();
        let segs = [(GuestAddress(0x200), 4), (GuestAddress(0x8000), 4)];
        transfer(&m, &f, 10, &segs, Dir::ToFile).unwrap();
        let mut out = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut out).unwrap();
        assert_eq!(&out[10..18], b"abcdefgh");
        assert_eq!(out.len(), 64);
    }

    #[test]
    fn short_file_and_bad_address_fail() {
        let m = mem();
        let mut f = tempfile();
        f.write_all(&[1u8; 10]).unwrap();
        let e = transfer(&m, &f, 0, &[(GuestAddress(0), 20)], Dir::FromFile).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(transfer(&m, &f, 0, &[(GuestAddress(0x1f000), 0x2000)], Dir::FromFile).is_err());
        assert!(transfer(&m, &f, 0, &[(GuestAddress(0x40000), 1)], Dir::ToFile).is_err());
    }

    fn tempfile() -> File {
        vmm_sys_util::tempfile::TempFile::new().unwrap().into_file()
    }
}
