//! The shared directory of one sandbox and the bind mounts under it.
//!
//! `shared` is a bind mount of itself in a peer group of its own (private, then shared):
//! mounts made under it later propagate to virtiofsd's slave copy of the tree, and nowhere
//! else. Mount flags do not propagate, though: a bind mount remounted read-only under
//! `shared` would stay writable in virtiofsd's copy, and so for the guest. So each volume is
//! bind-mounted (and, if read-only, remounted read-only) in `staging`, a private bind mount of
//! itself beside `shared`, and then moved under `shared`: the copy that propagates is made
//! from the finished mount, read-only flag included. As with runc's `ro`, the read-only flag
//! is on the volume's top mount; mounts below it in the source keep their own flags.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

use super::source::{resolve_source, SourceKind};
use super::{Result, SharedFsError};

/// Longest part of a share's name taken from its source's file name.
const MAX_NAME_STEM: usize = 48;

/// One exposed volume.
#[derive(Debug)]
struct Share {
    target: PathBuf,
    kind: SourceKind,
}

/// A sandbox's shared directory: what virtiofsd serves to the guest.
#[derive(Debug)]
pub struct SharedDir {
    path: PathBuf,
    staging: PathBuf,
    shares: BTreeMap<String, Share>,
    next: u64,
    /// `path` and `staging` are mounted (until teardown).
    mounted: bool,
}

