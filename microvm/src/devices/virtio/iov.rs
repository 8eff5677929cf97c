//! Vectored I/O straight between guest buffers and host fds: a disk request moves with one
//! `preadv`/`pwritev` (per `IOV_MAX` segments), a transmitted frame with one `writev`, instead
//! of one call per segment or a copy through a bounce buffer.
//!
//! Hand-written over `libc` because vm-memory only offers per-slice volatile reads and writes,
//! and `std`/`nix` vectored calls need `&[u8]` slices, which must not alias guest memory that
//! the guest may change at any time.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::{GuestAddress, GuestMemory, Permissions, VolatileSlice};

use crate::memory::GuestMemoryMmap;

/// Most iovecs one syscall takes (Linux `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// Direction of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Host fd → guest buffers (the device writes guest memory).
    ToGuest,
    /// Guest buffers → host fd (the device reads guest memory).
    FromGuest,
}

/// Host iovecs over guest buffers, valid while `self` lives.
pub struct GuestIovecs<'m> {
    // Keep the slices (they borrow guest memory) and their pointer guards alive for as long
    // as the iovecs point into them.
    slices: Vec<VolatileSlice<'m, ()>>,
    _guards: Vec<PtrGuardMut>,
    iovs: Vec<libc::iovec>,
}

impl<'m> GuestIovecs<'m> {
    /// Host views of every segment; a segment that spans two memory regions becomes two,
    /// empty ones are left out. Fails if a segment is not in guest memory.
    pub fn new(mem: &'m GuestMemoryMmap, segs: &[(GuestAddress, usize)], dir: Dir) -> io::Result<Self> {
        let bad = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
        let access = match dir {
            Dir::ToGuest => Permissions::Write,
            Dir::FromGuest => Permissions::Read,
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
        let guards: Vec<PtrGuardMut> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
        let iovs = guards.iter().zip(&slices).map(|(g, s)| libc::iovec { iov_base: g.as_ptr().cast(), iov_len: s.len() }).collect();
        Ok(Self { slices, _guards: guards, iovs })
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.iovs.iter().map(|v| v.iov_len).sum()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the bytes after the first `skip` to `out` (what a partial write left over).
    pub fn copy_tail(&self, skip: usize, out: &mut Vec<u8>) {
        let mut skip = skip;
        for s in &self.slices {
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let start = out.len();
            out.resize(start + s.len() - skip, 0);
            // In bounds: skip < s.len(), and out has exactly s.len() - skip bytes from start.
            if let Ok(part) = s.subslice(skip, s.len() - skip) {
                part.copy_to(&mut out[start..]);
            }
            skip = 0;
        }
    }

    /// Writes all buffers to `fd` with one `writev` (a tap takes that as one frame). Returns
    /// the bytes written.
    pub fn writev(&self, fd: RawFd) -> io::Result<usize> {
        self.vectored(fd, Dir::FromGuest)
    }

    /// Reads into the buffers from `fd` with one `readv` (a tap delivers one frame). Returns
    /// the bytes read.
    pub fn readv(&self, fd: RawFd) -> io::Result<usize> {
        self.vectored(fd, Dir::ToGuest)
    }

    /// One `readv` (`ToGuest`) or `writev` (`FromGuest`) over all buffers, retried on EINTR.
    fn vectored(&self, fd: RawFd, dir: Dir) -> io::Result<usize> {
        if self.iovs.len() > IOV_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many buffers"));
        }
        let (iov, count) = (self.iovs.as_ptr(), self.iovs.len() as i32);
        loop {
            let n = match dir {
                // SAFETY: every iovec points into mapped guest memory within the bounds
                // vm-memory checked, kept alive by `self`; the count is at most IOV_MAX. The
                // kernel writes only inside them.
                Dir::ToGuest => unsafe { libc::readv(fd, iov, count) },
                // SAFETY: as above; the kernel only reads the buffers.
                Dir::FromGuest => unsafe { libc::writev(fd, iov, count) },
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Moves exactly all bytes between the buffers and `file` at `offset`; fails if the
    /// file ends early.
    pub fn transfer_at(mut self, file: &File, offset: u64, dir: Dir) -> io::Result<()> {
        let fd = file.as_raw_fd();
        let iovs = &mut self.iovs;
        let mut pos = offset;
        let mut first = 0;
        while first < iovs.len() {
            let batch = &iovs[first..iovs.len().min(first + IOV_MAX)];
            let off = libc::off_t::try_from(pos).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
            let n = match dir {
                // SAFETY: every iovec points into mapped guest memory within the bounds
                // vm-memory checked, kept alive by `self`; the count is at most IOV_MAX. The
                // kernel writes only inside them.
                Dir::ToGuest => unsafe { libc::preadv(fd, batch.as_ptr(), batch.len() as i32, off) },
                // SAFETY: as above; the kernel only reads the buffers.
                Dir::FromGuest => unsafe { libc::pwritev(fd, batch.as_ptr(), batch.len() as i32, off) },
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
}

/// Moves exactly the bytes of `segs` between guest memory and `file` at `offset`.
pub fn transfer(mem: &GuestMemoryMmap, file: &File, offset: u64, segs: &[(GuestAddress, usize)], dir: Dir) -> io::Result<()> {
    GuestIovecs::new(mem, segs, dir)?.transfer_at(file, offset, dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x10000), 0x10000)]).unwrap()
    }

    #[test]
    fn reads_into_scattered_buffers_and_across_regions() {
        let m = mem();
        let mut f = tempfile();
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        f.write_all(&data).unwrap();
        // 100 bytes, then 1900 bytes crossing the region boundary at 0x10000, then 0 bytes.
        let segs = [(GuestAddress(0x100), 100), (GuestAddress(0x10000 - 900), 1900), (GuestAddress(0x5000), 0)];
        transfer(&m, &f, 1000, &segs, Dir::ToGuest).unwrap();
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
        transfer(&m, &f, 10, &segs, Dir::FromGuest).unwrap();
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
        let e = transfer(&m, &f, 0, &[(GuestAddress(0), 20)], Dir::ToGuest).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(transfer(&m, &f, 0, &[(GuestAddress(0x1f000), 0x2000)], Dir::ToGuest).is_err());
        assert!(transfer(&m, &f, 0, &[(GuestAddress(0x40000), 1)], Dir::FromGuest).is_err());
    }

    #[test]
    fn writev_sends_one_datagram_from_scattered_buffers() {
        let m = mem();
        m.write_slice(b"head", GuestAddress(0x300)).unwrap();
        m.write_slice(b"-tail", GuestAddress(0x10000 - 2)).unwrap();
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let v = GuestIovecs::new(&m, &[(GuestAddress(0x300), 4), (GuestAddress(0x10000 - 2), 5)], Dir::FromGuest).unwrap();
        assert_eq!(v.len(), 9);
        assert_eq!(v.writev(a.as_raw_fd()).unwrap(), 9);
        let mut buf = [0u8; 32];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"head-tail");
    }

    #[test]
    fn copy_tail_skips_what_was_written_across_segments() {
        let m = mem();
        m.write_slice(b"abcd", GuestAddress(0x100)).unwrap();
        m.write_slice(b"efghij", GuestAddress(0x10000 - 3)).unwrap();
        let segs = [(GuestAddress(0x100), 4), (GuestAddress(0x10000 - 3), 6)];
        let iov = GuestIovecs::new(&m, &segs, Dir::FromGuest).unwrap();
        for (skip, want) in [(0, &b"abcdefghij"[..]), (3, b"defghij"), (4, b"efghij"), (8, b"ij"), (10, b"")] {
            let mut out = b"x".to_vec();
            iov.copy_tail(skip, &mut out);
            assert_eq!(&out[1..], want, "skip {skip}");
        }
    }

    fn tempfile() -> File {
        vmm_sys_util::tempfile::TempFile::new().unwrap().into_file()
    }
}
