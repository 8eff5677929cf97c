//! Starting a program, confined or not: `clone(2)` with the namespace flags (a PID namespace
//! cannot be entered by `unshare` before exec, so `std::process::Command` cannot do this),
//! then, in the child, a fixed list of steps prepared by the parent, then `execve`.
//!
//! The child runs on a copy of the shim's memory while other shim threads may hold locks, so
//! it only makes system calls on data prepared before the clone: no allocation, no locks, no
//! Rust I/O, and no libc wrapper that coordinates threads (the id changes are raw calls). A failed step writes its index and errno to a close-on-exec pipe and exits; the
//! parent turns that into an error naming the step. A successful exec closes the pipe.
//!
//! The child waits for a byte from the parent after setting its parent-death signal (the
//! kernel clears that signal when the credentials change, so it is set after the uid is), so
//! a shim that dies before the child is set up never leaves it running: the read sees EOF.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

use super::JailError;

/// Stack of the cloned child until it execs (it makes plain system calls only).
const CHILD_STACK: usize = 256 * 1024;

/// A program to start: what [`spawn`] needs, all prepared before the clone.
#[derive(Debug)]
pub struct Launch {
    /// The program to exec (a path inside the new root when confined).
    pub program: PathBuf,
    /// argv, argv\[0\] included.
    pub args: Vec<OsString>,
    /// The whole environment.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory (unconfined; a confined child runs in its root).
    pub cwd: PathBuf,
    /// Descriptors 0, 1 and 2 of the child.
    pub stdio: [OwnedFd; 3],
    /// Descriptors the child gets at numbers 3, 4, ... in this order.
    pub fds: Vec<OwnedFd>,
    /// `cgroup.procs` files (open for writing) the child joins first.
    pub cgroups: Vec<OwnedFd>,
    /// The confinement, if any.
    pub confine: Option<Confinement>,
}

/// How a child is confined: new namespaces, its own root, its ids and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Host directory that becomes its `/` (bind-mounted onto itself, read-only).
    pub root: PathBuf,
    /// Directories below `root` (paths inside) that stay writable (own bind mounts).
    pub writable: Vec<PathBuf>,
    /// Files bound from the host into the root.
    pub binds: Vec<Bind>,
    /// Device nodes in the root's `/dev` (a small tmpfs of its own).
    pub devices: Vec<DeviceNode>,
    /// uid, also the gid.
    pub uid: u32,
    /// Resource limits.
    pub rlimits: Vec<(Rlimit, u64)>,
}

/// A host file visible at `inside` in the root; its placeholder must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host file.
    pub source: PathBuf,
    /// Where it appears, an absolute path inside the root.
    pub inside: PathBuf,
    /// Whether the child may write it.
    pub writable: bool,
    /// Whether the child may execute or map it executable (the program, its libraries).
    pub exec: bool,
    /// Whether it is a device (a disk on a block device): its mount keeps device access.
    pub device: bool,
}

/// A character device made in the root's `/dev`, owned by the child's uid, mode 0600.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Its name below `/dev` (`kvm`, `net/tun` is not supported: names have no `/`).
    pub name: String,
    /// Its device number (as the host's node has it).
    pub rdev: u64,
}

/// The resource limits a confinement sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rlimit {
    /// RLIMIT_NOFILE.
    OpenFiles,
    /// RLIMIT_NPROC: processes and threads of the uid.
    Processes,
    /// RLIMIT_CORE: 0, so guest memory never lands in a core file.
    CoreSize,
}

impl Rlimit {
    fn resource(self) -> libc::__rlimit_resource_t {
        match self {
            Rlimit::OpenFiles => libc::RLIMIT_NOFILE,
            Rlimit::Processes => libc::RLIMIT_NPROC,
            Rlimit::CoreSize => libc::RLIMIT_CORE,
        }
    }
}

/// One thing the child does, with its arguments prepared.
enum Op {
    WriteCgroup(RawFd),
    Mount { source: Option<CString>, target: CString, fstype: Option<CString>, flags: libc::c_ulong, data: Option<CString> },
    Mknod { path: CString, rdev: libc::dev_t },
    Chown { path: CString, id: u32 },
    Chdir(CString),
    PivotRoot,
    DetachOldRoot,
    ArrangeFds,
    DefaultSignals,
    NewSession,
    SetRlimit(libc::__rlimit_resource_t, libc::rlim_t),
    DropGroups,
    SetIds(u32),
    NoNewPrivileges,
    DeathSignal,
    AllowHugePages,
    AwaitParent,
    Exec,
}

struct Step {
    op: Op,
    what: String,
}

