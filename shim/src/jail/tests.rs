//! The jail's pieces on the host (they need root, as the shim does): uid leases, the files a
//! program needs, the translation of a VM configuration, and real confined children (the
//! static busybox, a dynamic binary) checked from inside and from /proc.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_config::{Console, DiskConfig, FsConfig, JailConfig, NetConfig, VmConfig, VsockConfig};

use super::*;

const BUSYBOX: &str = "/bin/busybox";

fn need_root() {
    assert!(nix::unistd::geteuid().is_root(), "the jail tests build real jails: run them as root, as the shim runs");
}

fn range(first: u32, count: u32) -> JailConfig {
    JailConfig { enabled: true, uid_first: first, uid_count: count, max_open_files: 256 }
}

/// A uid range of its own per test (tests run in parallel).
fn test_uids(n: u32) -> u32 {
    0x7100_0000 + n * 16 + (std::process::id() % 4096) * 4096
}

#[test]
fn uids_are_leased_once_and_given_back_without_a_trace() {
    let d = tempfile::tempdir().unwrap();
    let locks = d.path().join("locks");
    let first = test_uids(1);
    let a = UidLease::acquire(&locks, first..first + 2).unwrap();
    let b = UidLease::acquire(&locks, first..first + 2).unwrap();
    assert_eq!((a.uid(), b.uid()), (first, first + 1));
    let e = UidLease::acquire(&locks, first..first + 2).unwrap_err().to_string();
    assert!(e.contains(&first.to_string()) && e.contains("jail.uid_count") && e.contains("locks"), "{e}");
    drop(a);
    assert!(!locks.join(first.to_string()).exists(), "a released lease removes its lock file");
    let c = UidLease::acquire(&locks, first..first + 2).unwrap();
    assert_eq!(c.uid(), first, "a released uid is taken again");
    drop((b, c));
    assert!(!locks.exists(), "the lock directory goes with the last lease");
}

