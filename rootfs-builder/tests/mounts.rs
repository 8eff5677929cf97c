//! containerd rootfs mounts: overlay (cached lowerdirs, upperdir content kept) and bind.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;

use common::*;
use husk_rootfs::{image_from_mounts, FsType, ImageError, ImageOptions, MountSpec};

/// Two snapshot dirs as containerd's overlay snapshotter leaves them: `l2` (upper layer) hides
/// `l1`'s `etc/gone` with an overlay whiteout (char 0:0) and adds `etc/new`.
fn snapshots(root: &Path) -> (String, String) {
    let (l1, l2) = (root.join("snapshots/1/fs"), root.join("snapshots/2/fs"));
    fs::create_dir_all(l1.join("etc")).unwrap();
    fs::create_dir_all(l2.join("etc")).unwrap();
    fs::write(l1.join("etc/gone"), "old").unwrap();
    fs::write(l1.join("etc/kept"), "k").unwrap();
    sh("mknod", &[l2.join("etc/gone").to_str().unwrap(), "c", "0", "0"]);
    fs::write(l2.join("etc/new"), "n").unwrap();
    (l1.to_str().unwrap().into(), l2.to_str().unwrap().into())
}

fn overlay(lower: &str, upper: &Path, work: &Path) -> MountSpec {
    format!("overlay:overlay:index=off,lowerdir={lower},upperdir={},workdir={}", upper.display(), work.display()).parse().unwrap()
}

fn opts(t: &Path, fstype: FsType) -> ImageOptions {
    let mut o = ImageOptions::new(fstype, t.join(format!("rootfs.{fstype}")));
    o.cache_dir = Some(t.join("cache"));
    o
}

fn no_views_left(t: &Path) {
    assert!(mounts_containing(".husk-view-").is_empty(), "no overlay left mounted");
    assert!(leftovers(t, ".husk-").is_empty(), "no temp dirs left in {}", t.display());
}

