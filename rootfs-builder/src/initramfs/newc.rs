//! The cpio "newc" (SVR4, no CRC) format the kernel's initramfs unpacker reads.
//!
//! Hand-written rather than taken from a crate: the format is a 110-byte ASCII header, the name
//! and the data, each padded to 4 bytes, and reproducibility needs full control of every header
//! field (inode numbers, mtimes, owners, device numbers), which the crates.io writers either do
//! not expose or fill in from the host. The reader is used by tests and `husk-rootfs` to list an
//! archive; it bounds every length against the input.

use std::io::{self, Write};

/// Magic of a newc header.
const MAGIC: &[u8; 6] = b"070701";
/// Length of a newc header.
const HEADER_LEN: usize = 110;
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits of `mode` (as in `st_mode`).
pub const S_IFMT: u32 = 0o170000;
/// Directory.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;

/// One entry's header fields, as written and as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewcEntry {
    /// Path inside the archive, without a leading `/`.
    pub name: String,
    /// Inode number.
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: u32,
    /// Device major/minor of a device node.
    pub rdev: (u32, u32),
    /// File content (or symlink target).
    pub data: Vec<u8>,
}

/// Writes newc entries, padding as the format requires.
pub struct NewcWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> NewcWriter<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> Self {
        Self { out, written: 0 }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.put(&[0u8; 4][..4 - rem])?;
        }
        Ok(())
    }

    /// Writes one entry.
    pub fn entry(&mut self, e: &NewcEntry) -> io::Result<()> {
        let too_big = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} of {} too large for newc", e.name));
        let size = u32::try_from(e.data.len()).map_err(|_| too_big("size"))?;
        let namesize = u32::try_from(e.name.len() + 1).map_err(|_| too_big("name"))?;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            e.ino, e.mode, e.uid, e.gid, e.nlink, e.mtime, size, 0, 0, e.rdev.0, e.rdev.1, namesize, 0
        );
        debug_assert_eq!(header.len(), HEADER_LEN);
        self.put(header.as_bytes())?;
        self.put(e.name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(&e.data)?;
        self.pad()
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(&NewcEntry { name: TRAILER.to_string(), ino: 0, mode: 0, uid: 0, gid: 0, nlink: 1, mtime: 0, rdev: (0, 0), data: Vec::new() })?;
        Ok(self.out)
    }
}

/// Error reading a newc archive.
#[derive(Debug, thiserror::Error)]
pub enum NewcReadError {
    /// The input ended inside an entry.
    #[error("cpio archive truncated at offset {offset}")]
    Truncated {
        /// Byte offset where the entry started.
        offset: usize,
    },
    /// A header did not start with the newc magic or had a non-hex field.
    #[error("bad newc header at offset {offset}")]
    BadHeader {
        /// Byte offset of the header.
        offset: usize,
    },
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Parses a whole (uncompressed) newc archive up to its trailer.
pub fn read_newc(data: &[u8]) -> Result<Vec<NewcEntry>, NewcReadError> {
    let mut entries = Vec::new();
    let mut off = 0usize;
    loop {
        let start = off;
        let header = data.get(off..off + HEADER_LEN).ok_or(NewcReadError::Truncated { offset: start })?;
        if &header[..6] != MAGIC {
            return Err(NewcReadError::BadHeader { offset: start });
        }
        let mut fields = [0u32; 13];
        for (i, f) in fields.iter_mut().enumerate() {
            let hex = std::str::from_utf8(&header[6 + i * 8..14 + i * 8]).map_err(|_| NewcReadError::BadHeader { offset: start })?;
            *f = u32::from_str_radix(hex, 16).map_err(|_| NewcReadError::BadHeader { offset: start })?;
        }
        let namesize = fields[11] as usize;
        let filesize = fields[6] as usize;
        let name_end = off + HEADER_LEN + namesize;
        let name_bytes = data.get(off + HEADER_LEN..name_end).ok_or(NewcReadError::Truncated { offset: start })?;
        let name = String::from_utf8_lossy(name_bytes.strip_suffix(&[0]).unwrap_or(name_bytes)).into_owned();
        let data_start = align4(name_end);
        let file = data.get(data_start..data_start + filesize).ok_or(NewcReadError::Truncated { offset: start })?;
        off = align4(data_start + filesize);
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(NewcEntry {
            name,
            ino: fields[0],
            mode: fields[1],
            uid: fields[2],
            gid: fields[3],
            nlink: fields[4],
            mtime: fields[5],
            rdev: (fields[9], fields[10]),
            data: file.to_vec(),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let e = NewcEntry { name: "init".into(), ino: 1, mode: S_IFREG | 0o755, uid: 0, gid: 0, nlink: 1, mtime: 0, rdev: (0, 0), data: b"abcde".to_vec() };
        let mut w = NewcWriter::new(Vec::new());
        w.entry(&e).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        assert_eq!(&out[..6], b"070701");
        assert_eq!(read_newc(&out).unwrap(), vec![e]);
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        let mut w = NewcWriter::new(Vec::new());
        w.entry(&NewcEntry { name: "x".into(), ino: 1, mode: S_IFREG, uid: 0, gid: 0, nlink: 1, mtime: 0, rdev: (0, 0), data: vec![1; 100] }).unwrap();
        let out = w.finish().unwrap();
        assert!(matches!(read_newc(&out[..150]), Err(NewcReadError::Truncated { .. })));
        assert!(matches!(
            read_newc(b"garbage that is not a cpio header at all, padded out to more than 110 bytes ......................................"),
            Err(NewcReadError::BadHeader { offset: 0 })
        ));
    }
}