fn cstring(p: impl AsRef<OsStr>) -> Result<CString, JailError> {
    CString::new(p.as_ref().as_bytes()).map_err(|_| JailError::Invalid {
        what: "path or argument",
        value: p.as_ref().to_string_lossy().into_owned(),
        reason: "contains a NUL byte".into(),
    })
}

/// `root` joined with an absolute path inside it.
pub fn host_path(root: &Path, inside: &Path) -> PathBuf {
    root.join(inside.strip_prefix("/").unwrap_or(inside))
}

/// The steps of a confined child before its descriptors are arranged.
fn confine_steps(c: &Confinement, steps: &mut Vec<Step>) -> Result<(), JailError> {
    let mount = |source: Option<&Path>, target: &Path, fstype: Option<&str>, flags: libc::c_ulong, data: Option<&str>| -> Result<Op, JailError> {
        Ok(Op::Mount {
            source: source.map(cstring).transpose()?,
            target: cstring(target)?,
            fstype: fstype.map(cstring).transpose()?,
            flags,
            data: data.map(cstring).transpose()?,
        })
    };
    let root = &c.root;
    let hardened = libc::MS_NOSUID | libc::MS_NODEV;
    steps.push(Step {
        op: mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)?,
        what: "make every mount private to the new mount namespace".into(),
    });
    steps.push(Step { op: mount(Some(root), root, None, libc::MS_BIND, None)?, what: format!("bind the jail {} onto itself", root.display()) });
    for w in &c.writable {
        let p = host_path(root, w);
        steps.push(Step { op: mount(Some(&p), &p, None, libc::MS_BIND, None)?, what: format!("bind {} onto itself", p.display()) });
        let flags = libc::MS_BIND | libc::MS_REMOUNT | hardened | libc::MS_NOEXEC;
        steps.push(Step { op: mount(None, &p, None, flags, None)?, what: format!("remount {} nosuid, nodev, noexec", p.display()) });
    }
    if !c.devices.is_empty() {
        let dev = host_path(root, Path::new("/dev"));
        let data = "mode=0755,size=4k,nr_inodes=16";
        steps.push(Step {
            op: mount(Some(Path::new("tmpfs")), &dev, Some("tmpfs"), libc::MS_NOSUID | libc::MS_NOEXEC, Some(data))?,
            what: format!("mount a tmpfs on {}", dev.display()),
        });
        for d in &c.devices {
            let node = dev.join(&d.name);
            steps.push(Step { op: Op::Mknod { path: cstring(&node)?, rdev: d.rdev }, what: format!("make the device node {}", node.display()) });
            steps.push(Step { op: Op::Chown { path: cstring(&node)?, id: c.uid }, what: format!("give {} to uid {}", node.display(), c.uid) });
        }
        let flags = libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC;
        steps.push(Step { op: mount(Some(Path::new("tmpfs")), &dev, Some("tmpfs"), flags, Some(data))?, what: format!("remount {} read-only", dev.display()) });
    }
    for b in &c.binds {
        let target = host_path(root, &b.inside);
        steps.push(Step {
            op: mount(Some(&b.source), &target, None, libc::MS_BIND, None)?,
            what: format!("bind {} at {}", b.source.display(), b.inside.display()),
        });
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
        if !b.device {
            flags |= libc::MS_NODEV;
        }
        if !b.writable {
            flags |= libc::MS_RDONLY;
        }
        if !b.exec {
            flags |= libc::MS_NOEXEC;
        }
        steps.push(Step {
            op: mount(None, &target, None, flags, None)?,
            what: format!("remount {} {}", b.inside.display(), if b.writable { "read-write" } else { "read-only" }),
        });
        // A writable image (a container's own, removed with it) becomes the VMM's: its uid
        // must open it for writing. Never a device node: those stay the host's.
        if b.writable && !b.device {
            steps.push(Step { op: Op::Chown { path: cstring(&target)?, id: c.uid }, what: format!("give {} to uid {}", b.inside.display(), c.uid) });
        }
    }
    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | hardened | libc::MS_NOEXEC;
    steps.push(Step { op: mount(None, root, None, flags, None)?, what: format!("remount the jail {} read-only", root.display()) });
    steps.push(Step { op: Op::Chdir(cstring(root)?), what: format!("enter {}", root.display()) });
    steps.push(Step { op: Op::PivotRoot, what: format!("pivot_root into {}", root.display()) });
    steps.push(Step { op: Op::DetachOldRoot, what: "detach the host's root".into() });
    steps.push(Step { op: Op::Chdir(cstring("/")?), what: "enter the new root".into() });
    Ok(())
}

