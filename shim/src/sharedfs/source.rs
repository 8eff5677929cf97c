//! Resolving a volume source on the host, as runc does for a bind mount's source: symlinks
//! are followed on the host, and what they lead to must be a directory or a regular file.
//!
//! The resolved path is opened with `O_PATH | O_NOFOLLOW` and checked through that file
//! descriptor; the bind mount is then made from `/proc/self/fd/N`, so what gets mounted is
//! exactly what was checked, even if the path is swapped in between.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Result, SharedFsError};

/// What a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A directory: its mount point is a directory.
    Dir,
    /// A regular file: its mount point is an empty file.
    File,
}

/// A resolved, checked, opened source.
#[derive(Debug)]
pub struct Source {
    /// The path with every symlink resolved.
    pub resolved: PathBuf,
    /// Directory or file.
    pub kind: SourceKind,
    /// An `O_PATH` descriptor of it.
    fd: File,
}

impl Source {
    /// The path to mount from: the open descriptor, through /proc.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// Resolves `source` on the host and checks it: it must exist and be a directory or a
/// regular file (sockets, devices and FIFOs are refused), and must not lie inside `shared`.
pub fn resolve_source(source: &Path, shared: &Path) -> Result<Source> {
    let missing = |e| SharedFsError::SourceMissing { source_path: source.to_path_buf(), source: e };
    let resolved = std::fs::canonicalize(source).map_err(missing)?;
    let fd = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&resolved).map_err(missing)?;
    let ft = fd.metadata().map_err(missing)?.file_type();
    let kind = if ft.is_dir() {
        SourceKind::Dir
    } else if ft.is_file() {
        SourceKind::File
    } else {
        let kind = if ft.is_socket() {
            "unix socket"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_char_device() {
            "character device"
        } else if ft.is_fifo() {
            "FIFO"
        } else {
            "special file"
        };
        return Err(SharedFsError::SourceKind { source_path: source.to_path_buf(), resolved, kind });
    };
    if resolved.starts_with(shared) {
        return Err(SharedFsError::SourceInShared { source_path: source.to_path_buf(), resolved, shared: shared.to_path_buf() });
    }
    Ok(Source { resolved, kind, fd })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn symlinks_resolve_on_the_host_and_kinds_are_checked() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::create_dir(t.path().join("real")).unwrap();
        std::fs::write(t.path().join("real/hosts"), b"127.0.0.1 localhost\n").unwrap();
        std::os::unix::fs::symlink("real", t.path().join("link")).unwrap();
        std::os::unix::fs::symlink("link/hosts", t.path().join("hosts-link")).unwrap();

        let d = resolve_source(&t.path().join("link"), &shared).unwrap();
        assert_eq!((d.resolved.clone(), d.kind), (t.path().join("real").canonicalize().unwrap(), SourceKind::Dir));
        let f = resolve_source(&t.path().join("hosts-link"), &shared).unwrap();
        assert_eq!(f.kind, SourceKind::File);
        assert!(f.resolved.ends_with("real/hosts"));
        assert_eq!(std::fs::read(f.proc_path()).unwrap(), b"127.0.0.1 localhost\n", "the descriptor is the file");

        let e = resolve_source(&t.path().join("nope"), &shared).unwrap_err();
        assert!(matches!(e, SharedFsError::SourceMissing { .. }) && e.to_string().contains("nope"), "{e}");
        std::os::unix::fs::symlink("nowhere", t.path().join("dangling")).unwrap();
        let e = resolve_source(&t.path().join("dangling"), &shared).unwrap_err().to_string();
        assert!(e.contains("dangling") && e.contains("does not exist"), "{e}");

        let sock = t.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = resolve_source(&sock, &shared).unwrap_err().to_string();
        assert!(e.contains("s.sock") && e.contains("unix socket"), "{e}");
        let e = resolve_source(Path::new("/dev/null"), &shared).unwrap_err().to_string();
        assert!(e.contains("/dev/null") && e.contains("character device"), "{e}");
        let fifo = t.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(resolve_source(&fifo, &shared).unwrap_err().to_string().contains("FIFO"));

        std::fs::create_dir(shared.join("inner")).unwrap();
        std::os::unix::fs::symlink(shared.join("inner"), t.path().join("sneaky")).unwrap();
        let e = resolve_source(&t.path().join("sneaky"), &shared).unwrap_err();
        assert!(matches!(e, SharedFsError::SourceInShared { .. }), "{e}");
    }
}
