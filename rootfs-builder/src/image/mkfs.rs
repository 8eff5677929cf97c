//! Running mkfs.ext4 / mkfs.erofs on a directory tree, with the ext4 size computed from the
//! content.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{io_err, scratch, FsType, ImageError, ImageOptions};

const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;
/// Journal of a writable ext4 image: small filesystems get the 4 MiB minimum (mke2fs wants
/// the journal under half the filesystem), others 16 MiB.
fn journal_mib(fs_without_journal: u64) -> u64 {
    if fs_without_journal < 64 * MIB {
        4
    } else {
        16
    }
}
const MIB: u64 = 1 << 20;

/// What a tree needs on an ext4 filesystem.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Data and directory blocks, in bytes.
    pub bytes: u64,
    /// Inodes (files, dirs, links, nodes).
    pub inodes: u64,
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// Walks `dir` (not following symlinks, not leaving its filesystem) and adds up what its
/// content needs: hard-linked files count once.
pub(crate) fn tree_usage(dir: &Path) -> Result<Usage, ImageError> {
    let mut usage = Usage::default();
    let mut seen = HashSet::new();
    for entry in walkdir::WalkDir::new(dir).same_file_system(true) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            ImageError::Io { op: "walk", path, source: e.into_io_error().unwrap_or_else(|| io::Error::other("filesystem loop")) }
        })?;
        let meta = entry.metadata().map_err(|e| ImageError::Io {
            op: "stat",
            path: entry.path().to_path_buf(),
            source: e.into_io_error().unwrap_or_else(|| io::Error::other("stat failed")),
        })?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        usage.inodes += 1;
        let name_len = entry.file_name().len() as u64;
        // A directory entry: 8 bytes plus the name, 4-byte aligned.
        usage.bytes += round_up(8 + name_len, 4);
        if meta.is_dir() {
            usage.bytes += BLOCK;
        } else if meta.is_file() {
            usage.bytes += round_up(meta.len(), BLOCK);
        } else if meta.file_type().is_symlink() && meta.len() >= 60 {
            usage.bytes += BLOCK;
        }
    }
    Ok(usage)
}

/// Size of an ext4 image for `usage`: data plus metadata overhead, plus `headroom`.
pub(crate) fn ext4_size(usage: Usage, inodes: u64, headroom: u64, journal: bool) -> u64 {
    // Bitmaps, group descriptors, extent blocks and allocation slack: ~6% of the data.
    let data = usage.bytes + usage.bytes / 16;
    let base = data + inodes * INODE_SIZE + 8 * MIB + headroom;
    round_up(base + if journal { journal_mib(base) * MIB } else { 0 }, MIB)
}

/// Blocks allocated to `path`, in bytes (what a sparse file really costs).
pub(crate) fn allocated(path: &Path) -> Result<u64, ImageError> {
    Ok(fs::metadata(path).map_err(io_err("stat", path))?.blocks() * 512)
}

/// Makes `cmd` die (SIGKILL) when the thread that spawns it dies: with the builder (the shim
/// or husk-rootfs), also when that is SIGKILLed, so no mkfs outlives it writing a temporary
/// image nobody will use. The parent-death signal follows the spawning thread, not the
/// process: callers spawn from the thread that waits for the child ([`run`] does), so the
/// thread lives exactly as long as the child matters.
fn die_with_builder(cmd: &mut Command) {
    let builder = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes two system
    // calls (prctl, getppid), which are async-signal-safe; it touches no memory it shares
    // with the parent.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The builder died between fork and prctl: the signal will never come.
            if nix::unistd::getppid() != builder {
                return Err(io::Error::other("the builder died before mkfs started"));
            }
            Ok(())
        });
    }
}

fn run(tool: &Path, package: &'static str, args: Vec<std::ffi::OsString>, image: &Path, src: &Path) -> Result<(), ImageError> {
    let mut cmd = Command::new(tool);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    die_with_builder(&mut cmd);
    // output() spawns and waits on this thread: the parent-death signal's thread.
    let out = cmd.output().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ImageError::ToolMissing { tool: tool.to_path_buf(), package },
        _ => ImageError::Io { op: "run", path: tool.to_path_buf(), source: e },
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(ImageError::MkfsFailed {
            tool: tool.to_path_buf(),
            image: image.to_path_buf(),
            source_dir: src.to_path_buf(),
            status: out.status,
            stderr: stderr.trim().chars().take(2000).collect(),
        });
    }
    Ok(())
}