/// Builds the child's steps for `l`.
fn steps(l: &Launch) -> Result<Vec<Step>, JailError> {
    let mut steps: Vec<Step> = l.cgroups.iter().map(|fd| Step { op: Op::WriteCgroup(fd.as_raw_fd()), what: "join the pod's cgroup".into() }).collect();
    if let Some(c) = &l.confine {
        confine_steps(c, &mut steps)?;
    }
    steps.push(Step { op: Op::DefaultSignals, what: "reset the signal mask and SIGPIPE".into() });
    steps.push(Step { op: Op::NewSession, what: "start a session".into() });
    steps.push(Step { op: Op::ArrangeFds, what: format!("place stdio and {} inherited descriptors", l.fds.len()) });
    if let Some(c) = &l.confine {
        for (r, v) in &c.rlimits {
            steps.push(Step { op: Op::SetRlimit(r.resource(), *v as libc::rlim_t), what: format!("set {r:?} to {v}") });
        }
        steps.push(Step { op: Op::DropGroups, what: "drop supplementary groups".into() });
        steps.push(Step { op: Op::SetIds(c.uid), what: format!("become uid and gid {}", c.uid) });
    }
    steps.push(Step { op: Op::NoNewPrivileges, what: "set no_new_privs".into() });
    steps.push(Step { op: Op::DeathSignal, what: "set the parent-death signal".into() });
    // The shim opts out of transparent huge pages for itself (crate::lifecycle::serve); the
    // program gets the host's policy back (husk-vmm asks for huge pages for guest memory).
    steps.push(Step { op: Op::AllowHugePages, what: "clear PR_SET_THP_DISABLE".into() });
    steps.push(Step { op: Op::AwaitParent, what: "wait for the shim".into() });
    if l.confine.is_none() {
        steps.push(Step { op: Op::Chdir(cstring(&l.cwd)?), what: format!("enter {}", l.cwd.display()) });
    }
    steps.push(Step { op: Op::Exec, what: format!("execute {}", l.program.display()) });
    Ok(steps)
}

/// The descriptors the child works with: the error pipe's write end and the parent's go
/// pipe's read end, moved above every target number once the targets are placed.
struct ChildFds {
    err: RawFd,
    go: RawFd,
    /// Sources of 0, 1, 2, 3, ... in target order.
    sources: Vec<RawFd>,
}

/// Starts `l`; returns the child's pid (in the shim's PID namespace). The child is not
/// reaped here unless it failed before its exec.
pub fn spawn(l: Launch) -> Result<u32, JailError> {
    let steps = steps(&l)?;
    let program = cstring(&l.program)?;
    let argv: Vec<CString> = l.args.iter().map(cstring).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = l
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            cstring(kv)
        })
        .collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let pipe = |what| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| JailError::Clone { what, source: e.into() });
    let (err_r, err_w) = pipe("create the error pipe")?;
    let (go_r, go_w) = pipe("create the start pipe")?;
    let fds = ChildFds { err: err_w.as_raw_fd(), go: go_r.as_raw_fd(), sources: l.stdio.iter().chain(&l.fds).map(AsRawFd::as_raw_fd).collect() };
    let flags = match l.confine {
        Some(_) => CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC,
        None => CloneFlags::empty(),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    let (err_r_raw, go_w_raw) = (err_r.as_raw_fd(), go_w.as_raw_fd());
    let child = Box::new(|| {
        // SAFETY: runs in the cloned child on its own copy of memory; `child_main` only
        // makes system calls on data prepared above and never returns.
        unsafe { child_main(&steps, &fds, err_r_raw, go_w_raw, &program, &argv_ptrs, &envp_ptrs) }
    });
    // SAFETY: the child runs `child_main` on `stack` (256 KiB, far more than its plain system
    // calls need) and execs or exits; it shares no memory with the parent (no CLONE_VM).
    let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }.map_err(|e| JailError::Clone { what: "clone", source: e.into() })?;
    drop((err_w, go_r));
    // The child may go on (it exits if this write never comes: the shim died).
    let _ = nix::unistd::write(&go_w, b"g");
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        match nix::unistd::read(&err_r, &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if got == 0 {
        return Ok(pid.as_raw() as u32);
    }
    let mut status = 0;
    // SAFETY: reaping our own child, which exits right after its report.
    unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) };
    let index = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    let step = steps.get(index).map(|s| s.what.clone()).unwrap_or_else(|| format!("step {index}"));
    Err(JailError::Setup { step, source: std::io::Error::from_raw_os_error(errno) })
}

