//! Content-keyed cache of read-only images.
//!
//! An entry is `<dir>/<key>.<fstype>`. Builders take an exclusive `flock` on `<dir>/<key>.lock`,
//! build into a temporary file in the same directory, sync it and rename it into place, so a
//! reader sees either no image or a complete one, and concurrent builders of one key build it
//! once. A hit only updates the image's access time (the LRU order [`prune_cache`] uses).

use std::fs::{self, File, FileTimes};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::mkfs::allocated;
use super::{io_err, FsType, ImageError};

/// Version of the cache layout and image recipe; part of every key.
const KEY_VERSION: &[u8] = b"husk-rootfs-cache-v1";
/// Temporary files older than this are left-overs of a crashed builder.
const STALE_TMP: Duration = Duration::from_secs(3600);
/// Images used more recently than this are never pruned (a shim may be about to open them).
const MIN_IDLE: Duration = Duration::from_secs(60);

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

fn touch_atime(path: &Path) -> Result<(), ImageError> {
    let f = File::open(path).map_err(io_err("open cached image", path))?;
    f.set_times(FileTimes::new().set_accessed(SystemTime::now())).map_err(io_err("update access time of", path))
}

fn lock(dir: &Path, key: &str, arg: FlockArg) -> Result<Option<Flock<File>>, ImageError> {
    let path = dir.join(format!("{key}.lock"));
    let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err("create lock", &path))?;
    match Flock::lock(f, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::Error::EWOULDBLOCK)) if arg == FlockArg::LockExclusiveNonblock => Ok(None),
        Err((_, source)) => Err(ImageError::Sys { op: "lock", path, source }),
    }
}

/// Result of [`get_or_build`].
pub(crate) struct CacheResult {
    pub path: PathBuf,
    pub from_cache: bool,
    pub bytes_written: u64,
}

/// Returns the cached image of `key`, building it with `build(tmp_path)` (which returns the
/// bytes it wrote besides the image) if it is not there. After a build, the cache is pruned to
/// `max_bytes` if given (a failed prune is logged, the image is still returned).
pub(crate) fn get_or_build(
    dir: &Path,
    key: &str,
    fstype: FsType,
    max_bytes: Option<u64>,
    build: impl FnOnce(&Path) -> Result<u64, ImageError>,
) -> Result<CacheResult, ImageError> {
    fs::create_dir_all(dir).map_err(io_err("create cache directory", dir))?;
    let path = entry_path(dir, key, fstype);
    let hit = |path: PathBuf| -> Result<CacheResult, ImageError> {
        touch_atime(&path)?;
        Ok(CacheResult { path, from_cache: true, bytes_written: 0 })
    };
    if path.is_file() {
        return hit(path);
    }
    let _lock = lock(dir, key, FlockArg::LockExclusive)?;
    if path.is_file() {
        return hit(path);
    }
    let tmp = tempfile::Builder::new().prefix(&format!(".tmp-{key}-")).tempfile_in(dir).map_err(io_err("create a temporary image in", dir))?.into_temp_path();
    let extra = build(&tmp)?;
    let bytes = allocated(&tmp)? + extra;
    File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err("sync", &tmp))?;
    tmp.persist(&path).map_err(|e| ImageError::Io { op: "rename into the cache", path: path.clone(), source: e.error })?;
    if let Some(max) = max_bytes {
        // Our own entry is locked (and fresh): prune never takes it.
        if let Err(e) = prune_cache(dir, max) {
            log::warn!("cannot prune image cache {}: {e}", dir.display());
        }
    }
    Ok(CacheResult { path, from_cache: false, bytes_written: bytes })
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
/// images used in the last minute or being built; also removes temporary files of builders
/// that died more than an hour ago. A running VM keeps its open image even if it is removed.
pub fn prune_cache(dir: &Path, max_bytes: u64) -> Result<PruneReport, ImageError> {
    let mut report = PruneReport::default();
    let mut images = Vec::new();
    let now = SystemTime::now();
    for entry in fs::read_dir(dir).map_err(io_err("read cache directory", dir))? {
        let entry = entry.map_err(io_err("read cache directory", dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata().map_err(io_err("stat", &path))?;
        let age = |t: std::io::Result<SystemTime>| t.ok().and_then(|t| now.duration_since(t).ok()).unwrap_or_default();
        if name.starts_with(".tmp-") {
            if age(meta.modified()) > STALE_TMP {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
            continue;
        }
        let Some((key, ext)) = name.rsplit_once('.') else {
            continue;
        };
        if ext == "ext4" || ext == "erofs" {
            use std::os::unix::fs::MetadataExt;
            images.push((meta.accessed().unwrap_or(now), key.to_string(), path, meta.blocks() * 512, age(meta.accessed())));
        }
    }
    let mut total: u64 = images.iter().map(|i| i.3).sum();
    images.sort();
    for (_, key, path, bytes, idle) in images {
        if total <= max_bytes {
            break;
        }
        if idle < MIN_IDLE {
            continue;
        }
        let Some(_lock) = lock(dir, &key, FlockArg::LockExclusiveNonblock)? else {
            continue;
        };
        fs::remove_file(&path).map_err(io_err("remove", &path))?;
        // A builder waiting on the old lock file may then build once more: wasted work only,
        // the rename keeps the entry whole.
        let lock_path = dir.join(format!("{key}.lock"));
        fs::remove_file(&lock_path).map_err(io_err("remove", &lock_path))?;
        total -= bytes;
        report.freed += bytes;
        report.removed.push(path);
    }
    report.remaining = total;
    Ok(report)
}