impl SharedDir {
    /// Creates the directory `path` (it must not exist; its parent must) and `<path>-staging`
    /// beside it, and sets up their mounts. On error nothing is left.
    pub fn create(path: &Path) -> Result<Self> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| SharedFsError::Io { op, path, source }
        };
        let staging = sibling(path, "-staging");
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o755);
        builder.create(path).map_err(io("create the shared directory", path))?;
        if let Err(e) = builder.create(&staging) {
            let _ = std::fs::remove_dir(path);
            return Err(io("create the staging directory", &staging)(e));
        }
        let canonical = |p: &Path| std::fs::canonicalize(p).map_err(io("resolve", p));
        let mut dir = SharedDir { path: path.to_path_buf(), staging: staging.clone(), shares: BTreeMap::new(), next: 0, mounted: true };
        let set_up = (|| {
            dir.path = canonical(path)?;
            dir.staging = canonical(&staging)?;
            self_bind(&dir.path, MsFlags::MS_SHARED)?;
            self_bind(&dir.staging, MsFlags::MS_PRIVATE)
        })();
        match set_up {
            Ok(()) => Ok(dir),
            Err(e) => {
                let _ = dir.teardown();
                Err(e)
            }
        }
    }

    /// The shared directory (what virtiofsd's `--shared-dir` names).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether its mounts are still set up (until [`SharedDir::teardown`]).
    pub fn is_mounted(&self) -> bool {
        self.mounted
    }

    /// The names of the current shares.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shares.keys().map(String::as_str)
    }

    /// Exposes the host path `source` (a directory, or a single file such as `/etc/hosts`)
    /// in the shared directory with a recursive bind mount, read-only if asked; returns the
    /// name it has there (the guest finds it at `<mount point of the tag>/<name>`). Symlinks
    /// in `source` are resolved on the host; sockets, devices, FIFOs and paths that do not
    /// exist are refused. On error nothing is left.
    pub fn share(&mut self, source: &Path, read_only: bool) -> Result<String> {
        let src = resolve_source(source, &self.path)?;
        let name = format!("{}-{}", self.next, stem(&src.resolved));
        self.next += 1;
        let staged = self.staging.join(&name);
        let target = self.path.join(&name);
        make_mount_point(&staged, src.kind)?;
        let staged_ready = (|| {
            let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(Some(&src.proc_path()), &staged, None::<&str>, bind, None::<&str>).map_err(mount_err("bind-mount the volume at", &staged))?;
            // Nothing flows between the host's source and the guest's view afterwards.
            mount(None::<&str>, &staged, None::<&str>, MsFlags::MS_PRIVATE | MsFlags::MS_REC, None::<&str>).map_err(mount_err("make private", &staged))?;
            if read_only {
                remount_read_only(&staged)?;
            }
            make_mount_point(&target, src.kind)
        })();
        if let Err(e) = staged_ready {
            let _ = umount2(&staged, MntFlags::MNT_DETACH);
            remove_mount_point(&staged, src.kind);
            return Err(e);
        }
        if let Err(e) = mount(Some(&staged), &target, None::<&str>, MsFlags::MS_MOVE, None::<&str>) {
            let _ = umount2(&staged, MntFlags::MNT_DETACH);
            remove_mount_point(&staged, src.kind);
            remove_mount_point(&target, src.kind);
            return Err(mount_err("move the volume to", &target)(e));
        }
        remove_mount_point(&staged, src.kind);
        log::info!("sharedfs: {source:?} ({}) shared as {name}{}", src.resolved.display(), if read_only { ", read-only" } else { "" });
        self.shares.insert(name.clone(), Share { target, kind: src.kind });
        Ok(name)
    }

    /// Removes the share `name`: unmounts it (with whatever is mounted below it) and removes
    /// its mount point.
    pub fn unshare(&mut self, name: &str) -> Result<()> {
        let share = self.shares.remove(name).ok_or_else(|| SharedFsError::NotShared(name.to_string()))?;
        if let Err(e) = umount2(&share.target, MntFlags::MNT_DETACH) {
            let err = mount_err("unmount", &share.target)(e);
            self.shares.insert(name.to_string(), share);
            return Err(err);
        }
        remove_mount_point(&share.target, share.kind);
        Ok(())
    }

    /// Removes every share, the directory's own mounts and both directories. Safe to call
    /// again; every step is attempted, the first error is returned.
    pub fn teardown(&mut self) -> Result<()> {
        let mut first = None;
        let names: Vec<String> = self.shares.keys().cloned().collect();
        for name in names {
            if let Err(e) = self.unshare(&name) {
                first.get_or_insert(e);
            }
        }
        if std::mem::take(&mut self.mounted) {
            for dir in [&self.path, &self.staging] {
                match umount2(dir, MntFlags::MNT_DETACH) {
                    Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                    Err(e) => {
                        first.get_or_insert(mount_err("unmount", dir)(e));
                    }
                }
            }
            for dir in [&self.path, &self.staging] {
                match std::fs::remove_dir(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        first.get_or_insert(SharedFsError::Io { op: "remove", path: dir.clone(), source });
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn mount_err(op: &'static str, target: &Path) -> impl FnOnce(nix::Error) -> SharedFsError {
    let target = target.to_path_buf();
    move |source| SharedFsError::Mount { op, target, source }
}

/// `<path><suffix>` beside `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Bind-mounts `dir` onto itself, in a peer group of its own, then gives it `propagation`.
fn self_bind(dir: &Path, propagation: MsFlags) -> Result<()> {
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(mount_err("bind-mount onto itself", dir))?;
    mount(None::<&str>, dir, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>).map_err(mount_err("make private", dir))?;
    if propagation != MsFlags::MS_PRIVATE {
        mount(None::<&str>, dir, None::<&str>, propagation, None::<&str>).map_err(mount_err("set the propagation of", dir))?;
    }
    Ok(())
}

/// Remounts the bind mount at `target` read-only, keeping the flags a remount must not drop
/// (nosuid, nodev, noexec, atime flags), as runc does.
fn remount_read_only(target: &Path) -> Result<()> {
    let st = statvfs(target).map_err(mount_err("read the mount flags of", target))?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    for (have, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(have) {
            flags |= keep;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(mount_err("remount read-only", target))
}

/// Creates an empty directory or file to mount a volume on.
fn make_mount_point(path: &Path, kind: SourceKind) -> Result<()> {
    let made = match kind {
        SourceKind::Dir => std::fs::DirBuilder::new().mode(0o755).create(path),
        SourceKind::File => std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(path).map(drop),
    };
    made.map_err(|source| SharedFsError::Io { op: "create the mount point", path: path.to_path_buf(), source })
}

/// Removes a mount point made by [`make_mount_point`] (logged if it cannot be).
fn remove_mount_point(path: &Path, kind: SourceKind) {
    let r = match kind {
        SourceKind::Dir => std::fs::remove_dir(path),
        SourceKind::File => std::fs::remove_file(path),
    };
    if let Err(e) = r {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::error!("sharedfs: cannot remove mount point {path:?}: {e}");
        }
    }
}

/// A readable, safe name part from the source's file name: `[A-Za-z0-9._-]`, the rest as
/// `_`, at most [`MAX_NAME_STEM`] bytes, `root` for `/`.
fn stem(resolved: &Path) -> String {
    let base = resolved.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "root".into());
    let s: String = base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).take(MAX_NAME_STEM).collect();
    // Never `.` or `..` (a leading dot cannot make either once the counter is prefixed, but
    // keep the name plain).
    s.trim_start_matches('.').to_string()
}
