//! The `husk-rootfs` command line: outputs and error messages a user sees.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::fs;
use std::process::{Command, Output};

use common::*;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk-rootfs")).args(args).output().unwrap()
}

fn fails_with(args: &[&str], want: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(stderr.contains(want), "{args:?}: stderr {stderr:?} should contain {want:?}");
}

#[test]
fn initramfs_command_builds_a_reproducible_archive() {
    let t = tmp();
    let conf = t.path().join("c");
    fs::write(&conf, "x").unwrap();
    let add = format!("{}:/etc/husk.conf", conf.display());
    let a = t.path().join("a.cpio.gz");
    let b = t.path().join("b.cpio.gz");
    for out in [&a, &b] {
        let o = run(&["initramfs", "--agent", STATIC_BIN, "--add", &add, "-o", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    let listed = sh("sh", &["-c", &format!("zcat {} | cpio -t --quiet", a.display())]);
    assert!(listed.lines().any(|l| l == "etc/husk.conf") && listed.lines().any(|l| l == "init"), "{listed}");
}

#[test]
fn initramfs_errors() {
    let exe = std::env::current_exe().unwrap();
    fails_with(&["initramfs", "--agent", exe.to_str().unwrap(), "-o", "/tmp/x.gz"], "dynamically linked");
    fails_with(&["initramfs", "--agent", STATIC_BIN, "--add", "nocolon", "-o", "/tmp/x.gz"], "expected SRC:DEST");
    fails_with(&["initramfs", "--agent", STATIC_BIN, "-o", "/nonexistent-dir/x.gz"], "/nonexistent-dir/x.gz");
}

#[test]
fn image_command_from_dir_and_cached_layers() {
    let t = tmp();
    let src = t.path().join("src");
    sample_tree(&src);
    let out = t.path().join("a.ext4");
    let o = run(&["image", "--from-dir", src.to_str().unwrap(), "--fstype", "ext4", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ext4 rw built"));
    assert_eq!(ext4_cat(&out, "/etc/hostname"), "husk\n");

    let layer = Layer::new().dir("etc/").file("etc/os", "husk").write_gz(&t.path().join("l.tgz"));
    let cache = t.path().join("cache");
    let img = t.path().join("img.erofs");
    let args = ["image", "--layer", layer.to_str().unwrap(), "--fstype", "erofs", "--cache", cache.to_str().unwrap(), "-o", img.to_str().unwrap()];
    let first = run(&args);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("erofs ro built"));
    let second = run(&args);
    assert!(String::from_utf8_lossy(&second.stdout).contains("cached bytes_written=0"), "{}", String::from_utf8_lossy(&second.stdout));
    // The output is a symlink into the cache: nothing copied.
    let target = fs::read_link(&img).unwrap();
    assert!(target.starts_with(&cache), "{target:?}");
    let m = LoopMount::new(&img);
    assert_eq!(fs::read_to_string(m.path().join("etc/os")).unwrap(), "husk");
}

#[test]
fn image_command_from_overlay_mount() {
    let t = tmp();
    let (l1, l2, u) = (t.path().join("l1"), t.path().join("l2"), t.path().join("u"));
    for d in [&l1, &l2, &u] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(l1.join("a"), "1").unwrap();
    fs::write(l2.join("b"), "2").unwrap();
    let out = t.path().join("r.ext4");
    let mount = format!("overlay:overlay:lowerdir={}:{},upperdir={},workdir={}", l2.display(), l1.display(), u.display(), u.display());
    let o = run(&["image", "--mount", &mount, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(ext4_names(&out, "/"), ["a", "b"]);
}

#[test]
fn image_command_errors() {
    let t = tmp();
    let out = t.path().join("o.img");
    let o = out.to_str().unwrap();
    fails_with(&["image", "--from-dir", "/nonexistent/tree", "-o", o], "/nonexistent/tree");
    fails_with(&["image", "--from-dir", "/tmp", "--fstype", "btrfs", "-o", o], "unknown filesystem type \"btrfs\"");
    let junk = t.path().join("layer.bin");
    fs::write(&junk, "nope").unwrap();
    fails_with(&["image", "--layer", junk.to_str().unwrap(), "-o", o], "not a tar, gzip or zstd");
    let tar = Layer::new().file("f", "x").write_tar(&t.path().join("l.tar"));
    fails_with(
        &["image", "--layer", tar.to_str().unwrap(), "--layer-media-type", "application/vnd.oci.image.layer.v1.tar+bzip2", "-o", o],
        "unsupported media type \"application/vnd.oci.image.layer.v1.tar+bzip2\"",
    );
    fails_with(&["image", "--mount", "tmpfs:none:size=1m", "-o", o], "unsupported rootfs mount type \"tmpfs\"");
    fails_with(&["image", "-o", o], "--from-dir, --layer or --mount");
    for (fstype, pkg) in [("ext4", "install e2fsprogs"), ("erofs", "install erofs-utils")] {
        let out = Command::new(env!("CARGO_BIN_EXE_husk-rootfs"))
            .args(["image", "--from-dir", "/tmp", "--fstype", fstype, "-o", o])
            .env("PATH", "/nonexistent")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(pkg), "{stderr}");
    }
    assert!(!out.exists());
}
