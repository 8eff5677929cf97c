//! Content-keyed cache of read-only images.
//!
//! An entry is `<dir>/<key>.<fstype>` with its lock file `<dir>/<key>.lock`. A builder holds an
//! exclusive `flock` on the lock file, builds into a locked temporary file in the same
//! directory ([`scratch`]), syncs it and renames it into place, so a reader sees either no
//! image or a complete one, and concurrent builders of one key build it once. A user holds a
//! shared `flock` for as long as it uses the image ([`ImageLease`]: a running container's
//! VM), and [`prune_cache`] removes only images whose lock it can take exclusively: never one
//! in use, never one being built. A hit updates the image's access time (the LRU order).
//! Lock files whose holder died without an image, and temporary files of dead builders, are
//! swept by the next build.

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::mkfs::allocated;
use super::{io_err, scratch, FsType, ImageError};

/// Version of the cache layout and image recipe; part of every key.
const KEY_VERSION: &[u8] = b"husk-rootfs-cache-v1";
/// How often taking a lock is retried when a pruner removed the lock file meanwhile.
const LOCK_TRIES: usize = 16;
/// How long a caller that found neither the image nor a free lock waits before it looks again.
const BUSY_BACKOFF: Duration = Duration::from_millis(5);
/// How many times it looks (a build in progress does not count: [`find`] waits for it).
const BUSY_TRIES: usize = 2000;

/// The cache key of the given parts (each length-prefixed, so parts cannot run together).
pub(crate) fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update(KEY_VERSION);
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn entry_path(dir: &Path, key: &str, fstype: FsType) -> PathBuf {
    dir.join(format!("{key}.{fstype}"))
}

fn lock_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.lock"))
}

fn touch_atime(path: &Path) -> Result<(), ImageError> {
    let f = File::open(path).map_err(io_err("open cached image", path))?;
    f.set_times(FileTimes::new().set_accessed(SystemTime::now())).map_err(io_err("update access time of", path))
}

/// Locks `<dir>/<key>.lock` (`None`: a non-blocking lock is held by someone else). The lock
/// returned is on the file that is at the path after locking: a pruner that removed the
/// lock file while we waited makes us lock the new one.
fn lock(dir: &Path, key: &str, arg: FlockArg) -> Result<Option<Flock<File>>, ImageError> {
    let path = lock_path(dir, key);
    for _ in 0..LOCK_TRIES {
        let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err("create lock", &path))?;
        let l = match Flock::lock(f, arg) {
            Ok(l) => l,
            Err((_, nix::Error::EWOULDBLOCK)) if matches!(arg, FlockArg::LockExclusiveNonblock | FlockArg::LockSharedNonblock) => return Ok(None),
            Err((_, source)) => return Err(ImageError::Sys { op: "lock", path, source }),
        };
        let same = match (l.metadata(), fs::metadata(&path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if same {
            return Ok(Some(l));
        }
    }
    Err(ImageError::Io { op: "lock", path, source: std::io::Error::other("the lock file was removed each time it was locked") })
}

/// A shared lock on a cached image: while any clone of it lives, [`prune_cache`] leaves the
/// image alone. Dropped with the last clone (or when the process dies).
#[derive(Clone)]
pub struct ImageLease(#[allow(dead_code)] Arc<Flock<File>>);

impl std::fmt::Debug for ImageLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ImageLease")
    }
}

/// Result of [`get_or_build`].
pub(crate) struct CacheResult {
    pub path: PathBuf,
    pub from_cache: bool,
    pub bytes_written: u64,
    pub lease: ImageLease,
}

/// The image of `key` if it is in the cache, with a shared lock on it.
fn find(dir: &Path, key: &str, path: &Path) -> Result<Option<ImageLease>, ImageError> {
    let Some(shared) = lock(dir, key, FlockArg::LockShared)? else { return Ok(None) };
    if !path.is_file() {
        return Ok(None);
    }
    touch_atime(path)?;
    Ok(Some(ImageLease(Arc::new(shared))))
}

