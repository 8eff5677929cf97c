//! One uid of the configured range per sandbox, without collisions between concurrent shims:
//! a uid is held by an exclusive `flock` on `<locks>/<uid>`, which the kernel releases when
//! the holding shim exits, however it exits. The first uid of the range whose lock is free is
//! taken. A lease removes its lock file, and the directory once empty, when released, so
//! nothing of a deleted sandbox stays behind; the inode check on acquiring makes that
//! removal race-free (a lock taken on a file unlinked meanwhile is not a lease).

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{io, JailError};

/// Attempts per uid when its lock file keeps being replaced under us.
const RACE_RETRIES: u32 = 8;

/// A uid (and the gid of the same number) held for one sandbox until dropped.
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    path: PathBuf,
    lock: Option<Flock<File>>,
}

impl UidLease {
    /// Takes the first free uid of `range`, holding its lock in `locks` (created if needed).
    pub fn acquire(locks: &Path, range: Range<u32>) -> Result<UidLease, JailError> {
        for uid in range.clone() {
            let path = locks.join(uid.to_string());
            for _ in 0..RACE_RETRIES {
                std::fs::create_dir_all(locks).map_err(io("create the uid lock directory", locks))?;
                let file = match OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path) {
                    Ok(f) => f,
                    // The directory was removed by a lease released meanwhile: again.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io("open the uid lock", &path)(e)),
                };
                let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                    Ok(l) => l,
                    Err((_, Errno::EWOULDBLOCK)) => break,
                    Err((_, e)) => return Err(io("lock", &path)(e.into())),
                };
                // Still the file at the path (not one a releasing lease unlinked meanwhile)?
                let held = lock.metadata().map_err(io("stat the uid lock", &path))?;
                match std::fs::metadata(&path) {
                    Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => {
                        return Ok(UidLease { uid, path, lock: Some(lock) });
                    }
                    _ => continue,
                }
            }
        }
        Err(JailError::NoFreeUid { first: range.start, count: range.len(), locks: locks.to_path_buf() })
    }

    /// The uid, also used as the gid.
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        // Removed while still locked: whoever opens the path after this creates a new file.
        let _ = std::fs::remove_file(&self.path);
        drop(self.lock.take());
        if let Some(dir) = self.path.parent() {
            // Fails while other leases hold files in it, as it should.
            let _ = std::fs::remove_dir(dir);
        }
    }
}
