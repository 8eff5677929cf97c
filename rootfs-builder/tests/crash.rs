//! A builder killed mid-build (SIGKILL, as when the shim is killed): its mkfs dies with it, a
//! concurrent live builder is left alone, and the next build removes what it left.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

fn layer(dir: &Path, name: &str, content: &str) -> PathBuf {
    Layer::new().file(name, content).write_tar(&dir.join(format!("{name}.tar")))
}

fn builder(layer: &Path, cache: &Path, out: &Path, path_env: &str, mark: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_husk-rootfs"));
    c.args(["image", "--fstype", "ext4", "--layer"]).arg(layer).arg("--cache").arg(cache).arg("-o").arg(out).env("PATH", path_env).env("MARK", mark);
    c
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Whether `pid` is a live (not zombie) process running `/bin/sleep` — our mkfs stand-in.
fn mkfs_alive(pid: u32) -> bool {
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true);
    !zombie && cmd.starts_with(b"/bin/sleep\0")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill9(mut c: Child) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    c.wait().unwrap();
}

#[test]
fn killed_builder_takes_its_mkfs_along_and_the_next_build_cleans_up() {
    let t = tmp();
    let cache = t.path().join("cache");
    // A mkfs.ext4 that never finishes: records its pid and becomes a sleep.
    let fake = t.path().join("fakebin");
    fs::create_dir(&fake).unwrap();
    fs::write(fake.join("mkfs.ext4"), "#!/bin/sh\necho $$ > \"$MARK.tmp\" && mv \"$MARK.tmp\" \"$MARK\"\nexec /bin/sleep 300\n").unwrap();
    fs::set_permissions(fake.join("mkfs.ext4"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let real_path = std::env::var("PATH").unwrap_or_default();
    let slow_path = format!("{}:{real_path}", fake.display());

    let a = layer(t.path(), "a", "first image");
    let mark_a = t.path().join("mark-a");
    let mut victim = builder(&a, &cache, &t.path().join("a.img"), &slow_path, &mark_a).stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_for("the slow mkfs to start", || {
        if let Some(st) = victim.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(victim.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the builder ended ({st}) before its mkfs started: {err}");
        }
        mark_a.exists()
    });
    let mkfs_pid: u32 = fs::read_to_string(&mark_a).unwrap().trim().parse().unwrap();
    assert!(mkfs_alive(mkfs_pid));
    let mid_build = names(&cache);
    assert!(mid_build.iter().any(|n| n.starts_with(".tmp-")) && mid_build.iter().any(|n| n.starts_with(".husk-layers-")), "{mid_build:?}");

    // A concurrent builder of another image runs its sweep while the first one is alive: it
    // must not take the live builder's files.
    let b = layer(t.path(), "b", "second image");
    let o = builder(&b, &cache, &t.path().join("b.img"), &real_path, &t.path().join("mark-b")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let during = names(&cache);
    for n in &mid_build {
        assert!(during.contains(n), "{n} of the live builder was removed: {during:?}");
    }

    kill9(victim);
    // mkfs gets SIGKILL with its builder (parent-death signal), counted from /proc.
    wait_for("mkfs to die with its builder", || !mkfs_alive(mkfs_pid));
    let left = names(&cache);
    assert!(left.iter().any(|n| n.starts_with(".tmp-")), "the kill left a temporary image: {left:?}");

    // The next build (another image) sweeps what the dead builder left: temporary image,
    // staging directory, and its image-less lock file (by the prune of a bounded cache).
    let c = layer(t.path(), "c", "third image");
    let mut cmd = builder(&c, &cache, &t.path().join("c.img"), &real_path, &t.path().join("mark-c"));
    cmd.args(["--cache-max-mib", "1024"]);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = names(&cache);
    assert!(after.iter().all(|n| !n.starts_with('.')), "left-overs of the dead builder: {after:?}");
    let images = after.iter().filter(|n| n.ends_with(".ext4")).count();
    let locks = after.iter().filter(|n| n.ends_with(".lock")).count();
    assert_eq!((images, locks), (2, 2), "{after:?}");
    // And the killed build itself succeeds when run again.
    let o = builder(&a, &cache, &t.path().join("a.img"), &real_path, &mark_a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(" built "), "{}", String::from_utf8_lossy(&o.stdout));
    sh("e2fsck", &["-fn", t.path().join("a.img").to_str().unwrap()]);
}