/// Builds the image of `key` into a temporary file and renames it to `path`; returns the
/// bytes written. The temporary file is removed on error.
fn build_entry(dir: &Path, key: &str, path: &Path, build: impl FnOnce(&Path) -> Result<u64, ImageError>) -> Result<u64, ImageError> {
    scratch::sweep_dead_builders(dir)?;
    let tmp = scratch::LockedTemp::new(dir, &format!("{}{key}-", scratch::CACHE_TMP))?;
    let extra = build(tmp.path())?;
    let bytes = allocated(tmp.path())? + extra;
    File::open(tmp.path()).and_then(|f| f.sync_all()).map_err(io_err("sync", tmp.path()))?;
    tmp.persist(path, "rename into the cache")?;
    Ok(bytes)
}

/// Returns the cached image of `key`, building it with `build(tmp_path)` (which returns the
/// bytes it wrote besides the image) if it is not there, with a lease on it. After a build,
/// the cache is pruned to `max_bytes` if given (a failed prune is logged, the image is still
/// returned).
///
/// A caller that finds no image becomes the builder only if it gets the exclusive lock at
/// once. Otherwise another builder is at work, and the caller looks again: [`find`]'s shared
/// lock waits for that build to end. It must never wait for the exclusive lock itself. Once
/// a build ends, its builder and every caller that found the image hold shared leases, for as
/// long as their containers run, and a blocked exclusive request would wait for all of them.
pub(crate) fn get_or_build(
    dir: &Path,
    key: &str,
    fstype: FsType,
    max_bytes: Option<u64>,
    build: impl FnOnce(&Path) -> Result<u64, ImageError>,
) -> Result<CacheResult, ImageError> {
    fs::create_dir_all(dir).map_err(io_err("create cache directory", dir))?;
    let path = entry_path(dir, key, fstype);
    for _ in 0..BUSY_TRIES {
        if let Some(lease) = find(dir, key, &path)? {
            return Ok(CacheResult { path, from_cache: true, bytes_written: 0, lease });
        }
        let Some(excl) = lock(dir, key, FlockArg::LockExclusiveNonblock)? else {
            // Another caller holds the lock: a builder that just took it, or another caller
            // between its look and its own try.
            std::thread::sleep(BUSY_BACKOFF);
            continue;
        };
        let (from_cache, bytes) = if path.is_file() {
            touch_atime(&path)?;
            (true, 0)
        } else {
            let built = build_entry(dir, key, &path, build);
            if built.is_err() {
                // No image: the lock file goes too (waiters find it gone and lock a new one).
                let _ = fs::remove_file(lock_path(dir, key));
            }
            (false, built?)
        };
        // Shared from here on: other users may take it; prune may not (the image is fresh, too).
        excl.relock(FlockArg::LockShared).map_err(|source| ImageError::Sys { op: "lock (shared)", path: lock_path(dir, key), source })?;
        let lease = ImageLease(Arc::new(excl));
        if let (Some(max), false) = (max_bytes, from_cache) {
            if let Err(e) = prune_cache(dir, max) {
                log::warn!("cannot prune image cache {}: {e}", dir.display());
            }
        }
        return Ok(CacheResult { path, from_cache, bytes_written: bytes, lease });
    }
    Err(ImageError::Io {
        op: "lock",
        path: lock_path(dir, key),
        source: std::io::Error::other(format!("neither the image nor its lock came free in {BUSY_TRIES} tries")),
    })
}

/// What [`prune_cache`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Images removed.
    pub removed: Vec<PathBuf>,
    /// Bytes they occupied.
    pub freed: u64,
    /// Bytes the cache occupies afterwards.
    pub remaining: u64,
}

