//! Images from a directory: content as the guest will see it, sparseness, and errors.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;
use husk_rootfs::{image_from_dir, FsType, ImageError, ImageOptions};

#[test]
fn ext4_from_dir_has_the_tree_without_mounting() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let out = t.path().join("rootfs.ext4");
    let built = image_from_dir(&src, &ImageOptions::new(FsType::Ext4, &out)).unwrap();
    assert_eq!(built.path, out);
    assert_eq!(built.fstype, FsType::Ext4);
    assert!(!built.read_only && !built.from_cache && built.cache_key.is_none());
    sh("e2fsck", &["-fn", out.to_str().unwrap()]);
    assert_eq!(ext4_names(&out, "/"), ["bin", "empty", "etc"]);
    let etc = ext4_ls(&out, "/etc");
    assert!(etc.contains(&("null".into(), 0o020644, 0, 0)), "{etc:?}");
    assert!(etc.contains(&("owned".into(), 0o100640, 1234, 5678)), "{etc:?}");
    assert_eq!(ext4_cat(&out, "/etc/hostname"), "husk\n");
    let bin = ext4_ls(&out, "/bin");
    assert!(bin.iter().any(|e| e.0 == "sh" && e.1 & 0o170000 == 0o120000), "{bin:?}");
    // The hard link is one inode.
    let inode = |p: &str| sh("debugfs", &["-R", &format!("stat {p}"), out.to_str().unwrap()]).split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(inode("/etc/hostname"), inode("/etc/hostname.link"));
    // Sized from the content plus headroom, but sparse: allocated far below the apparent size.
    let m = fs::metadata(&out).unwrap();
    assert!(m.len() >= 256 << 20, "headroom included: {}", m.len());
    assert!(m.blocks() * 512 < 16 << 20, "sparse: {} bytes allocated", m.blocks() * 512);
    assert_eq!(built.bytes_written, m.blocks() * 512);
}

#[test]
fn ext4_keeps_lost_found_only_when_the_tree_has_one() {
    let t = tmp();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("lost+found")).unwrap();
    fs::write(src.join("lost+found/kept"), "x").unwrap();
    let out = t.path().join("with.ext4");
    image_from_dir(&src, &ImageOptions::new(FsType::Ext4, &out)).unwrap();
    assert_eq!(ext4_names(&out, "/"), ["lost+found"]);
    assert_eq!(ext4_names(&out, "/lost+found"), ["kept"]);
    sh("e2fsck", &["-fn", out.to_str().unwrap()]);
}

#[test]
fn ext4_image_mounts_with_the_same_content() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let out = t.path().join("rootfs.ext4");
    image_from_dir(&src, &ImageOptions::new(FsType::Ext4, &out)).unwrap();
    let m = LoopMount::new(&out);
    assert_eq!(fs::read(m.path().join("bin/busybox")).unwrap(), fs::read(STATIC_BIN).unwrap());
    assert_eq!(fs::read_link(m.path().join("bin/sh")).unwrap().to_str(), Some("busybox"));
    let owned = fs::metadata(m.path().join("etc/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid(), owned.permissions().mode() & 0o7777), (1234, 5678, 0o640));
}

#[test]
fn erofs_from_dir_is_read_only_and_complete() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let out = t.path().join("rootfs.erofs");
    let built = image_from_dir(&src, &ImageOptions::new(FsType::Erofs, &out)).unwrap();
    assert!(built.read_only);
    sh("fsck.erofs", &[out.to_str().unwrap()]);
    let m = LoopMount::new(&out);
    assert_eq!(fs::read_to_string(m.path().join("etc/hostname.link")).unwrap(), "husk\n");
    let a = fs::metadata(m.path().join("etc/hostname")).unwrap();
    let b = fs::metadata(m.path().join("etc/hostname.link")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link kept");
    let null = fs::metadata(m.path().join("etc/null")).unwrap();
    assert_eq!((null.mode() & 0o170000, null.rdev()), (0o020000, libc::makedev(1, 3)));
    assert_eq!(fs::read(m.path().join("bin/busybox")).unwrap(), fs::read(STATIC_BIN).unwrap());
    // erofs holds just the content (busybox is ~2 MB).
    assert!(fs::metadata(&out).unwrap().len() < 3 << 20);
}

#[test]
fn many_small_files_fit_in_ext4() {
    // The inode count comes from the content, not from mke2fs' bytes-per-inode default.
    let t = tmp();
    let src = t.path().join("src");
    for d in 0..20 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..250 {
            fs::write(src.join(format!("d{d}/f{f}")), "").unwrap();
        }
    }
    let mut opts = ImageOptions::new(FsType::Ext4, t.path().join("small.ext4"));
    opts.ext4_headroom = 0;
    image_from_dir(&src, &opts).unwrap();
    assert_eq!(ext4_names(&opts.output, "/d19").len(), 250);
}

#[test]
fn missing_source_directory_is_named() {
    let t = tmp();
    let out = t.path().join("x.ext4");
    let err = image_from_dir(&t.path().join("nope"), &ImageOptions::new(FsType::Ext4, &out)).unwrap_err();
    assert!(matches!(err, ImageError::MissingDir { .. }));
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(!out.exists());
}

#[test]
fn missing_mkfs_tool_says_which_package() {
    let t = tmp();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    for (fstype, pkg) in [(FsType::Ext4, "e2fsprogs"), (FsType::Erofs, "erofs-utils")] {
        let out = t.path().join("x.img");
        let mut opts = ImageOptions::new(fstype, &out);
        opts.tools.mkfs_ext4 = "/nonexistent/mkfs.ext4".into();
        opts.tools.mkfs_erofs = "/nonexistent/mkfs.erofs".into();
        let err = image_from_dir(&src, &opts).unwrap_err();
        assert!(matches!(err, ImageError::ToolMissing { .. }), "{err:?}");
        assert!(err.to_string().contains(&format!("install {pkg}")), "{err}");
        assert!(!out.exists());
        assert!(leftovers(t.path(), ".husk-img-").is_empty());
    }
}

/// A tmpfs of `size`, unmounted on drop.
struct SmallFs(tempfile::TempDir);
impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn full_disk_reports_the_mkfs_error_with_the_image_path() {
    let t = tmp();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    // Random data: incompressible, 3 MiB.
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    fs::write(src.join("big"), &data).unwrap();
    let small = SmallFs(tmp());
    sh("mount", &["-t", "tmpfs", "-o", "size=1m", "tmpfs", small.0.path().to_str().unwrap()]);
    for fstype in [FsType::Ext4, FsType::Erofs] {
        let out = small.0.path().join(format!("rootfs.{fstype}"));
        let err = image_from_dir(&src, &ImageOptions::new(fstype, &out)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ImageError::MkfsFailed { .. }), "{err:?}");
        assert!(msg.contains(small.0.path().to_str().unwrap()) && msg.contains("mkfs"), "{msg}");
        assert!(!out.exists());
        assert!(leftovers(small.0.path(), ".husk-img-").is_empty(), "temp image removed");
    }
}
