//! OCI layers: whiteouts, replacement rules, media types, the cache.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::*;
use husk_rootfs::{image_from_layers, FsType, ImageError, ImageOptions, LayerSpec};

/// Bottom layer: a small Debian-like tree.
fn base(dir: &Path) -> PathBuf {
    Layer::new()
        .dir("etc/")
        .file("etc/a", "a1")
        .file("etc/b", "b1")
        .dir("opt/")
        .file("opt/x", "x1")
        .dir("opt/sub/")
        .file("opt/sub/y", "y1")
        .dir("swap/")
        .file("swap/inner", "i")
        .file("turn", "file")
        .dir("keep/")
        .file("keep/z", "z1")
        .symlink("link", "etc/b")
        .write_tar(&dir.join("base.tar"))
}

/// Top layer (gzip): whiteouts of lower files, an opaque dir, type replacements, a device.
fn top(dir: &Path) -> PathBuf {
    Layer::new()
        .file("etc/.wh.a", "")
        .file("etc/c", "c2")
        // A whiteout never hides a file of its own layer.
        .file("etc/.wh.c", "")
        .dir("opt/")
        // Entry before the opaque marker: the layer's own, so kept.
        .file("opt/early", "e2")
        .file("opt/.wh..wh..opq", "")
        .file("opt/late", "l2")
        .file("swap", "now a file")
        .dir("turn/")
        .file("turn/f", "now a dir")
        .file("etc/b", "b2")
        .chardev("dev-null", 1, 3)
        .write_gz(&dir.join("top.tar.gz"))
}

fn opts(t: &Path, fstype: FsType) -> ImageOptions {
    ImageOptions::new(fstype, t.join(format!("out.{fstype}")))
}

#[test]
fn whiteouts_and_replacements_are_applied() {
    let t = tmp();
    let layers = [LayerSpec::new(base(t.path())), LayerSpec::new(top(t.path()))];
    let built = image_from_layers(&layers, &opts(t.path(), FsType::Ext4)).unwrap();
    assert!(built.read_only && !built.from_cache);
    let img = &built.path;
    sh("e2fsck", &["-fn", img.to_str().unwrap()]);
    assert_eq!(ext4_names(img, "/"), ["dev-null", "etc", "keep", "link", "opt", "swap", "turn"]);
    assert_eq!(ext4_names(img, "/etc"), ["b", "c"]);
    assert_eq!(ext4_cat(img, "/etc/b"), "b2");
    assert_eq!(ext4_names(img, "/opt"), ["early", "late"]);
    assert_eq!(ext4_names(img, "/keep"), ["z"]);
    assert_eq!(ext4_cat(img, "/swap"), "now a file");
    assert_eq!(ext4_cat(img, "/turn/f"), "now a dir");
    let root = ext4_ls(img, "/");
    assert!(root.contains(&("dev-null".into(), 0o020666, 0, 0)), "{root:?}");
    assert!(root.iter().any(|e| e.0 == "link" && e.1 & 0o170000 == 0o120000));
    assert!(leftovers(t.path(), ".husk-").is_empty(), "staging removed");
}

#[test]
fn erofs_from_layers_mounts_with_the_merged_content() {
    let t = tmp();
    let layers = [LayerSpec::new(base(t.path())), LayerSpec::new(top(t.path()))];
    let built = image_from_layers(&layers, &opts(t.path(), FsType::Erofs)).unwrap();
    let m = LoopMount::new(&built.path);
    assert!(!m.path().join("etc/a").exists());
    assert_eq!(fs::read_to_string(m.path().join("etc/c")).unwrap(), "c2");
    assert_eq!(fs::read_link(m.path().join("link")).unwrap().to_str(), Some("etc/b"));
    assert!(!m.path().join("opt/x").exists() && !m.path().join("opt/sub").exists());
}

