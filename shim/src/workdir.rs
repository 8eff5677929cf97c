//! The on-disk home of a sandbox's own images: `<image_work_dir>/<namespace>/<sandbox-dir>/`
//! holds `rootfs.img` of the sandbox container when it is not a shared cached image (a
//! writable ext4 rootfs, a snapshot the container already wrote to, a `ctr run --rootfs`
//! directory) and `containers/<id>/rootfs.img` of the pod's other containers. Such images are
//! as large as the container's content plus its writable headroom, so they live on disk, not
//! in host RAM under `state_dir` (a tmpfs).
//!
//! The shim serving the sandbox holds an exclusive `flock` on the directory for as long as
//! the sandbox lives. [`sweep`] removes every directory whose lock nobody holds: those of a
//! shim that crashed, or of a host that rebooted (`/var/lib` outlives `/run`). The kernel
//! drops the lock when its holder dies, so a live shim's directory is never taken, whatever
//! became of pids.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Result, ShimError};
use crate::state::{dir_name, validate_id, validate_namespace};

/// How often creating the directory is retried when a concurrent sweep removed it at once.
const CREATE_TRIES: usize = 8;

/// A sandbox's image directory, locked by this shim; [`WorkDir::remove`] removes it.
#[derive(Debug)]
pub struct WorkDir {
    dir: PathBuf,
    _lock: Flock<File>,
}

fn is_same(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// An exclusive lock on the directory `dir` if nobody holds one (`None` if someone does or
/// the directory went away meanwhile).
fn try_lock(dir: &Path) -> Result<Option<Flock<File>>> {
    let file = match File::open(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ShimError::io("open", dir, e)),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) if is_same(&l, dir) => Ok(Some(l)),
        Ok(_) | Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(ShimError::io("lock", dir, errno.into())),
    }
}

fn remove_tree(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShimError::io("remove image work directory", dir, e)),
    }
}

impl WorkDir {
    /// The directory of sandbox `id` of containerd namespace `namespace` under `root`.
    pub fn path_of(root: &Path, namespace: &str, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        validate_namespace(namespace)?;
        Ok(root.join(namespace).join(dir_name(id)))
    }

    /// Creates and locks the directory (mode 0700). One a dead shim left under the same name
    /// is removed first; one a live shim holds is an error.
    pub fn create(root: &Path, namespace: &str, id: &str) -> Result<WorkDir> {
        let dir = Self::path_of(root, namespace, id)?;
        let parent = dir.parent().unwrap_or(root);
        fs::create_dir_all(parent).map_err(|e| ShimError::io("create image work directory", parent, e))?;
        for _ in 0..CREATE_TRIES {
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match try_lock(&dir)? {
                    Some(_stale) => {
                        log::info!("removing {} left by a shim that died", dir.display());
                        remove_tree(&dir)?;
                        continue;
                    }
                    None => return Err(ShimError::AlreadyExists { kind: "husk image work directory", id: dir.display().to_string() }),
                },
                Err(e) => return Err(ShimError::io("create image work directory", &dir, e)),
            }
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| ShimError::io("chmod", &dir, e))?;
            // A sweep may remove the fresh, still unlocked directory: then make it again.
            if let Some(lock) = try_lock(&dir)? {
                return Ok(WorkDir { dir, _lock: lock });
            }
        }
        Err(ShimError::io("create image work directory", &dir, std::io::Error::other("removed by a concurrent sweep each time")))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Removes the directory with every image in it, and the namespace directory above once
    /// that is empty. Missing is fine.
    pub fn remove(&self) -> Result<()> {
        remove_tree(&self.dir)?;
        if let Some(ns) = self.dir.parent() {
            // Fails while another sandbox of the namespace is there: fine.
            let _ = fs::remove_dir(ns);
        }
        Ok(())
    }
}

