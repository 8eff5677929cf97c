//! Helpers shared by the husk-rootfs integration tests.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A statically linked binary present on every husk host (busybox-static is in deps.sh).
pub const STATIC_BIN: &str = "/bin/busybox";

pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("husk-rootfs-test-").tempdir().unwrap()
}

/// Runs a command, panicking with its output if it fails; returns stdout.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Entries of directory `dir` in an ext4 image, read with debugfs (no mount):
/// (name, mode, uid, gid).
pub fn ext4_ls(img: &Path, dir: &str) -> Vec<(String, u32, u32, u32)> {
    let out = sh("debugfs", &["-R", &format!("ls -p {dir}"), img.to_str().unwrap()]);
    let mut v: Vec<_> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            if f.len() < 6 || f[5] == "." || f[5] == ".." {
                return None;
            }
            Some((f[5].to_string(), u32::from_str_radix(f[2], 8).ok()?, f[3].parse().ok()?, f[4].parse().ok()?))
        })
        .collect();
    v.sort();
    v
}

pub fn ext4_names(img: &Path, dir: &str) -> Vec<String> {
    ext4_ls(img, dir)
        .into_iter()
        .map(|e| e.0)
        // debugfs lists the unused slots of a preallocated directory as empty names.
        .filter(|n| !n.is_empty())
        .collect()
}

pub fn ext4_cat(img: &Path, file: &str) -> String {
    sh("debugfs", &["-R", &format!("cat {file}"), img.to_str().unwrap()])
}

/// A loop mount of an image, unmounted on drop (also when a test fails).
pub struct LoopMount {
    pub dir: tempfile::TempDir,
}

impl LoopMount {
    pub fn new(img: &Path) -> Self {
        let dir = tmp();
        sh("mount", &["-o", "loop,ro", img.to_str().unwrap(), dir.path().to_str().unwrap()]);
        LoopMount { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        unmount(self.dir.path());
    }
}

/// Unmounts `dir`, retrying while something (another process walking /tmp) keeps it busy,
/// then detaching it lazily: a test never leaves a mount behind.
pub fn unmount(dir: &Path) {
    for _ in 0..20 {
        if Command::new("umount").arg(dir).status().map(|s| s.success()).unwrap_or(false) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

/// A sample tree: files, a hard link, a symlink, a device node, an owned file, an empty dir.
pub fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("etc/hostname"), "husk\n").unwrap();
    fs::hard_link(root.join("etc/hostname"), root.join("etc/hostname.link")).unwrap();
    fs::copy(STATIC_BIN, root.join("bin/busybox")).unwrap();
    symlink("busybox", root.join("bin/sh")).unwrap();
    sh("mknod", &[root.join("etc/null").to_str().unwrap(), "c", "1", "3"]);
    fs::write(root.join("etc/owned"), "x").unwrap();
    std::os::unix::fs::chown(root.join("etc/owned"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(root.join("etc/owned"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
}

/// A tar layer built with the tar crate: entries (path, content or None for a dir).
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Layer {
    pub fn new() -> Self {
        Layer { b: tar::Builder::new(Vec::new()) }
    }
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }
    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    pub fn file(self, path: &str, content: &str) -> Self {
        self.data(path, content.as_bytes())
    }
    pub fn data(mut self, path: &str, content: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, content.len() as u64);
        self.b.append_data(&mut h, path, content).unwrap();
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }
    pub fn chardev(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    pub fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
    pub fn write_tar(self, path: &Path) -> PathBuf {
        fs::write(path, self.bytes()).unwrap();
        path.to_path_buf()
    }
    pub fn write_gz(self, path: &Path) -> PathBuf {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&self.bytes()).unwrap();
        fs::write(path, gz.finish().unwrap()).unwrap();
        path.to_path_buf()
    }
}

/// Files in `dir` (non-recursive) whose name starts with `prefix`.
pub fn leftovers(dir: &Path, prefix: &str) -> Vec<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(prefix)).collect()
}

/// Mount points of this host containing `needle`.
pub fn mounts_containing(needle: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
}

pub fn mtime_ns(p: &Path) -> i128 {
    let m = fs::metadata(p).unwrap();
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}
