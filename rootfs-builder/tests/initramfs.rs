//! Initramfs: content, modes, reproducibility, and every refusal.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::*;
use husk_rootfs::initramfs::newc::{read_newc, NewcEntry};
use husk_rootfs::{build_initramfs, InitramfsError, InitramfsSpec};

fn unpack(path: &Path) -> Vec<NewcEntry> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(path).unwrap()).read_to_end(&mut raw).unwrap();
    read_newc(&raw).unwrap()
}

fn spec() -> InitramfsSpec {
    InitramfsSpec { agent: STATIC_BIN.into(), ..Default::default() }
}

#[test]
fn agent_is_init_with_base_dirs_and_console() {
    let t = tmp();
    let out = t.path().join("initramfs.cpio.gz");
    let report = build_initramfs(&spec(), &out).unwrap();
    let entries = unpack(&out);
    assert_eq!(report.entries, entries.len());
    assert_eq!(report.written_bytes, fs::metadata(&out).unwrap().len());
    let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap_or_else(|| panic!("no {n} in {entries:?}"));
    let init = get("init");
    assert_eq!(init.mode, 0o100755);
    assert_eq!(init.data, fs::read(STATIC_BIN).unwrap());
    let console = get("dev/console");
    assert_eq!(console.mode, 0o020600);
    assert_eq!(console.rdev, (5, 1));
    assert_eq!(get("tmp").mode, 0o041777);
    for d in ["dev", "proc", "sys", "run", "mnt", "etc"] {
        assert_eq!(get(d).mode & 0o170000, 0o040000, "{d} is a directory");
    }
    // Reproducibility inputs: root owner, zero mtimes, unique inode numbers, sorted names.
    assert!(entries.iter().all(|e| e.uid == 0 && e.gid == 0 && e.mtime == 0));
    let mut inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
    inos.dedup();
    assert_eq!(inos.len(), entries.len());
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    // gzip header: no file name flag, zero mtime.
    let gz = fs::read(&out).unwrap();
    assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(gz[3] & 0x08, 0, "no FNAME");
    assert_eq!(&gz[4..8], &[0, 0, 0, 0], "no mtime");
    // An independent reader agrees: GNU cpio lists the same entries.
    let listed = sh("sh", &["-c", &format!("zcat {} | cpio -t --quiet", out.display())]);
    let listed: Vec<&str> = listed.lines().collect();
    assert_eq!(listed, names);
}

#[test]
fn uncompressed_archive_is_the_same_cpio_unzipped() {
    let t = tmp();
    let (gz, raw) = (t.path().join("i.cpio.gz"), t.path().join("i.cpio"));
    build_initramfs(&spec(), &gz).unwrap();
    let report = build_initramfs(&InitramfsSpec { uncompressed: true, ..spec() }, &raw).unwrap();
    let bytes = fs::read(&raw).unwrap();
    assert_eq!(&bytes[..6], b"070701", "a newc archive, not gzip");
    assert_eq!(report.cpio_bytes, bytes.len() as u64);
    assert_eq!(report.written_bytes, bytes.len() as u64);
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(&gz).unwrap()).read_to_end(&mut unzipped).unwrap();
    assert_eq!(bytes, unzipped, "the same archive as the gzip build's content");
    // An independent reader agrees.
    let listed = sh("sh", &["-c", &format!("cpio -t --quiet < {}", raw.display())]);
    assert!(listed.lines().any(|l| l == "init"), "{listed}");
}

#[test]
fn two_builds_are_byte_identical() {
    let t = tmp();
    let tree = t.path().join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("sub/b"), "b").unwrap();
    fs::write(tree.join("a"), "a").unwrap();
    let mut s = spec();
    s.extra.push((tree.clone(), "/opt/tree".into()));
    let (a, b) = (t.path().join("a.gz"), t.path().join("b.gz"));
    build_initramfs(&s, &a).unwrap();
    // Different host mtimes must not change the output.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(tree.join("a"), "a").unwrap();
    build_initramfs(&s, &b).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    // ...but content does.
    fs::write(tree.join("a"), "A").unwrap();
    build_initramfs(&s, &b).unwrap();
    assert_ne!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
}