#[test]
fn a_uid_held_by_another_process_is_skipped() {
    let d = tempfile::tempdir().unwrap();
    let locks = d.path().join("locks");
    let first = test_uids(2);
    std::fs::create_dir_all(&locks).unwrap();
    let lock = locks.join(first.to_string());
    std::fs::write(&lock, b"").unwrap();
    // flock(1) holds the first uid's lock in another process, as another shim would.
    let mut holder = std::process::Command::new("flock").arg("-x").arg(&lock).args(["sleep", "30"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = std::fs::File::open(&lock).unwrap();
        match nix::fcntl::Flock::lock(probe, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => break,
            _ => assert!(Instant::now() < deadline, "flock(1) never took the lock"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let lease = UidLease::acquire(&locks, first..first + 4).unwrap();
    assert_eq!(lease.uid(), first + 1, "the held uid is skipped");
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn a_static_binary_needs_nothing_and_a_dynamic_one_its_loader_and_libraries() {
    assert_eq!(elf::needed_files(Path::new(BUSYBOX)).unwrap(), Vec::new(), "busybox is static");
    let ours = elf::needed_files(Path::new("/bin/true")).unwrap();
    let inside: Vec<&Path> = ours.iter().map(|n| n.inside.as_path()).collect();
    assert_eq!(inside[0], Path::new("/lib64/ld-linux-x86-64.so.2"), "the interpreter first, at its PT_INTERP path: {inside:?}");
    // What the system's loader itself resolves is a subset of what the jail holds.
    let list = std::process::Command::new("/lib64/ld-linux-x86-64.so.2").args(["--list", "/bin/true"]).output().unwrap();
    let resolved: Vec<PathBuf> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split("=> ").nth(1))
        .filter_map(|r| r.split(" (").next())
        .map(|p| Path::new(p.trim()).canonicalize().unwrap())
        .collect();
    assert!(!resolved.is_empty(), "ld.so --list said {:?}", String::from_utf8_lossy(&list.stdout));
    for r in &resolved {
        assert!(ours.iter().any(|n| &n.source == r), "{r:?} (ld.so) missing from {ours:?}");
    }
    let d = tempfile::tempdir().unwrap();
    let not_elf = d.path().join("script");
    std::fs::write(&not_elf, "#!/bin/sh\n").unwrap();
    let e = elf::needed_files(&not_elf).unwrap_err().to_string();
    assert!(e.contains("script") && e.contains("not an ELF"), "{e}");
}

/// A jail for `program` in a fresh directory, with the test's own uid range.
fn jail_for(d: &Path, n: u32, program: &Path) -> Jail {
    need_root();
    Jail::prepare(&range(test_uids(n), 4), &d.join("locks"), &d.join("jail"), program).unwrap()
}

#[test]
fn a_vm_configuration_is_translated_into_the_jail() {
    let d = tempfile::tempdir().unwrap();
    let jail = jail_for(d.path(), 3, Path::new(BUSYBOX));
    let run = jail.run_dir();
    for f in ["vmlinux", "initrd", "root.img"] {
        std::fs::write(d.path().join(f), b"x").unwrap();
    }
    let host = VmConfig {
        kernel: d.path().join("vmlinux"),
        initrd: Some(d.path().join("initrd")),
        vcpus: 2,
        console: Console::File(run.join("console.log")),
        api_sock: Some(run.join("api.sock")),
        disk: vec![DiskConfig { path: d.path().join("root.img"), id: Some("rootfs".into()), read_only: true, fd: None }],
        disk_slots: 3,
        vsock: Some(VsockConfig { cid: 3, uds: run.join("vsock.sock") }),
        fs: vec![FsConfig { tag: "pod".into(), socket: "/host/virtiofsd.sock".into(), fd: Some(3) }],
        ..Default::default()
    };
    let c = jail.confine(&host).unwrap();
    assert_eq!(c.config.kernel, Path::new("/boot/kernel"));
    assert_eq!(c.config.initrd.as_deref(), Some(Path::new("/boot/initrd")));
    assert_eq!(c.config.disk[0].path, Path::new("/disks/0"));
    assert_eq!(c.config.console, Console::File("/run/console.log".into()));
    assert_eq!(c.config.api_sock.as_deref(), Some(Path::new("/run/api.sock")));
    assert_eq!(c.config.vsock.as_ref().unwrap().uds, Path::new("/run/vsock.sock"));
    assert_eq!(c.config.fs, host.fs, "an inherited connection needs no path");
    assert_eq!(c.threads, 2 + 1 + 3 + 8);
    let ro_disk = c.binds.iter().find(|b| b.inside == Path::new("/disks/0")).unwrap();
    assert!(!ro_disk.writable && !ro_disk.exec && ro_disk.source == d.path().join("root.img"));
    assert!(d.path().join("jail/boot/kernel").is_file(), "placeholders exist for the bind mounts");
    assert_eq!(jail.inside(&d.path().join("jail/vm.toml")).unwrap(), Path::new("/vm.toml"));

    // What a jailed VMM cannot be given, by name.
    let outside = VmConfig { api_sock: Some(d.path().join("api.sock")), ..host.clone() };
    let e = jail.confine(&outside).unwrap_err().to_string();
    assert!(e.contains("api_sock") && e.contains("run"), "{e}");
    let fs_by_path = VmConfig { fs: vec![FsConfig { tag: "pod".into(), socket: "/s".into(), fd: None }], ..host.clone() };
    let e = jail.confine(&fs_by_path).unwrap_err().to_string();
    assert!(e.contains("tag=pod") && e.contains("fs.fd"), "{e}");
    let tap = VmConfig { net: vec![NetConfig { tap: "tap0".into(), mac: None, netns: None, fd: None }], ..host.clone() };
    let e = jail.confine(&tap).unwrap_err().to_string();
    assert!(e.contains("tap=tap0") && e.contains("net.fd"), "{e}");
    let inherited = VmConfig { net: vec![NetConfig { tap: "tap0".into(), mac: None, netns: None, fd: Some(3) }], ..host.clone() };
    assert_eq!(jail.confine(&inherited).unwrap().config.net[0].fd, Some(3), "a tap passed as a descriptor is what a jail takes");
    let missing = VmConfig { kernel: d.path().join("nope"), ..host };
    let e = crate::error::chain(&jail.confine(&missing).unwrap_err());
    assert!(e.contains("nope"), "{e}");
}

/// Output of a confined busybox script, and the child's pid while it sleeps `hold` seconds
/// after writing (so /proc can be looked at).
struct Run {
    out: PathBuf,
    pid: u32,
}

fn run_confined(jail: &Jail, d: &Path, script: &str, fds: Vec<OwnedFd>) -> Run {
    let out = d.join("out");
    let file = std::fs::File::create(&out).unwrap();
    let launch = Launch {
        program: jail.program().to_path_buf(),
        args: vec!["busybox".into(), "sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/".into())],
        cwd: "/".into(),
        stdio: [dev_null().unwrap(), OwnedFd::from(file.try_clone().unwrap()), OwnedFd::from(file)],
        fds,
        cgroups: Vec::new(),
        confine: Some(jail.confinement(&[], 16)),
    };
    Run { out, pid: spawn(launch).unwrap() }
}

fn wait(pid: u32) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for a child of this test.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    status
}

fn read(p: &Path) -> String {
    let mut s = String::new();
    std::fs::File::open(p).unwrap().read_to_string(&mut s).unwrap();
    s
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

#[test]
fn a_confined_child_runs_as_its_uid_in_its_root_and_namespaces_with_its_limits() {
    let d = tempfile::tempdir().unwrap();
    let jail = jail_for(d.path(), 4, Path::new(BUSYBOX));
    let uid = jail.uid();
    // A descriptor handed over at number 3.
    let (r, w) = nix::unistd::pipe().unwrap();
    nix::unistd::write(&w, b"from the shim\n").unwrap();
    drop(w);
    let script = "busybox id -u; busybox id -g; busybox id -G; echo pid $$; busybox ls -a / | busybox tr '\\n' ' '; echo; \
                  busybox ls /dev; busybox cat <&3; ulimit -n; ulimit -u; \
                  (echo x > /written) 2>/dev/null && echo root-writable; echo ok > /run/file && echo run-writable; \
                  exec busybox sleep 30";
    let run = run_confined(&jail, d.path(), script, vec![r]);
    let pid = run.pid.to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !read(&run.out).contains("run-writable") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = read(&run.out);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..4], [uid.to_string().as_str(), uid.to_string().as_str(), uid.to_string().as_str(), "pid 1"], "{out}");
    assert_eq!(lines[4].trim(), ". .. busybox dev run", "only the jail's files: {out}");
    assert_eq!(lines[5], "kvm", "{out}");
    assert_eq!(lines[6], "from the shim", "{out}");
    assert_eq!((lines[7], lines[8]), ("256", "16"), "RLIMIT_NOFILE and RLIMIT_NPROC: {out}");
    assert!(!out.contains("root-writable") && out.contains("run-writable"), "{out}");
    // From the host: its root is the jail (the same directory; the path reads "/" since the
    // host's tree is detached from its namespace), its namespaces are its own.
    let (root, jail_dir) = (std::fs::metadata(format!("/proc/{pid}/root/")).unwrap(), std::fs::metadata(d.path().join("jail")).unwrap());
    assert_eq!((root.dev(), root.ino()), (jail_dir.dev(), jail_dir.ino()), "its root is not the jail");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/root")).unwrap(), Path::new("/"));
    for kind in ["mnt", "pid", "ipc"] {
        assert_ne!(ns(&pid, kind), ns("self", kind), "{kind} namespace shared with the shim");
    }
    assert_eq!(ns(&pid, "net"), ns("self", "net"), "the network namespace stays (taps come as descriptors)");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains(&format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}")) && status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.lines().any(|l| l.starts_with("CapEff:\t0000000000000000")), "{status}");
    let dev = std::fs::metadata(d.path().join("jail/dev/kvm"));
    assert!(dev.is_err(), "the kvm node lives in the child's tmpfs only, not on the host");
    assert_eq!(std::fs::metadata(d.path().join("jail/run/file")).unwrap().uid(), uid, "files it makes are its uid's");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait(run.pid);
    // Its mounts were in its own namespace: none below the test directory on the host.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&d.path().display().to_string()), "{mounts}");
}

#[test]
fn a_dynamic_program_runs_in_the_jail_with_its_libraries() {
    let d = tempfile::tempdir().unwrap();
    let jail = jail_for(d.path(), 5, Path::new("/bin/true"));
    let launch = Launch {
        program: jail.program().to_path_buf(),
        args: vec!["true".into()],
        env: Vec::new(),
        cwd: "/".into(),
        stdio: [dev_null().unwrap(), dev_null().unwrap(), dev_null().unwrap()],
        fds: Vec::new(),
        cgroups: Vec::new(),
        confine: Some(jail.confinement(&[], 16)),
    };
    let st = wait(spawn(launch).unwrap());
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "status {st:#x}");
}