#[test]
fn second_build_of_the_same_layers_is_a_cache_hit() {
    let t = tmp();
    let cache = t.path().join("cache");
    let layers = [LayerSpec::new(base(t.path())), LayerSpec::new(top(t.path()))];
    let mut o = opts(t.path(), FsType::Erofs);
    o.cache_dir = Some(cache.clone());
    let first = image_from_layers(&layers, &o).unwrap();
    assert!(!first.from_cache && first.bytes_written > 0);
    assert!(first.path.starts_with(&cache));
    assert!(!o.output.exists(), "a cached image is not copied to the output");
    let mtime = mtime_ns(&first.path);
    let second = image_from_layers(&layers, &o).unwrap();
    assert!(second.from_cache);
    assert_eq!(second.bytes_written, 0);
    assert_eq!((&second.path, &second.cache_key), (&first.path, &first.cache_key));
    assert_eq!(mtime_ns(&second.path), mtime, "not rebuilt");
    assert!(leftovers(&cache, ".tmp-").is_empty() && leftovers(&cache, ".husk-").is_empty());
    // Other layers or another fstype: another key.
    let one = image_from_layers(&layers[..1], &o).unwrap();
    assert_ne!(one.path, first.path);
    o.fstype = FsType::Ext4;
    let ext4 = image_from_layers(&layers, &o).unwrap();
    assert!(!ext4.from_cache && ext4.path != first.path);
    // The digest in a content-store path is the key: no need to read the blob.
    let store = t.path().join("blobs/sha256");
    fs::create_dir_all(&store).unwrap();
    let blob = store.join("ab".repeat(32));
    fs::copy(&layers[0].path, &blob).unwrap();
    let by_path = image_from_layers(&[LayerSpec::new(&blob)], &o).unwrap();
    let given = LayerSpec { path: layers[0].path.clone(), media_type: None, digest: Some(format!("sha256:{}", "ab".repeat(32))) };
    assert!(image_from_layers(&[given], &o).unwrap().from_cache, "same digest, same key: {by_path:?}");
}

#[test]
fn concurrent_builders_build_once_and_agree() {
    let t = tmp();
    let cache = t.path().join("cache");
    let layers = vec![LayerSpec::new(base(t.path())), LayerSpec::new(top(t.path()))];
    let mut o = opts(t.path(), FsType::Ext4);
    o.cache_dir = Some(cache.clone());
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| image_from_layers(&layers, &o).unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| !r.from_cache).count(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.path == results[0].path));
    sh("e2fsck", &["-fn", results[0].path.to_str().unwrap()]);
    let images: Vec<_> = fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().ends_with(".ext4")).collect();
    assert_eq!(images.len(), 1);
}

#[test]
fn prune_removes_least_recently_used_images() {
    let t = tmp();
    let cache = t.path().join("cache");
    let layers = [LayerSpec::new(base(t.path())), LayerSpec::new(top(t.path()))];
    let mut o = opts(t.path(), FsType::Erofs);
    o.cache_dir = Some(cache.clone());
    let mut old = image_from_layers(&layers[..1], &o).unwrap();
    let mut new = image_from_layers(&layers, &o).unwrap();
    // Both in use (leased): never pruned, however idle and whatever the bound.
    let ago = |s| std::time::SystemTime::now() - std::time::Duration::from_secs(s);
    for i in [&old, &new] {
        fs::File::open(&i.path).unwrap().set_times(fs::FileTimes::new().set_accessed(ago(3600))).unwrap();
    }
    let r = husk_rootfs::prune_cache(&cache, 0).unwrap();
    assert!(r.removed.is_empty() && old.path.exists() && new.path.exists(), "{r:?}");
    // A clone of the lease (a second container of the image) keeps it too.
    let held = new.lease.clone();
    new.lease = None;
    assert!(husk_rootfs::prune_cache(&cache, 0).unwrap().removed.is_empty());
    drop(held);
    old.lease = None;
    // Make `old` idle for an hour and `new` for two minutes.
    fs::File::open(&old.path).unwrap().set_times(fs::FileTimes::new().set_accessed(ago(3600))).unwrap();
    fs::File::open(&new.path).unwrap().set_times(fs::FileTimes::new().set_accessed(ago(120))).unwrap();
    let r = husk_rootfs::prune_cache(&cache, 1).unwrap();
    assert_eq!(r.removed, vec![old.path.clone(), new.path.clone()]);
    assert_eq!(r.remaining, 0);
    // An image in use is kept even over the limit.
    let mut fresh = image_from_layers(&layers, &o).unwrap();
    assert!(!fresh.from_cache);
    let r = husk_rootfs::prune_cache(&cache, 0).unwrap();
    assert!(r.removed.is_empty() && fresh.path.exists());
    // With a size limit, a build prunes what is no longer used, and keeps what it built.
    fresh.lease = None;
    o.cache_max_bytes = Some(1);
    let other = image_from_layers(&layers[..1], &o).unwrap();
    assert!(!fresh.path.exists() && other.path.exists());
    // Lock files go with their images.
    let locks: Vec<_> = fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".lock")).collect();
    assert_eq!(locks, vec![format!("{}.lock", other.cache_key.clone().unwrap())]);
}

