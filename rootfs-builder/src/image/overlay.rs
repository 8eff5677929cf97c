//! A read-only merged view of overlay layers, mounted in a private mount namespace.
//!
//! The view is mounted by a dedicated thread that first unshares its mount namespace (and with
//! it its filesystem context) and makes every mount private: the overlay is invisible to the
//! rest of the host, and it disappears with the thread even if the process dies mid-build.
//! Programs the closure spawns (mkfs) inherit the thread's namespace and see the view.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::{io_err, ImageError};

/// Longest mount data the kernel accepts (one page, with room for the terminator).
const MAX_MOUNT_DATA: usize = 4000;

/// The longest common ancestor directory of `paths` (all absolute).
fn common_dir(paths: &[PathBuf]) -> PathBuf {
    let mut common = paths.first().and_then(|p| p.parent()).map(Path::to_path_buf).unwrap_or_default();
    for p in paths {
        while !p.starts_with(&common) {
            if !common.pop() {
                break;
            }
        }
    }
    common
}

fn lowerdir_option(layers: &[PathBuf]) -> Result<String, ImageError> {
    let mut parts = Vec::with_capacity(layers.len());
    for l in layers {
        let s = l.to_str().filter(|s| !s.contains([':', ',', '\\']));
        let s =
            s.ok_or_else(|| ImageError::BadMount { spec: l.display().to_string(), reason: "overlay layer paths must be UTF-8 without ':', ',' or '\\'" })?;
        parts.push(s.to_string());
    }
    Ok(format!("lowerdir={}", parts.join(":")))
}

fn sys<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> ImageError + 'a {
    move |source| ImageError::Sys { op, path: path.to_path_buf(), source }
}

fn mount_view(layers: &[PathBuf], target: &Path) -> Result<(), ImageError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare the mount namespace for", target))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).map_err(sys("make mounts private for", target))?;
    let mut options = lowerdir_option(layers)?;
    if options.len() > MAX_MOUNT_DATA {
        // Too long for one page: name the layers relative to their common parent, made the
        // current directory of this thread only (the unshare above gave it its own).
        let common = common_dir(layers);
        nix::unistd::chdir(&common).map_err(sys("enter", &common))?;
        let rel: Vec<PathBuf> = layers.iter().map(|l| l.strip_prefix(&common).map(Path::to_path_buf).unwrap_or_else(|_| l.clone())).collect();
        options = lowerdir_option(&rel)?;
    }
    mount(Some("overlay"), target, Some("overlay"), MsFlags::MS_RDONLY, Some(options.as_str())).map_err(|source| ImageError::OverlayMount {
        options,
        target: target.to_path_buf(),
        source,
    })
}

/// Runs `f` on a read-only merged view of `layers` (topmost first, absolute paths), mounted
/// on a fresh directory under `work`. The view is unmounted afterwards, also on error.
pub(crate) fn with_merged_view<T: Send>(layers: &[PathBuf], work: &Path, f: impl FnOnce(&Path) -> Result<T, ImageError> + Send) -> Result<T, ImageError> {
    std::fs::create_dir_all(work).map_err(io_err("create work directory", work))?;
    super::scratch::sweep_dead_builders(work)?;
    let mp = super::scratch::LockedTempDir::new(work, super::scratch::VIEW_DIR, "create mount point in")?;
    let target = std::fs::canonicalize(mp.path()).map_err(io_err("resolve", mp.path()))?;
    let result = std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("husk-rootfs-view".into())
            .spawn_scoped(s, || {
                mount_view(layers, &target)?;
                let r = f(&target);
                // The namespace dies with this thread anyway; unmount explicitly regardless.
                let u = umount2(&target, MntFlags::MNT_DETACH).map_err(|source| ImageError::Sys { op: "unmount", path: target.clone(), source });
                let v = r?;
                u.map(|()| v)
            })
            .map_err(io_err("spawn a thread to mount", &target))?;
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    mp.close()?;
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn common_dir_of_layers() {
        let l = vec![PathBuf::from("/var/lib/s/1/fs"), PathBuf::from("/var/lib/s/22/fs")];
        assert_eq!(common_dir(&l), PathBuf::from("/var/lib/s"));
        assert!(lowerdir_option(&[PathBuf::from("/a:b")]).is_err());
        assert_eq!(lowerdir_option(&l).unwrap(), "lowerdir=/var/lib/s/1/fs:/var/lib/s/22/fs");
    }
}