/// Makes the filesystem of `src` in the (new or empty) file `image`. `writable` asks for a
/// journal and `opts.ext4_headroom` of free space on ext4.
pub(crate) fn mkfs(src: &Path, image: &Path, opts: &ImageOptions, writable: bool) -> Result<(), ImageError> {
    match opts.fstype {
        FsType::Ext4 => {
            let usage = tree_usage(src)?;
            let headroom = if writable { opts.ext4_headroom } else { 0 };
            // Room for new files in the headroom: one inode per 16 KiB.
            let inodes = usage.inodes + usage.inodes / 10 + 64 + headroom / 16384;
            let size = ext4_size(usage, inodes, headroom, writable);
            // A fresh sparse file reads as zeros: mkfs need not write the inode tables and
            // journal (assume_storage_prezeroed), so unused space costs nothing on the host.
            let file = fs::OpenOptions::new().write(true).create(true).truncate(true).open(image).map_err(io_err("create", image))?;
            file.set_len(size).map_err(io_err("size", image))?;
            drop(file);
            let mut args: Vec<std::ffi::OsString> =
                ["-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0", "-E", "nodiscard,assume_storage_prezeroed=1"].iter().map(Into::into).collect();
            args.push("-N".into());
            args.push(inodes.to_string().into());
            if writable {
                let journal = journal_mib(ext4_size(usage, inodes, headroom, false));
                args.extend(["-J".into(), format!("size={journal}").into()]);
            } else {
                args.extend(["-O".into(), "^has_journal".into()]);
            }
            args.extend(["-d".into(), src.as_os_str().to_owned(), image.as_os_str().to_owned()]);
            run(&opts.tools.mkfs_ext4, "e2fsprogs", args, image, src)?;
            // mkfs.ext4 always adds lost+found; a container must see exactly its image's
            // content (runc shows no lost+found), so it goes unless the tree has one itself.
            if fs::symlink_metadata(src.join("lost+found")).is_err() {
                let args = vec!["-w".into(), "-R".into(), "rmdir lost+found".into(), image.as_os_str().to_owned()];
                run(&opts.tools.debugfs, "e2fsprogs", args, image, src)?;
            }
            Ok(())
        }
        FsType::Erofs => {
            let mut args: Vec<std::ffi::OsString> = vec!["--quiet".into()];
            if let Some(c) = &opts.erofs_compressor {
                args.push(format!("-z{c}").into());
            }
            args.extend([image.as_os_str().to_owned(), src.as_os_str().to_owned()]);
            run(&opts.tools.mkfs_erofs, "erofs-utils", args, image, src)
        }
    }
}

/// Directory for temporary files next to `path`.
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Runs `build` on a temporary file beside `opts.output` and renames it there, so a reader
/// never sees a half-built image (the temporary file is removed on error). Returns what
/// `build` returns.
pub(crate) fn persist_via_temp(opts: &ImageOptions, build: impl FnOnce(&Path) -> Result<u64, ImageError>) -> Result<u64, ImageError> {
    let dir = parent_dir(&opts.output);
    scratch::sweep_dead_builders(&dir)?;
    let tmp = scratch::LockedTemp::new(&dir, scratch::IMAGE_TMP)?;
    let bytes = build(tmp.path())?;
    tmp.persist(&opts.output, "rename the image to")?;
    Ok(bytes)
}

/// Builds the image of `src` at `opts.output` (through a temporary file).
/// Returns the allocated bytes of the image.
pub(crate) fn build_to_output(src: &Path, opts: &ImageOptions, read_only: bool) -> Result<u64, ImageError> {
    persist_via_temp(opts, |tmp| {
        mkfs(src, tmp, opts, !read_only && opts.fstype == FsType::Ext4)?;
        allocated(tmp)
    })
}