/// Reports step `index` failed with the current errno on `err` and exits.
///
/// # Safety
/// Only system calls; callable in the cloned child.
unsafe fn fail(err: RawFd, index: usize) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&(index as u32).to_ne_bytes());
    report[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writing a stack buffer to our pipe, then ending the process.
    unsafe {
        libc::write(err, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// Runs the steps in the cloned child, then execs.
///
/// # Safety
/// Must only run in a freshly cloned child: it replaces descriptors, mounts, identity and
/// finally the process image, and never returns.
unsafe fn child_main(
    steps: &[Step],
    fds: &ChildFds,
    err_r: RawFd,
    go_w: RawFd,
    program: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> isize {
    let (mut err, mut go) = (fds.err, fds.go);
    // SAFETY: plain system calls on descriptors and strings prepared by the parent before the
    // clone; nothing allocates or takes a lock (the whole function is this block).
    unsafe {
        libc::close(err_r);
        libc::close(go_w);
        for (i, step) in steps.iter().enumerate() {
            let ok = match &step.op {
                Op::WriteCgroup(fd) => libc::write(*fd, b"0".as_ptr().cast(), 1) == 1,
                Op::Mount { source, target, fstype, flags, data } => {
                    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
                    libc::mount(ptr(source), target.as_ptr(), ptr(fstype), *flags, ptr(data).cast()) == 0
                }
                Op::Mknod { path, rdev } => libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, *rdev) == 0,
                Op::Chown { path, id } => libc::chown(path.as_ptr(), *id, *id) == 0,
                Op::Chdir(p) => libc::chdir(p.as_ptr()) == 0,
                Op::PivotRoot => libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0,
                Op::DetachOldRoot => libc::umount2(c".".as_ptr(), libc::MNT_DETACH) == 0,
                Op::DefaultSignals => {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) == 0 && libc::signal(libc::SIGPIPE, libc::SIG_DFL) != libc::SIG_ERR
                }
                Op::NewSession => libc::setsid() >= 0,
                Op::ArrangeFds => arrange_fds(&fds.sources, &mut err, &mut go),
                Op::SetRlimit(r, v) => libc::setrlimit(*r, &libc::rlimit { rlim_cur: *v, rlim_max: *v }) == 0,
                // Raw system calls: glibc's wrappers would make every thread of the shim (which
                // this child's copy of glibc still lists) change ids too, and wait for them.
                Op::DropGroups => libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0,
                Op::SetIds(id) => libc::syscall(libc::SYS_setresgid, *id, *id, *id) == 0 && libc::syscall(libc::SYS_setresuid, *id, *id, *id) == 0,
                Op::NoNewPrivileges => libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0,
                Op::DeathSignal => libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) == 0,
                Op::AllowHugePages => libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0) == 0,
                Op::AwaitParent => {
                    let mut b = [0u8; 1];
                    loop {
                        let n = libc::read(go, b.as_mut_ptr().cast(), 1);
                        if n == 1 {
                            break true;
                        }
                        if n == 0 {
                            // The shim died before it let us go.
                            libc::_exit(126);
                        }
                        if *libc::__errno_location() != libc::EINTR {
                            break false;
                        }
                    }
                }
                Op::Exec => {
                    libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
                    false
                }
            };
            if !ok {
                fail(err, i);
            }
        }
        libc::_exit(127)
    }
}

/// Puts `sources[i]` at descriptor `i` (0, 1, 2 then the inherited ones), without letting a
/// source, the error pipe or the go pipe be overwritten first: everything is copied above the
/// highest target number before the targets are filled. Descriptors above the targets stay
/// (or become) close-on-exec.
///
/// # Safety
/// Only system calls; callable in the cloned child.
unsafe fn arrange_fds(sources: &[RawFd], err: &mut RawFd, go: &mut RawFd) -> bool {
    let low = sources.len() as RawFd;
    // SAFETY: fcntl/dup3/close_range on descriptors of this (child) process.
    unsafe {
        let lift = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, low);
        *err = lift(*err);
        *go = lift(*go);
        if *err < 0 || *go < 0 {
            return false;
        }
        let mut lifted = [0 as RawFd; 64];
        if sources.len() > lifted.len() {
            *libc::__errno_location() = libc::EMFILE;
            return false;
        }
        for (i, &s) in sources.iter().enumerate() {
            lifted[i] = lift(s);
            if lifted[i] < 0 {
                return false;
            }
        }
        for (target, &from) in lifted[..sources.len()].iter().enumerate() {
            // dup2 clears close-on-exec on the target.
            if libc::dup2(from, target as RawFd) < 0 {
                return false;
            }
        }
        // Everything above the targets: close-on-exec (the shim opens its own so already).
        libc::syscall(libc::SYS_close_range, low as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_uint);
        true
    }
}

/// Opens `/dev/null` for a child's stdin.
pub fn dev_null() -> std::io::Result<OwnedFd> {
    std::fs::File::open("/dev/null").map(OwnedFd::from)
}