/// Removes the sandbox directories under `root` that no live shim holds (left by a crash or
/// a reboot); returns them. A missing `root` has nothing to sweep.
pub fn sweep(root: &Path) -> Result<Vec<PathBuf>> {
    let subdirs = |p: &Path| -> Result<Vec<PathBuf>> {
        match fs::read_dir(p) {
            Ok(rd) => Ok(rd.flatten().filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false)).map(|e| e.path()).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ShimError::io("read image work directory", p, e)),
        }
    };
    let mut removed = Vec::new();
    for ns in subdirs(root)? {
        for dir in subdirs(&ns)? {
            if let Some(_lock) = try_lock(&dir)? {
                remove_tree(&dir)?;
                log::info!("removed {}, left by a shim that died", dir.display());
                removed.push(dir);
            }
        }
        let _ = fs::remove_dir(&ns);
    }
    Ok(removed)
}

/// Removes the sandbox directory `dir` unless a live shim holds it; whether it was removed.
pub fn remove_abandoned(dir: &Path) -> Result<bool> {
    let Some(_lock) = try_lock(dir)? else { return Ok(false) };
    remove_tree(dir)?;
    if let Some(ns) = dir.parent() {
        let _ = fs::remove_dir(ns);
    }
    Ok(true)
}

/// Bytes allocated on disk to the files under `dir` (images are sparse: what they cost).
pub fn allocated_bytes(dir: &Path) -> u64 {
    walk_allocated(dir, 0)
}

/// Depth bound of [`allocated_bytes`]: the tree is `<sandbox>/containers/<id>/rootfs.img`.
const MAX_DEPTH: usize = 4;

fn walk_allocated(dir: &Path, depth: usize) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut total = 0;
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() && depth < MAX_DEPTH {
            total += walk_allocated(&e.path(), depth + 1);
        } else if m.is_file() {
            total += m.blocks() * 512;
        }
    }
    total
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_live_shims_directory_stays_and_a_dead_ones_goes() {
        let root = tempfile::tempdir().unwrap();
        let live = WorkDir::create(root.path(), "default", "live").unwrap();
        assert_eq!(live.path(), root.path().join("default/live"));
        fs::write(live.path().join("rootfs.img"), vec![1u8; 8192]).unwrap();
        assert!(allocated_bytes(live.path()) >= 8192);
        // A second shim for the same sandbox is refused while the first lives.
        let e = WorkDir::create(root.path(), "default", "live").unwrap_err();
        assert!(e.to_string().contains("default/live"), "{e}");
        // What a crashed shim leaves: a directory nobody locks, with an image in it.
        let dead = root.path().join("k8s.io/dead");
        fs::create_dir_all(dead.join("containers/c1")).unwrap();
        fs::write(dead.join("containers/c1/rootfs.img"), b"x").unwrap();
        assert_eq!(sweep(root.path()).unwrap(), vec![dead.clone()]);
        assert!(!dead.exists() && !root.path().join("k8s.io").exists());
        assert!(live.path().join("rootfs.img").exists());
        assert!(!remove_abandoned(live.path()).unwrap(), "held by a live shim");
        live.remove().unwrap();
        assert!(!root.path().join("default").exists());
        assert!(sweep(&root.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn a_dead_shims_directory_of_the_same_id_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let stale = root.path().join("default/sb");
        fs::create_dir_all(&stale).unwrap();
        fs::write(stale.join("rootfs.img"), b"old").unwrap();
        let w = WorkDir::create(root.path(), "default", "sb").unwrap();
        assert!(!w.path().join("rootfs.img").exists());
        drop(w);
        assert!(remove_abandoned(&stale).unwrap() && !stale.exists());
        assert!(WorkDir::create(root.path(), "default", "../x").is_err());
    }

    #[test]
    fn an_unwritable_root_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("not-a-dir");
        fs::write(&file, b"").unwrap();
        let e = WorkDir::create(&file, "default", "sb").unwrap_err();
        assert!(crate::error::chain(&e).contains("not-a-dir"), "{}", crate::error::chain(&e));
    }
}