fn expect_err(layers: &[LayerSpec], t: &Path, check: impl Fn(&ImageError, &str)) {
    let o = opts(t, FsType::Ext4);
    let err = image_from_layers(layers, &o).unwrap_err();
    check(&err, &err.to_string());
    assert!(!o.output.exists());
    assert!(leftovers(t, ".husk-").is_empty(), "nothing left behind");
}

#[test]
fn bad_layers_are_refused_with_clear_errors() {
    let t = tmp();
    let good = base(t.path());
    let zstd = t.path().join("layer.zst");
    fs::write(&zstd, [0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]).unwrap();
    let junk = t.path().join("junk");
    fs::write(&junk, "this is not a tar").unwrap();
    let mt = "application/vnd.oci.image.layer.v1.tar+bzip2";
    let typed = LayerSpec { path: good.clone(), media_type: Some(mt.into()), digest: None };
    expect_err(&[typed], t.path(), |e, m| assert!(matches!(e, ImageError::UnsupportedMediaType { .. }) && m.contains(mt), "{m}"));
    expect_err(&[LayerSpec::new(&zstd)], t.path(), |e, m| assert!(matches!(e, ImageError::Layer { .. }) && m.contains("layer.zst"), "{m}"));
    expect_err(&[LayerSpec::new(&junk)], t.path(), |e, m| assert!(matches!(e, ImageError::UnknownLayerFormat { .. }) && m.contains("junk"), "{m}"));
    expect_err(&[LayerSpec::new(t.path().join("gone.tar"))], t.path(), |e, m| assert!(matches!(e, ImageError::Io { .. }) && m.contains("gone.tar"), "{m}"));
    expect_err(&[], t.path(), |e, _| assert!(matches!(e, ImageError::NoLayers)));
    let bad_digest = LayerSpec { path: good.clone(), media_type: None, digest: Some("md5:abc".into()) };
    expect_err(&[bad_digest], t.path(), |e, m| assert!(matches!(e, ImageError::BadDigest { .. }) && m.contains("md5:abc"), "{m}"));
    // Truncated gzip: the unpack error names the layer.
    let gz = top(t.path());
    let bytes = fs::read(&gz).unwrap();
    let cut = t.path().join("cut.tar.gz");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    expect_err(&[LayerSpec::new(&cut)], t.path(), |e, m| assert!(matches!(e, ImageError::Layer { .. }) && m.contains("cut.tar.gz"), "{m}"));
}

#[test]
fn zstd_layers_of_several_frames_are_unpacked() {
    let t = tmp();
    let tar = Layer::new().dir("etc/").file("etc/os-release", "ID=husk").file("etc/.wh.gone", "").bytes();
    // Two frames, as a concatenating compressor writes them.
    let (a, b) = tar.split_at(tar.len() / 2);
    let mut zst = ruzstd::encoding::compress_to_vec(a, ruzstd::encoding::CompressionLevel::Fastest);
    zst.extend(ruzstd::encoding::compress_to_vec(b, ruzstd::encoding::CompressionLevel::Fastest));
    let path = t.path().join("layer.tar.zst");
    fs::write(&path, zst).unwrap();
    let lower = Layer::new().dir("etc/").file("etc/gone", "x").write_tar(&t.path().join("lower.tar"));
    let typed = LayerSpec { path: path.clone(), media_type: Some("application/vnd.oci.image.layer.v1.tar+zstd".into()), digest: None };
    for top in [LayerSpec::new(&path), typed] {
        let built = image_from_layers(&[LayerSpec::new(&lower), top], &opts(t.path(), FsType::Ext4)).unwrap();
        assert_eq!(ext4_names(&built.path, "/etc"), ["os-release"]);
        assert_eq!(ext4_cat(&built.path, "/etc/os-release"), "ID=husk");
    }
}