#[test]
fn extra_files_and_trees_keep_modes_and_symlinks() {
    let t = tmp();
    let tree = t.path().join("tree");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::write(tree.join("bin/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(tree.join("bin/tool"), std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    symlink("tool", tree.join("bin/alias")).unwrap();
    let single = t.path().join("single.conf");
    fs::write(&single, "k=v").unwrap();
    let mut s = spec();
    s.extra.push((tree.clone(), "/usr/local".into()));
    s.extra.push((single.clone(), "/etc/husk/agent.conf".into()));
    let out = t.path().join("i.gz");
    build_initramfs(&s, &out).unwrap();
    let entries = unpack(&out);
    let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap_or_else(|| panic!("no {n}"));
    assert_eq!(get("usr").mode, 0o040755, "parent created");
    assert_eq!(get("usr/local/bin/tool").mode, 0o100750);
    assert_eq!(get("usr/local/bin/alias").mode, 0o120777);
    assert_eq!(get("usr/local/bin/alias").data, b"tool");
    assert_eq!(get("etc/husk/agent.conf").data, b"k=v");
}

fn assert_refused(s: &InitramfsSpec, check: impl Fn(&InitramfsError, &str)) {
    let t = tmp();
    let out = t.path().join("out.gz");
    let err = build_initramfs(s, &out).unwrap_err();
    check(&err, &err.to_string());
    assert!(!out.exists(), "no output after an error");
    assert!(leftovers(t.path(), ".initramfs-").is_empty(), "no temp file left");
}

#[test]
fn dynamic_agent_is_refused_naming_its_libraries() {
    // This test binary is dynamically linked against libc.
    let exe = std::env::current_exe().unwrap();
    assert_refused(&InitramfsSpec { agent: exe.clone(), ..spec() }, |e, msg| {
        assert!(matches!(e, InitramfsError::DynamicAgent { .. }), "{e:?}");
        assert!(msg.contains(&exe.display().to_string()) && msg.contains("libc.so"), "{msg}");
        assert!(msg.contains("statically"), "{msg}");
    });
}

#[test]
fn non_elf_and_missing_agent_are_refused() {
    let t = tmp();
    let script = t.path().join("init.sh");
    fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    assert_refused(&InitramfsSpec { agent: script.clone(), ..spec() }, |e, msg| {
        assert!(matches!(e, InitramfsError::NotElf { .. }), "{e:?}");
        assert!(msg.contains("init.sh"), "{msg}");
    });
    assert_refused(&InitramfsSpec { agent: "/nonexistent/agent".into(), ..spec() }, |e, msg| {
        assert!(matches!(e, InitramfsError::Read { .. }), "{e:?}");
        assert!(msg.contains("/nonexistent/agent"), "{msg}");
    });
}

#[test]
fn object_files_and_foreign_machines_are_refused() {
    let t = tmp();
    let bin = fs::read(STATIC_BIN).unwrap();
    for (name, offset, value, want) in [
        // e_type = ET_REL (1): an object file.
        ("relocatable", 16, 1u8, "REL"),
        // e_machine = EM_AARCH64 (183).
        ("aarch64", 18, 183u8, "AARCH64"),
    ] {
        let mut b = bin.clone();
        b[offset] = value;
        b[offset + 1] = 0;
        let path = t.path().join(name);
        fs::write(&path, b).unwrap();
        assert_refused(&InitramfsSpec { agent: path.clone(), ..spec() }, |e, msg| {
            assert!(matches!(e, InitramfsError::NotExecutable { .. }), "{e:?}");
            assert!(msg.contains(name) && msg.contains(want), "{msg}");
        });
    }
}

#[test]
fn bad_destinations_are_refused() {
    let t = tmp();
    let f = t.path().join("f");
    fs::write(&f, "x").unwrap();
    for (dest, why) in [("etc/x", "absolute"), ("/etc/../../x", ".."), ("/", "`/`"), ("/init", "already present"), ("/dev/console", "already present")] {
        let s = InitramfsSpec { extra: vec![(f.clone(), dest.into())], ..spec() };
        assert_refused(&s, |e, msg| {
            assert!(matches!(e, InitramfsError::BadDestination { .. }), "{dest}: {e:?}");
            assert!(msg.contains(dest) && msg.contains(why), "{msg}");
        });
    }
    let s = InitramfsSpec { extra: vec![(t.path().join("missing"), "/x".into())], ..spec() };
    assert_refused(&s, |e, msg| {
        assert!(matches!(e, InitramfsError::Read { .. }), "{e:?}");
        assert!(msg.contains("missing"), "{msg}");
    });
}

#[test]
fn sockets_cannot_be_added() {
    let t = tmp();
    let sock = t.path().join("s.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let s = InitramfsSpec { extra: vec![(sock.clone(), "/s".into())], ..spec() };
    assert_refused(&s, |e, msg| {
        assert!(matches!(e, InitramfsError::UnsupportedFileType { .. }), "{e:?}");
        assert!(msg.contains("s.sock"), "{msg}");
    });
}
