//! Temporary files and directories of a build, each held under an exclusive `flock` by the
//! builder for as long as it works on it, and the sweep that removes those a dead builder left.
//!
//! The lock is how a sweeper tells a dead builder's left-overs from a live builder's work: the
//! kernel drops a `flock` when its holder dies (SIGKILL included), whatever its pid became, so
//! a temporary file or directory that can be locked has no live builder. Descriptors are
//! close-on-exec, so a child (mkfs) never keeps a lock of a dead builder alive.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::{io_err, ImageError};

/// An image being written into the cache (`<dir>/.tmp-<key>-XXXX`).
pub(crate) const CACHE_TMP: &str = ".tmp-";
/// An uncached image being written beside its output.
pub(crate) const IMAGE_TMP: &str = ".husk-img-";
/// The mount point of a merged overlay view (mounted in a private namespace only).
pub(crate) const VIEW_DIR: &str = ".husk-view-";
/// The directory OCI layers are unpacked into.
pub(crate) const STAGE_DIR: &str = ".husk-layers-";

/// Whether `file` (open) is still the file at `path` (a sweeper may have removed it between
/// its creation and our lock; then the lock protects nothing).
fn still_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Takes an exclusive lock on the open `file` at `path` without waiting.
fn try_lock(file: File, path: &Path) -> Result<Option<Flock<File>>, ImageError> {
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
        Err((_, source)) => Err(ImageError::Sys { op: "lock", path: path.to_path_buf(), source }),
    }
}

/// How often creating a locked temporary is retried when a sweeper removed it at once.
const CREATE_TRIES: usize = 8;

/// A temporary file, locked by this builder, removed on drop unless persisted.
pub(crate) struct LockedTemp {
    path: tempfile::TempPath,
    _lock: Flock<File>,
}

impl LockedTemp {
    /// Creates `<dir>/<prefix>XXXX` and locks it.
    pub(crate) fn new(dir: &Path, prefix: &str) -> Result<LockedTemp, ImageError> {
        for _ in 0..CREATE_TRIES {
            let (file, path) = tempfile::Builder::new().prefix(prefix).tempfile_in(dir).map_err(io_err("create a temporary image in", dir))?.into_parts();
            let Some(lock) = try_lock(file, &path)? else { continue };
            if still_at(&lock, &path) {
                return Ok(LockedTemp { path, _lock: lock });
            }
        }
        Err(ImageError::Io {
            op: "create a temporary image in",
            path: dir.to_path_buf(),
            source: std::io::Error::other("removed by a concurrent sweep each time"),
        })
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames it to `to` (atomically, in the same directory's filesystem).
    pub(crate) fn persist(self, to: &Path, op: &'static str) -> Result<(), ImageError> {
        self.path.persist(to).map(drop).map_err(|e| ImageError::Io { op, path: to.to_path_buf(), source: e.error })
    }
}

/// A temporary directory, locked by this builder, removed (with its content) on drop.
pub(crate) struct LockedTempDir {
    dir: tempfile::TempDir,
    _lock: Flock<File>,
}

impl LockedTempDir {
    /// Creates `<parent>/<prefix>XXXX` and locks it.
    pub(crate) fn new(parent: &Path, prefix: &str, op: &'static str) -> Result<LockedTempDir, ImageError> {
        for _ in 0..CREATE_TRIES {
            let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent).map_err(io_err(op, parent))?;
            let file = File::open(dir.path()).map_err(io_err("open", dir.path()))?;
            let Some(lock) = try_lock(file, dir.path())? else { continue };
            if still_at(&lock, dir.path()) {
                return Ok(LockedTempDir { dir, _lock: lock });
            }
        }
        Err(ImageError::Io { op, path: parent.to_path_buf(), source: std::io::Error::other("removed by a concurrent sweep each time") })
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Removes it now, reporting a failure.
    pub(crate) fn close(self) -> Result<(), ImageError> {
        let path = self.dir.path().to_path_buf();
        self.dir.close().map_err(io_err("remove", &path))
    }
}

/// Removes what dead builders left in `dir`: temporary images, staging directories and view
/// mount points that no live builder holds. Returns what it removed. A directory that does
/// not exist has nothing to sweep.
pub fn sweep_dead_builders(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(ImageError::Io { op: "read", path: dir.to_path_buf(), source: e }),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("read", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(prefix) = [CACHE_TMP, IMAGE_TMP, VIEW_DIR, STAGE_DIR].into_iter().find(|p| name.starts_with(p)) else { continue };
        let path = entry.path();
        // Gone since the listing (its builder finished): fine.
        let Ok(file) = File::open(&path) else { continue };
        let Some(lock) = try_lock(file, &path)? else { continue };
        if !still_at(&lock, &path) {
            continue;
        }
        let r = match prefix {
            // An empty mount point: its mount lived in the dead builder's namespace only.
            // Never a recursive removal here, in case something is mounted on it after all.
            VIEW_DIR => fs::remove_dir(&path),
            STAGE_DIR => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        match r {
            Ok(()) => {
                log::info!("removed {} left by a builder that died", path.display());
                removed.push(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::Io { op: "remove the left-over of a dead builder", path, source: e }),
        }
    }
    Ok(removed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn held_temporaries_stay_and_abandoned_ones_go() {
        let d = tempfile::tempdir().unwrap();
        let live = LockedTemp::new(d.path(), CACHE_TMP).unwrap();
        let live_dir = LockedTempDir::new(d.path(), STAGE_DIR, "create").unwrap();
        // What a builder killed mid-build leaves: files and directories nobody locks.
        let dead = d.path().join(".husk-img-dead");
        fs::write(&dead, b"half an image").unwrap();
        let dead_stage = d.path().join(".husk-layers-dead");
        fs::create_dir_all(dead_stage.join("usr/bin")).unwrap();
        fs::write(dead_stage.join("usr/bin/x"), b"x").unwrap();
        let dead_view = d.path().join(".husk-view-dead");
        fs::create_dir(&dead_view).unwrap();
        let other = d.path().join("keep.ext4");
        fs::write(&other, b"image").unwrap();
        let mut removed = sweep_dead_builders(d.path()).unwrap();
        removed.sort();
        let mut want = vec![dead, dead_stage, dead_view];
        want.sort();
        assert_eq!(removed, want);
        assert!(live.path().exists() && live_dir.path().exists() && other.exists());
        for p in &want {
            assert!(!p.exists(), "{}", p.display());
        }
        // Once the builder is done (dropped), its files are gone without a sweep.
        let (p, q) = (live.path().to_path_buf(), live_dir.path().to_path_buf());
        drop(live);
        live_dir.close().unwrap();
        assert!(!p.exists() && !q.exists());
        assert!(sweep_dead_builders(&d.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn a_lock_held_by_another_process_protects_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join(".tmp-abc-123");
        fs::write(&f, b"").unwrap();
        // flock(1) holds the lock in a live process of its own, as a concurrent builder would.
        let script = "exec 9<>\"$1\" && flock -x 9 && exec sleep 30";
        let mut holder = std::process::Command::new("sh").args(["-c", script, "sh"]).arg(&f).spawn().unwrap();
        let t0 = std::time::Instant::now();
        while try_lock(File::open(&f).unwrap(), &f).unwrap().is_some() {
            assert!(t0.elapsed().as_secs() < 10, "flock(1) never took the lock");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(sweep_dead_builders(d.path()).unwrap().is_empty());
        assert!(f.exists());
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert_eq!(sweep_dead_builders(d.path()).unwrap(), vec![f.clone()]);
        assert!(!f.exists());
    }
}