#[test]
fn absolute_symlinked_dirs_and_hard_links_resolve_inside_the_image() {
    let t = tmp();
    let lower = Layer::new().dir("usr/").dir("usr/lib/").symlink("lib", "/usr/lib").file("usr/lib/a.so", "a").write_tar(&t.path().join("lower.tar"));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(1);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "lib/b.so", &b"b"[..]).unwrap();
    let mut l = tar::Header::new_ustar();
    l.set_entry_type(tar::EntryType::Link);
    l.set_size(0);
    l.set_uid(0);
    l.set_gid(0);
    l.set_mtime(0);
    l.set_mode(0o755);
    b.append_link(&mut l, "usr/b-hardlink.so", "lib/b.so").unwrap();
    let upper = t.path().join("upper.tar");
    fs::write(&upper, b.into_inner().unwrap()).unwrap();
    let built = image_from_layers(&[LayerSpec::new(&lower), LayerSpec::new(&upper)], &opts(t.path(), FsType::Erofs)).unwrap();
    let m = LoopMount::new(&built.path);
    assert_eq!(fs::read_to_string(m.path().join("usr/lib/b.so")).unwrap(), "b");
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (fs::metadata(m.path().join("usr/lib/b.so")).unwrap(), fs::metadata(m.path().join("usr/b-hardlink.so")).unwrap());
    assert_eq!(a.ino(), b.ino());
    assert_eq!(fs::read_link(m.path().join("lib")).unwrap().to_str(), Some("/usr/lib"));
}