#[test]
fn a_failing_step_is_named_with_the_os_error() {
    let d = tempfile::tempdir().unwrap();
    let jail = jail_for(d.path(), 6, Path::new(BUSYBOX));
    let mut confine = jail.confinement(&[], 16);
    confine.binds.push(Bind { source: d.path().join("missing.img"), inside: "/busybox".into(), writable: false, exec: false, device: false });
    let launch = Launch {
        program: jail.program().to_path_buf(),
        args: vec!["busybox".into(), "true".into()],
        env: Vec::new(),
        cwd: "/".into(),
        stdio: [dev_null().unwrap(), dev_null().unwrap(), dev_null().unwrap()],
        fds: Vec::new(),
        cgroups: Vec::new(),
        confine: Some(confine),
    };
    let e = spawn(launch).unwrap_err();
    let text = crate::error::chain(&e);
    assert!(text.contains("missing.img") && text.contains("/busybox") && text.contains("No such file"), "{text}");
}

#[test]
fn an_unconfined_child_gets_its_descriptors_at_fixed_numbers_and_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let file = std::fs::File::create(&out).unwrap();
    let a = std::fs::File::open("/etc/hostname").unwrap();
    let b = std::fs::File::open("/etc/passwd").unwrap();
    let kept_back = std::fs::File::open("/etc/hostname").unwrap();
    let numbers: Vec<String> = [a.as_raw_fd(), b.as_raw_fd(), kept_back.as_raw_fd()].iter().filter(|n| **n > 4).map(|n| n.to_string()).collect();
    let script =
        format!("readlink /proc/$$/fd/3; readlink /proc/$$/fd/4; for n in {}; do [ -e /proc/$$/fd/$n ] && echo leaked $n; done; pwd", numbers.join(" "));
    let launch = Launch {
        program: "/bin/sh".into(),
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: Vec::new(),
        cwd: d.path().to_path_buf(),
        stdio: [dev_null().unwrap(), OwnedFd::from(file.try_clone().unwrap()), OwnedFd::from(file)],
        fds: vec![OwnedFd::from(b), OwnedFd::from(a)],
        cgroups: Vec::new(),
        confine: None,
    };
    let st = wait(spawn(launch).unwrap());
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "status {st:#x}");
    let text = read(&out);
    let want = format!("/etc/passwd\n/etc/hostname\n{}\n", d.path().display());
    assert_eq!(text, want, "the given descriptors at 3 and 4 in order, nothing else of the shim's (checked {numbers:?})");
}

