//! A log file that never grows past a size: when the next write would take it over `max`
//! bytes, the older part is dropped and the newest `max / 2` bytes move to the start of the
//! file, after one line saying how much was dropped. Readers see an ordinary text file of the
//! newest output (`husk logs`, `tail`), never more than `max` bytes.
//!
//! Used for the guest console (`console = "file:..."`, which a guest writes at will) and for
//! husk-vmm's own stderr when that is a regular file (the shim's `vmm.log`). It works on a
//! descriptor alone (no path: the file may have been opened by someone else), writing at the
//! descriptor's offset, so other writers sharing it (a panic message on stderr) land at the
//! end too. Trimming reads the kept tail back, so the descriptor should be open for reading as
//! well; when it is not, the old content is dropped entirely.
//!
//! Written by hand: the rotating-file crates rename files by path, which a descriptor passed
//! in by the shim does not have.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// Smallest bound accepted (the drop notice and a useful tail must fit).
pub const MIN_MAX_BYTES: u64 = 16 << 10;

/// A size-bounded log over an open file.
#[derive(Debug)]
pub struct BoundedLog {
    file: File,
    /// Current length of the file (what this writer wrote and found).
    len: u64,
    max: u64,
    /// Bytes dropped so far.
    dropped: u64,
    /// Others write to the same file (stderr): re-read its length before each write.
    shared: bool,
}

impl BoundedLog {
    /// Wraps `file` (positioned anywhere: writes go to its end). `max` below
    /// [`MIN_MAX_BYTES`] is raised to it.
    pub fn new(file: File, max: u64) -> io::Result<Self> {
        Self::open(file, max, false)
    }

    /// Like [`BoundedLog::new`] for a file others write to as well (a process's stderr, which
    /// a panic message may reach directly): its length is looked up before each write.
    pub fn shared(file: File, max: u64) -> io::Result<Self> {
        Self::open(file, max, true)
    }

    fn open(mut file: File, max: u64, shared: bool) -> io::Result<Self> {
        let len = file.seek(SeekFrom::End(0))?;
        let mut log = BoundedLog { file, len, max: max.max(MIN_MAX_BYTES), dropped: 0, shared };
        if log.len > log.max {
            log.trim(0)?;
        }
        Ok(log)
    }

    /// The bound.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Keeps the newest bytes so that `incoming` more fit within `max`.
    fn trim(&mut self, incoming: u64) -> io::Result<()> {
        let keep_goal = (self.max / 2).saturating_sub(incoming);
        let keep = keep_goal.min(self.len);
        let mut tail = vec![0u8; keep as usize];
        let start = self.len - keep;
        if self.file.read_exact_at(&mut tail, start).is_err() {
            // Not readable (write-only descriptor): drop everything.
            tail.clear();
        }
        // Start at a line boundary when one is near, so the file begins with a whole line.
        let cut = tail.iter().take(4096).position(|&b| b == b'\n').map_or(0, |i| i + 1);
        let tail = &tail[cut..];
        self.dropped += self.len - tail.len() as u64;
        let notice = format!("[husk: {} older bytes of this log were dropped to keep it within {} bytes]\n", self.dropped, self.max);
        self.file.write_all_at(notice.as_bytes(), 0)?;
        self.file.write_all_at(tail, notice.len() as u64)?;
        self.len = (notice.len() + tail.len()) as u64;
        self.file.set_len(self.len)?;
        self.file.seek(SeekFrom::Start(self.len))?;
        Ok(())
    }
}

impl Write for BoundedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A write larger than half the bound keeps only its own tail.
        let half = (self.max / 2) as usize;
        let data = if buf.len() > half { &buf[buf.len() - half..] } else { buf };
        if data.len() < buf.len() {
            self.dropped += (buf.len() - data.len()) as u64;
        }
        if self.shared {
            self.len = self.file.metadata()?.len();
        }
        if self.len + data.len() as u64 > self.max {
            self.trim(data.len() as u64)?;
        }
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh directory under the temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!("husk-bounded-log-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).unwrap()
    }

    #[test]
    fn fifty_mib_leave_at_most_the_bound_and_the_newest_lines() {
        let d = TempDir::new("flood");
        let path = d.path().join("console.log");
        let max = 256 << 10;
        let mut log = BoundedLog::new(open(&path), max).unwrap();
        // Byte by byte at first (as the serial port writes), then in lines.
        for b in b"line 0 first\n" {
            log.write_all(&[*b]).unwrap();
        }
        let mut written = 13u64;
        let mut n = 1u64;
        while written < 50 << 20 {
            let line = format!("line {n} {}\n", "x".repeat((n % 97) as usize));
            log.write_all(line.as_bytes()).unwrap();
            written += line.len() as u64;
            n += 1;
            assert!(std::fs::metadata(&path).unwrap().len() <= max, "over the bound after {written} bytes");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() as u64 <= max && text.len() as u64 >= max / 4, "{} bytes", text.len());
        assert!(text.starts_with("[husk: ") && text.contains("older bytes of this log were dropped"), "{}", &text[..100]);
        let last = format!("line {} ", n - 1);
        assert!(text.lines().last().unwrap().starts_with(&last), "the newest line is kept");
        // Every kept line after the notice is whole.
        for l in text.lines().skip(1) {
            assert!(l.starts_with("line "), "cut line {l:?}");
        }
        assert!(!text.contains("line 0 first"));
    }

    #[test]
    fn a_huge_write_keeps_its_tail_and_a_write_only_file_is_still_bounded() {
        let d = TempDir::new("huge");
        let path = d.path().join("vmm.log");
        let max = MIN_MAX_BYTES;
        let wo = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap();
        let mut log = BoundedLog::new(wo, 1).unwrap();
        assert_eq!(log.max(), MIN_MAX_BYTES, "a tiny bound is raised");
        let mut big = vec![b'a'; 3 * max as usize];
        big.extend_from_slice(b"END\n");
        log.write_all(&big).unwrap();
        log.write_all(&big).unwrap();
        let text = std::fs::read(&path).unwrap();
        assert!(text.len() as u64 <= max, "{}", text.len());
        assert!(text.ends_with(b"aEND\n"));
    }

    #[test]
    fn an_existing_oversized_file_is_trimmed_on_open_and_appended_to() {
        let d = TempDir::new("old");
        let path = d.path().join("old.log");
        let old: String = (0..20_000).map(|i| format!("old {i}\n")).collect();
        std::fs::write(&path, &old).unwrap();
        let mut log = BoundedLog::new(open(&path), MIN_MAX_BYTES).unwrap();
        log.write_all(b"new\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() as u64 <= MIN_MAX_BYTES);
        assert!(text.ends_with("old 19999\nnew\n"), "{}", &text[text.len() - 30..]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod shared_tests {
    use super::*;

    #[test]
    fn other_writers_of_a_shared_file_are_counted_and_kept_in_order() {
        let path = std::env::temp_dir().join(format!("husk-bounded-log-shared-{}.log", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let mut other = f.try_clone().unwrap();
        let mut log = BoundedLog::shared(f, MIN_MAX_BYTES).unwrap();
        for i in 0..2000 {
            log.write_all(format!("log line {i}\n").as_bytes()).unwrap();
            other.write_all(format!("raw line {i}\n").as_bytes()).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() <= MIN_MAX_BYTES + 20, "at {i}");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("log line 1999\nraw line 1999\n"), "{}", &text[text.len() - 40..]);
        let _ = std::fs::remove_file(&path);
    }
}
