//! Work inside a network namespace: a short-lived thread enters it (setns only moves that
//! thread) and everything it opens there (netlink sockets, taps) stays in that namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use super::NetworkError;

/// Opens the network namespace at `path` (a bind-mounted nsfs file such as
/// /var/run/netns/cni-…, or /proc/<pid>/ns/net).
pub fn open(path: &Path) -> Result<File, NetworkError> {
    let f = File::open(path).map_err(|source| NetworkError::Netns { path: path.to_path_buf(), source })?;
    // An nsfs file has this magic; anything else (a plain file, a directory) is refused before
    // setns would, with a clearer message.
    let st = nix::sys::statfs::fstatfs(&f).map_err(|e| NetworkError::Netns { path: path.to_path_buf(), source: e.into() })?;
    if st.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(NetworkError::NotANetns { path: path.to_path_buf() });
    }
    Ok(f)
}

/// Runs `f` on a thread that entered network namespace `ns` and returns its result.
pub fn run<T: Send>(ns: &File, path: &Path, f: impl FnOnce() -> Result<T, NetworkError> + Send) -> Result<T, NetworkError> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(s, || {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Netns { path: path.to_path_buf(), source: e.into() })?;
                f()
            })
            .map_err(|source| NetworkError::Thread { source })?;
        handle.join().unwrap_or_else(|_| Err(NetworkError::Thread { source: std::io::Error::other("the netns thread panicked") }))
    })
}