/// Removes least recently used images until the cache occupies at most `max_bytes`, skipping
/// images in use (leased: from the lookup that found or built them until their user is done)
/// and images being built; also removes temporary
/// files of dead builders and lock files without an image that nobody holds.
pub fn prune_cache(dir: &Path, max_bytes: u64) -> Result<PruneReport, ImageError> {
    let mut report = PruneReport::default();
    scratch::sweep_dead_builders(dir)?;
    let mut images = Vec::new();
    let mut locks = Vec::new();
    let now = SystemTime::now();
    for entry in fs::read_dir(dir).map_err(io_err("read cache directory", dir))? {
        let entry = entry.map_err(io_err("read cache directory", dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((key, ext)) = name.rsplit_once('.') else {
            continue;
        };
        if key.starts_with('.') {
            continue;
        }
        if ext == "lock" {
            locks.push(key.to_string());
            continue;
        }
        if ext == "ext4" || ext == "erofs" {
            // Gone since the listing: pruned by a concurrent prune.
            let Ok(meta) = entry.metadata() else { continue };
            images.push((meta.accessed().unwrap_or(now), key.to_string(), path, meta.blocks() * 512));
        }
    }
    for key in locks {
        if images.iter().any(|i| i.1 == key) {
            continue;
        }
        // A builder that died mid-build, or a pruner's race: an image-less lock nobody holds.
        if let Some(_l) = lock(dir, &key, FlockArg::LockExclusiveNonblock)? {
            if !dir.join(format!("{key}.ext4")).exists() && !dir.join(format!("{key}.erofs")).exists() {
                let p = lock_path(dir, &key);
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
            }
        }
    }
    let mut total: u64 = images.iter().map(|i| i.3).sum();
    images.sort();
    for (_, key, path, bytes) in images {
        if total <= max_bytes {
            break;
        }
        let Some(_lock) = lock(dir, &key, FlockArg::LockExclusiveNonblock)? else {
            continue;
        };
        fs::remove_file(&path).map_err(io_err("remove", &path))?;
        // Waiters on this lock file find it gone when they get it and lock the new one.
        let lock_path = lock_path(dir, &key);
        fs::remove_file(&lock_path).map_err(io_err("remove", &lock_path))?;
        total -= bytes;
        report.freed += bytes;
        report.removed.push(path);
    }
    report.remaining = total;
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::mpsc;

    /// Callers of one key at once, each keeping its lease (as a running container does) until
    /// every caller has its image. A caller that found no image and then waited for the
    /// exclusive lock hung here, behind the leases of those served before it (seen in CI).
    #[test]
    fn concurrent_callers_holding_leases_never_wait_for_each_other() {
        const CALLERS: usize = 4;
        for round in 0..30 {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().to_path_buf();
            let (tx, rx) = mpsc::channel();
            for _ in 0..CALLERS {
                let (dir, tx) = (dir.clone(), tx.clone());
                // Detached: a caller that hangs must fail the test, not block it.
                std::thread::spawn(move || {
                    let r = get_or_build(&dir, "k", FsType::Ext4, None, |tmp| {
                        std::thread::sleep(Duration::from_millis(2));
                        fs::write(tmp, b"image").map_err(io_err("write", tmp))?;
                        Ok(0)
                    });
                    let _ = tx.send(r);
                });
            }
            let results: Vec<CacheResult> = (0..CALLERS)
                .map(|i| {
                    rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("round {round}: caller {i} of {CALLERS} never got its image")).unwrap()
                })
                .collect();
            assert_eq!(results.iter().filter(|r| !r.from_cache).count(), 1, "round {round}: built once");
            assert!(results.iter().all(|r| r.path == results[0].path && fs::read(&r.path).unwrap() == b"image"));
            // Leased: prune leaves it.
            assert!(prune_cache(&dir, 0).unwrap().removed.is_empty());
            drop(results);
            assert_eq!(prune_cache(&dir, 0).unwrap().removed.len(), 1);
        }
    }
}