#[test]
fn overlay_with_empty_upper_is_a_cached_read_only_image_of_the_lowers() {
    let t = tmp();
    let (l1, l2) = snapshots(t.path());
    let (upper, work) = (t.path().join("3/fs"), t.path().join("3/work"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let m = overlay(&format!("{l2}:{l1}"), &upper, &work);
    let o = opts(t.path(), FsType::Erofs);
    let first = image_from_mounts(std::slice::from_ref(&m), &o).unwrap();
    assert!(first.read_only && !first.from_cache && first.path.starts_with(t.path().join("cache")));
    no_views_left(t.path());
    {
        let mnt = LoopMount::new(&first.path);
        let mut names: Vec<_> = fs::read_dir(mnt.path().join("etc")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["kept", "new"], "the whiteout hides etc/gone");
    }
    // A second container of the same image (another upperdir) copies nothing.
    let upper2 = t.path().join("4/fs");
    fs::create_dir_all(&upper2).unwrap();
    let mtime = mtime_ns(&first.path);
    let second = image_from_mounts(&[overlay(&format!("{l2}:{l1}"), &upper2, &work)], &o).unwrap();
    assert!(second.from_cache && second.bytes_written == 0 && second.path == first.path);
    assert_eq!(mtime_ns(&first.path), mtime);
    // A snapshot dir recreated at the same path is new content: a new key.
    fs::remove_dir_all(&l2).unwrap();
    fs::create_dir_all(&l2).unwrap();
    let third = image_from_mounts(&[m], &o).unwrap();
    assert!(!third.from_cache && third.cache_key != first.cache_key);
}

#[test]
fn single_lowerdir_is_built_directly() {
    let t = tmp();
    let (l1, _) = snapshots(t.path());
    let upper = t.path().join("u");
    fs::create_dir_all(&upper).unwrap();
    let built = image_from_mounts(&[overlay(&l1, &upper, &upper)], &opts(t.path(), FsType::Ext4)).unwrap();
    assert!(built.read_only);
    assert_eq!(ext4_names(&built.path, "/etc"), ["gone", "kept"]);
}

#[test]
fn non_empty_upperdir_is_kept_in_an_uncached_image() {
    let t = tmp();
    let (l1, l2) = snapshots(t.path());
    let (upper, work) = (t.path().join("u"), t.path().join("w"));
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::create_dir_all(&work).unwrap();
    fs::write(upper.join("etc/written"), "by the container").unwrap();
    fs::write(upper.join("etc/kept"), "changed").unwrap();
    let o = opts(t.path(), FsType::Ext4);
    let built = image_from_mounts(&[overlay(&format!("{l2}:{l1}"), &upper, &work)], &o).unwrap();
    assert!(!built.from_cache && built.cache_key.is_none() && !built.read_only);
    assert_eq!(built.path, o.output);
    assert_eq!(ext4_names(&built.path, "/etc"), ["kept", "new", "written"]);
    assert_eq!(ext4_cat(&built.path, "/etc/kept"), "changed");
    assert_eq!(ext4_cat(&built.path, "/etc/written"), "by the container");
    assert!(!t.path().join("cache").exists() || leftovers(&t.path().join("cache"), "").iter().all(|n| !n.ends_with(".ext4")));
    no_views_left(t.path());
}

#[test]
fn bind_mount_builds_its_source() {
    let t = tmp();
    let src = t.path().join("rootfs");
    sample_tree(&src);
    let m: MountSpec = format!("bind:{}:rbind,ro", src.display()).parse().unwrap();
    let built = image_from_mounts(&[m], &opts(t.path(), FsType::Ext4)).unwrap();
    assert!(built.read_only && !built.from_cache);
    assert_eq!(ext4_cat(&built.path, "/etc/hostname"), "husk\n");
    let rw: MountSpec = format!("bind:{}:rbind,rw", src.display()).parse().unwrap();
    assert!(!image_from_mounts(&[rw], &opts(t.path(), FsType::Ext4)).unwrap().read_only);
}

#[test]
fn failure_inside_the_merged_view_unmounts_it() {
    let t = tmp();
    let (l1, l2) = snapshots(t.path());
    let u = t.path().join("u");
    fs::create_dir_all(&u).unwrap();
    let mut o = opts(t.path(), FsType::Erofs);
    o.tools.mkfs_erofs = "/nonexistent/mkfs.erofs".into();
    let err = image_from_mounts(&[overlay(&format!("{l2}:{l1}"), &u, &u)], &o).unwrap_err();
    assert!(matches!(err, ImageError::ToolMissing { .. }), "{err:?}");
    no_views_left(t.path());
    assert!(leftovers(&t.path().join("cache"), ".tmp-").is_empty());
    assert!(leftovers(&t.path().join("cache"), "").iter().all(|n| n.ends_with(".lock")));
}

#[test]
fn bad_mounts_are_refused_naming_what_is_wrong() {
    let t = tmp();
    let (l1, _) = snapshots(t.path());
    let o = opts(t.path(), FsType::Ext4);
    let check = |mounts: &[MountSpec], want: &str| {
        let err = image_from_mounts(mounts, &o).unwrap_err();
        assert!(err.to_string().contains(want), "{err} should mention {want}");
        assert!(!o.output.exists());
        err
    };
    assert!(matches!(check(&[], "got 0"), ImageError::MountCount { count: 0 }));
    let m = overlay(&l1, t.path(), t.path());
    check(&[m.clone(), m], "got 2");
    let nfs: MountSpec = "nfs:server:/export:vers=4".parse().unwrap();
    assert!(matches!(check(&[nfs], "\"nfs\""), ImageError::UnsupportedMountType { .. }));
    let nolower: MountSpec = "overlay:overlay:upperdir=/u,workdir=/w".parse().unwrap();
    check(&[nolower], "without lowerdir");
    let missing = t.path().join("snapshots/99/fs");
    let m = overlay(&format!("{}:{l1}", missing.display()), t.path(), t.path());
    assert!(matches!(check(&[m], missing.to_str().unwrap()), ImageError::MissingDir { .. }));
    let rel = overlay("relative/fs", t.path(), t.path());
    check(&[rel], "absolute");
    let bind: MountSpec = "bind:/nonexistent/rootfs:rbind".parse().unwrap();
    check(&[bind], "/nonexistent/rootfs");
    assert!(matches!("".parse::<MountSpec>(), Err(ImageError::BadMount { .. })));
    assert!(matches!("overlay".parse::<MountSpec>(), Err(ImageError::BadMount { .. })));
}