#[test]
fn opaque_marker_after_nested_entries_and_non_utf8_names() {
    let t = tmp();
    let lower = Layer::new().dir("opt/").dir("opt/sub/").file("opt/sub/old", "o").file("opt/lower", "l").write_tar(&t.path().join("lower.tar"));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(1);
    // A file in a subdirectory, then the opaque marker of the parent: the subdirectory and
    // the new file are this layer's and stay; the lower content goes.
    b.append_data(&mut h.clone(), "opt/sub/new", &b"n"[..]).unwrap();
    h.set_size(0);
    b.append_data(&mut h.clone(), "opt/.wh..wh..opq", &[][..]).unwrap();
    // A name that is not UTF-8.
    h.set_size(1);
    let raw = std::ffi::OsStr::from_bytes(b"opt/caf\xe9");
    b.append_data(&mut h, Path::new(raw), &b"x"[..]).unwrap();
    let upper = t.path().join("upper.tar");
    fs::write(&upper, b.into_inner().unwrap()).unwrap();
    let built = image_from_layers(&[LayerSpec::new(&lower), LayerSpec::new(&upper)], &opts(t.path(), FsType::Erofs)).unwrap();
    let m = LoopMount::new(&built.path);
    let mut names: Vec<_> = fs::read_dir(m.path().join("opt")).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, [std::ffi::OsStr::from_bytes(b"caf\xe9"), "sub".as_ref()]);
    let sub: Vec<_> = fs::read_dir(m.path().join("opt/sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(sub, ["new"]);
}

/// A layer of one 3 MiB file that does not compress, `big.tar` in `dir`: more than a 1 MiB
/// tmpfs holds.
fn big_layer(dir: &Path) -> PathBuf {
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    Layer::new().data("big", &data).write_tar(&dir.join("big.tar"))
}

#[test]
fn full_disk_while_unpacking_names_the_layer_and_cleans_up() {
    let t = tmp();
    let layer = big_layer(t.path());
    let small = tmp();
    sh("mount", &["-t", "tmpfs", "-o", "size=1m", "tmpfs", small.path().to_str().unwrap()]);
    let mut o = opts(t.path(), FsType::Erofs);
    o.work_dir = Some(small.path().to_path_buf());
    let err = image_from_layers(&[LayerSpec::new(&layer)], &o).unwrap_err();
    let staged_left = leftovers(small.path(), ".husk-");
    unmount(small.path());
    assert!(matches!(err, ImageError::Layer { .. }), "{err:?}");
    assert!(err.to_string().contains("big.tar"), "{err}");
    let chain = format!("{:?}", std::error::Error::source(&err));
    assert!(chain.contains("No space left") || chain.contains("StorageFull"), "{chain}");
    assert!(staged_left.is_empty(), "staging removed: {staged_left:?}");
    assert!(!o.output.exists());
}

#[test]
fn an_unusable_or_full_cache_is_an_error_naming_it_and_leaves_nothing() {
    let t = tmp();
    let layers = [LayerSpec::new(base(t.path()))];
    // A cache "directory" that is a file.
    let file = t.path().join("not-a-dir");
    fs::write(&file, b"").unwrap();
    let mut o = opts(t.path(), FsType::Ext4);
    o.cache_dir = Some(file.join("cache"));
    let e = image_from_layers(&layers, &o).unwrap_err();
    assert!(e.to_string().contains("not-a-dir/cache"), "{e}");
    // A cache on a full filesystem: mkfs fails writing the image; the error names the image
    // in the cache, and neither the temporary image nor the lock file is left.
    let layer = big_layer(t.path());
    let small = tmp();
    sh("mount", &["-t", "tmpfs", "-o", "size=1m", "tmpfs", small.path().to_str().unwrap()]);
    let mut o = opts(t.path(), FsType::Erofs);
    o.cache_dir = Some(small.path().to_path_buf());
    o.work_dir = Some(t.path().join("work"));
    let err = image_from_layers(&[LayerSpec::new(&layer)], &o).unwrap_err();
    let left: Vec<_> = fs::read_dir(small.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    unmount(small.path());
    assert!(err.to_string().contains(&small.path().display().to_string()), "{err}");
    assert!(left.is_empty(), "left in the full cache: {left:?}");
}

#[test]
fn hostile_layers_cannot_write_outside_the_image() {
    let t = tmp();
    let victim = t.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("precious"), "keep").unwrap();
    // A symlink to a host directory, then a whiteout and a file through it.
    let evil =
        Layer::new().symlink("esc", victim.to_str().unwrap()).file("esc/.wh.precious", "").file("esc/.wh..wh..opq", "").write_tar(&t.path().join("evil.tar"));
    let o = opts(t.path(), FsType::Erofs);
    let r = image_from_layers(&[LayerSpec::new(&evil)], &o);
    assert_eq!(fs::read_to_string(victim.join("precious")).unwrap(), "keep", "{r:?}");
    // Through absolute and `..` symlinks, paths resolve inside the image, as if it were `/`.
    let evil2 = Layer::new()
        .symlink("esc", victim.to_str().unwrap())
        .file("esc/planted", "x")
        .symlink("up", "../../../..")
        .file("up/uplanted", "y")
        .write_tar(&t.path().join("evil2.tar"));
    let built = image_from_layers(&[LayerSpec::new(&evil2)], &opts(t.path(), FsType::Ext4)).unwrap();
    assert!(!victim.join("planted").exists());
    let inside = format!("{}/planted", victim.display());
    assert_eq!(ext4_cat(&built.path, &inside), "x");
    assert_eq!(ext4_cat(&built.path, "/uplanted"), "y");
    assert!(!Path::new("/uplanted").exists());
    // A hard link to a host file is refused.
    let mut b = tar::Builder::new(Vec::new());
    let mut l = tar::Header::new_ustar();
    l.set_entry_type(tar::EntryType::Link);
    l.set_size(0);
    l.set_uid(0);
    l.set_gid(0);
    l.set_mode(0o644);
    b.append_link(&mut l, "passwd", "../../../../etc/passwd").unwrap();
    let evil3 = t.path().join("evil3.tar");
    fs::write(&evil3, b.into_inner().unwrap()).unwrap();
    let err = image_from_layers(&[LayerSpec::new(&evil3)], &opts(t.path(), FsType::Ext4)).unwrap_err();
    assert!(err.to_string().contains("evil3.tar"), "{err}");
}
