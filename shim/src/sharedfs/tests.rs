//! Shared directory and virtiofsd tests on the host: real bind mounts (the tests run as
//! root) and the virtiofsd `make deps` installs. Leaks are counted from /proc/self/mounts
//! and /proc, never from this module's own bookkeeping.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::virtiofsd::{pids_serving, serves};
use super::*;

/// Mount points at or below `dir`, from /proc/self/mounts (octal escapes decoded).
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|m| m.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"))
        .filter(|m| m == &dir || m.starts_with(&format!("{dir}/")))
        .collect()
}

/// The options of the mount at `target` in /proc/PID/mountinfo (`self` for ours).
fn mount_options(pid: &str, target: &str) -> Option<String> {
    // A process may be gone by the time its mount table is read: that is "not there".
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&target)).then(|| f[5].to_string())
    })
}

fn state_dir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    // The real state dir is 0700 under /run/husk; nothing here depends on more.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    t
}

fn virtiofsd_config() -> VirtiofsdConfig {
    let cfg = VirtiofsdConfig::default();
    assert!(cfg.binary.is_file(), "these tests need virtiofsd at {:?}: run make deps", cfg.binary);
    cfg
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn shares_are_bind_mounts_read_write_or_read_only_and_leave_nothing() {
    let state = state_dir();
    let vols = tempfile::tempdir().unwrap();
    let (rw_src, ro_src) = (vols.path().join("data"), vols.path().join("config"));
    std::fs::create_dir(&rw_src).unwrap();
    std::fs::create_dir(&ro_src).unwrap();
    std::fs::write(rw_src.join("a.txt"), b"from the host").unwrap();
    std::fs::write(ro_src.join("key"), b"value").unwrap();
    let mut dir = SharedDir::create(&state.path().join(SHARED_DIR)).unwrap();
    let shared = dir.path().to_path_buf();
    assert_eq!(mounts_under(state.path()).len(), 2, "the shared dir and its staging dir are mounts");

    let rw = dir.share(&rw_src, false).unwrap();
    assert_eq!(std::fs::read(shared.join(&rw).join("a.txt")).unwrap(), b"from the host");
    std::fs::write(shared.join(&rw).join("b.txt"), b"through the share").unwrap();
    assert_eq!(std::fs::read(rw_src.join("b.txt")).unwrap(), b"through the share", "a bind mount, not a copy");

    let ro = dir.share(&ro_src, true).unwrap();
    assert_ne!(ro, rw);
    assert_eq!(std::fs::read(shared.join(&ro).join("key")).unwrap(), b"value");
    let e = std::fs::write(shared.join(&ro).join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert!(!ro_src.join("new").exists());
    let opts = mount_options("self", &shared.join(&ro).to_string_lossy()).unwrap();
    assert!(opts.split(',').any(|o| o == "ro"), "{opts}");

    // A single file, through a symlink resolved on the host; and the host's /etc/hosts.
    std::os::unix::fs::symlink(ro_src.join("key"), vols.path().join("key-link")).unwrap();
    let file = dir.share(&vols.path().join("key-link"), true).unwrap();
    assert!(file.ends_with("-key"), "named after what the link resolves to: {file}");
    assert!(shared.join(&file).is_file());
    assert_eq!(std::fs::read(shared.join(&file)).unwrap(), b"value");
    let hosts = dir.share(Path::new("/etc/hosts"), true).unwrap();
    assert_eq!(std::fs::read(shared.join(&hosts)).unwrap(), std::fs::read("/etc/hosts").unwrap());
    assert_eq!(mounts_under(&shared).len(), 1 + 4);
    assert!(entries(&sibling_staging(&shared)).is_empty(), "nothing stays in staging");

    dir.unshare(&rw).unwrap();
    assert!(!shared.join(&rw).exists(), "mount point removed");
    assert_eq!(mounts_under(&shared).len(), 1 + 3);
    assert!(matches!(dir.unshare(&rw), Err(SharedFsError::NotShared(_))));
    assert_eq!(std::fs::read(rw_src.join("b.txt")).unwrap(), b"through the share", "the source is untouched");

    dir.teardown().unwrap();
    assert!(mounts_under(state.path()).is_empty(), "{:?}", mounts_under(state.path()));
    assert!(entries(state.path()).is_empty(), "both directories removed: {:?}", entries(state.path()));
    dir.teardown().unwrap();
}

fn sibling_staging(shared: &Path) -> PathBuf {
    PathBuf::from(format!("{}-staging", shared.display()))
}

#[test]
fn refused_sources_name_the_source_and_leave_nothing() {
    let state = state_dir();
    let t = tempfile::tempdir().unwrap();
    let mut dir = SharedDir::create(&state.path().join(SHARED_DIR)).unwrap();
    let shared = dir.path().to_path_buf();
    let sock = t.path().join("agent.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::os::unix::fs::symlink(&sock, t.path().join("sock-link")).unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (t.path().join("missing"), "does not exist"),
        (sock.clone(), "unix socket"),
        (t.path().join("sock-link"), "unix socket"),
        (PathBuf::from("/dev/null"), "character device"),
        (shared.clone(), "inside the shared directory"),
    ];
    for (src, why) in cases {
        let e = dir.share(&src, false).unwrap_err().to_string();
        assert!(e.contains(&*src.to_string_lossy()) && e.contains(why), "{src:?}: {e}");
    }
    assert_eq!(mounts_under(state.path()).len(), 2, "no mount added");
    assert!(entries(&shared).is_empty() && entries(&sibling_staging(&shared)).is_empty());
    dir.teardown().unwrap();
    assert!(mounts_under(state.path()).is_empty());
}

#[test]
fn virtiofsd_sees_volumes_shared_after_it_started_read_only_included() {
    let state = state_dir();
    let vols = tempfile::tempdir().unwrap();
    std::fs::write(vols.path().join("file"), b"x").unwrap();
    let mut fs = SharedFs::start(state.path(), &virtiofsd_config()).unwrap();
    let socket = fs.socket().unwrap().to_path_buf();
    assert_eq!(socket, state.path().join(SOCKET));
    // The sandboxed server: the parent's child, same command line, pivot_root'ed into the
    // shared directory, so shares are at /<name> in its mount table.
    let parent = fs.daemon.as_ref().unwrap().pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    let server = loop {
        if let [p] = pids_serving(&socket, parent)[..] {
            break p;
        }
        assert!(Instant::now() < deadline, "virtiofsd's sandboxed server did not show up");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Looked up again each time: a child seen while virtiofsd sets up its sandbox may be a
    // short-lived helper rather than the server.
    let server_view = |name: &str| pids_serving(&socket, parent).iter().find_map(|p| mount_options(&p.to_string(), &format!("/{name}")));
    let ro = fs.share(vols.path(), true).unwrap();
    let rw = fs.share(&vols.path().join("file"), false).unwrap();
    let wait_for = |name: &str, present: bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while server_view(name).is_some() != present {
            assert!(Instant::now() < deadline, "{name} {} virtiofsd's namespace", if present { "never reached" } else { "stayed in" });
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(&ro, true);
    wait_for(&rw, true);
    let ro_opts = server_view(&ro).unwrap();
    assert!(ro_opts.split(',').any(|o| o == "ro"), "virtiofsd's copy of a read-only volume must be read-only: {ro_opts}");
    let rw_opts = server_view(&rw).unwrap();
    assert!(rw_opts.split(',').any(|o| o == "rw"), "{rw_opts}");
    fs.unshare(&ro).unwrap();
    wait_for(&ro, false);

    fs.stop().unwrap();
    assert!(!serves(parent, &socket) && !serves(server, &socket), "virtiofsd is gone");
    assert!(pids_serving(&socket, 0).is_empty());
    assert!(!socket.exists(), "the socket is removed");
    assert!(mounts_under(state.path()).is_empty(), "{:?}", mounts_under(state.path()));
    assert_eq!(entries(state.path()), vec![LOG.to_string()], "only virtiofsd's log stays with the state dir");
}

#[test]
fn a_virtiofsd_that_fails_or_hangs_is_reported_and_gone() {
    let state = state_dir();
    // Not installed.
    let cfg = VirtiofsdConfig { binary: state.path().join("no-virtiofsd"), ..virtiofsd_config() };
    let e = SharedFs::start(state.path(), &cfg).unwrap_err();
    assert!(matches!(e, SharedFsError::MissingBinary(_)) && e.to_string().contains("no-virtiofsd"), "{e}");
    assert!(entries(state.path()).is_empty() && mounts_under(state.path()).is_empty(), "nothing left after a failed start");

    // It exits at once: a shared dir that does not exist.
    let socket = state.path().join("v.sock");
    let e = Virtiofsd::start(&virtiofsd_config(), &state.path().join("absent"), &socket, &state.path().join("log")).unwrap_err();
    assert!(matches!(e, SharedFsError::Exited { .. }), "{e}");
    assert!(e.to_string().contains("absent"), "the error carries virtiofsd's own words: {e}");
    assert!(!socket.exists());

    // It never creates the socket: killed after the timeout.
    let fake = state.path().join("fake-virtiofsd");
    let pidfile = state.path().join("fake.pid");
    let mut f = std::fs::File::create(&fake).unwrap();
    writeln!(f, "#!/bin/sh\necho $$ >{}\necho 'stuck' >&2\nexec sleep 60", pidfile.display()).unwrap();
    drop(f);
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = VirtiofsdConfig { binary: fake, socket_timeout: Duration::from_millis(500), ..virtiofsd_config() };
    let t0 = Instant::now();
    let e = SharedFs::start(state.path(), &cfg).unwrap_err();
    assert!(matches!(e, SharedFsError::SocketTimeout { .. }) && e.to_string().contains("stuck"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the hung process was killed and reaped");
    assert!(mounts_under(state.path()).is_empty());
}

/// Run by [`virtiofsd_dies_with_the_process_that_started_it`] in a child process: starts
/// virtiofsd on the directory named by HUSK_SHAREDFS_DIES_WITH, then ends the process without
/// any cleanup, as a crashing shim would.
#[test]
#[ignore = "helper, run in a child process by virtiofsd_dies_with_the_process_that_started_it"]
fn helper_start_virtiofsd_and_die() {
    let Some(dir) = std::env::var_os("HUSK_SHAREDFS_DIES_WITH") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let d = Virtiofsd::start(&virtiofsd_config(), &dir.join("share"), &dir.join("v.sock"), &dir.join("log")).unwrap();
    println!("started {}", d.pid());
    std::mem::forget(d);
    std::process::exit(0);
}

#[test]
fn virtiofsd_dies_with_the_process_that_started_it() {
    let t = state_dir();
    std::fs::create_dir(t.path().join("share")).unwrap();
    let socket = t.path().join("v.sock");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "sharedfs::tests::helper_start_virtiofsd_and_die", "--nocapture"])
        .env("HUSK_SHAREDFS_DIES_WITH", t.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("started "), "helper: {text} {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids_serving(&socket, 0).is_empty() {
        assert!(Instant::now() < deadline, "virtiofsd outlived the process that started it: {:?}", pids_serving(&socket, 0));
        std::thread::sleep(Duration::from_millis(20));
    }
}