#[test]
fn a_writable_image_is_the_vmms_to_write_and_a_read_only_one_stays_read_only() {
    let d = tempfile::tempdir().unwrap();
    let jail = jail_for(d.path(), 6, Path::new(BUSYBOX));
    for f in ["vmlinux", "rw.img", "ro.img"] {
        std::fs::write(d.path().join(f), b"x").unwrap();
        std::fs::set_permissions(d.path().join(f), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    let disk = |f: &str, read_only| DiskConfig { path: d.path().join(f), id: None, read_only, fd: None };
    let host = VmConfig { kernel: d.path().join("vmlinux"), disk: vec![disk("rw.img", false), disk("ro.img", true)], ..Default::default() };
    let c = jail.confine(&host).unwrap();
    let out = d.path().join("out");
    let file = std::fs::File::create(&out).unwrap();
    let launch = Launch {
        program: jail.program().to_path_buf(),
        args: vec!["busybox".into(), "sh".into(), "-c".into(), "echo w >> /disks/0 && echo rw-ok; echo w >> /disks/1 || echo ro-refused".into()],
        env: vec![("PATH".into(), "/".into())],
        cwd: "/".into(),
        stdio: [dev_null().unwrap(), OwnedFd::from(file.try_clone().unwrap()), OwnedFd::from(file)],
        fds: Vec::new(),
        cgroups: Vec::new(),
        confine: Some(jail.confinement(&c.binds, 16)),
    };
    let st = wait(spawn(launch).unwrap());
    assert!(libc::WIFEXITED(st), "status {st:#x}");
    let text = read(&out);
    assert!(text.contains("rw-ok") && text.contains("ro-refused"), "{text}");
    assert_eq!(std::fs::read(d.path().join("rw.img")).unwrap(), b"xw\n");
    assert_eq!(std::fs::read(d.path().join("ro.img")).unwrap(), b"x");
    assert_eq!(std::fs::metadata(d.path().join("ro.img")).unwrap().uid(), 0, "a read-only image keeps its owner");
}

#[test]
fn a_child_gets_transparent_huge_pages_back_though_the_shim_opted_out() {
    // The shim's opt-out (lifecycle::serve) is inherited across fork and exec; the spawned
    // program (husk-vmm, whose guest memory asks for huge pages) must not keep it.
    nix::sys::prctl::set_thp_disable(true).unwrap();
    assert!(read(Path::new("/proc/self/status")).contains("THP_enabled:\t0"), "the opt-out did not take");
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let file = std::fs::File::create(&out).unwrap();
    let launch = Launch {
        program: "/bin/sh".into(),
        args: vec!["sh".into(), "-c".into(), "grep THP_enabled /proc/$$/status".into()],
        env: Vec::new(),
        cwd: d.path().to_path_buf(),
        stdio: [dev_null().unwrap(), OwnedFd::from(file.try_clone().unwrap()), OwnedFd::from(file)],
        fds: Vec::new(),
        cgroups: Vec::new(),
        confine: None,
    };
    let st = wait(spawn(launch).unwrap());
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "status {st:#x}");
    assert_eq!(read(&out), "THP_enabled:\t1\n");
}
