//! Code that runs in the forked child between fork and execve. It only uses what was prepared
//! before the fork (plans, fds) and reports failures to the agent over a pipe as
//! `'I' message` (bad request) or `'E' errno message` (kernel refused), or `'R'` when a
//! container's init process is ready and waits for StartContainer.
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::unistd::{access, AccessFlags, Gid, Uid};

use super::plan::ExecPlan;
use crate::container::mounts::{setup_root, RootPlan};

/// A failure in the child.
#[derive(Debug)]
pub struct ChildError {
    /// The request was wrong (INVALID_ARGUMENT) rather than the kernel refusing (INTERNAL).
    pub invalid: bool,
    /// The errno, if any.
    pub errno: Option<Errno>,
    /// What failed.
    pub msg: String,
}

impl ChildError {
    /// A bad-request failure.
    pub fn invalid(msg: impl Into<String>) -> Self {
        ChildError { invalid: true, errno: None, msg: msg.into() }
    }
    /// A kernel failure.
    pub fn sys(msg: impl Into<String>, errno: Errno) -> Self {
        ChildError { invalid: false, errno: Some(errno), msg: msg.into() }
    }
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.msg.len() + 5);
        if self.invalid {
            out.push(b'I');
            if let Some(e) = self.errno {
                out.extend_from_slice(format!("{}: {}", self.msg, e.desc()).as_bytes());
                return out;
            }
        } else {
            out.push(b'E');
            out.extend_from_slice(&(self.errno.map_or(0, |e| e as i32)).to_le_bytes());
        }
        out.extend_from_slice(self.msg.as_bytes());
        out
    }
}

/// Result in the child.
pub type ChildResult<T> = std::result::Result<T, ChildError>;

/// How the child gets its namespaces and root.
pub enum Setup<'a> {
    /// A new container: join the pod's namespaces, unshare new ones (the pid namespace was
    /// entered by the forking thread already) and set up its root.
    Create {
        /// Namespaces to unshare.
        flags: CloneFlags,
        /// The pod's namespaces to join first.
        join: &'a [(OwnedFd, CloneFlags)],
        /// The root to build.
        root: &'a RootPlan,
    },
    /// Exec into a container: join these namespaces (the pid namespace was joined by the
    /// forking thread already).
    Join(&'a [(OwnedFd, CloneFlags)]),
}

/// The child's file descriptors, all prepared by the parent.
pub struct ChildFds {
    /// stdin/stdout/stderr for the process (the pty slave three times for a terminal).
    pub stdio: [OwnedFd; 3],
    /// A terminal: become its controlling process.
    pub tty: bool,
    /// cgroup.procs of the container's cgroup, opened for writing.
    pub cgroup_procs: Option<OwnedFd>,
    /// Write end of the report pipe (O_CLOEXEC: closes on exec).
    pub report: OwnedFd,
    /// Read end of the start pipe (init processes only).
    pub start: Option<OwnedFd>,
}

/// Runs the child and never returns.
pub fn run(setup: Setup<'_>, fds: ChildFds, plan: &ExecPlan) -> ! {
    let code = match setup_and_exec(setup, &fds, plan) {
        Ok(()) => 0,
        Err(e) => {
            let _ = write_fd(&fds.report, &e.encode());
            1
        }
    };
    // SAFETY: _exit ends the child without running the parent's atexit handlers or
    // destructors, which must not run in a forked copy.
    unsafe { libc::_exit(code) }
}

fn setup_and_exec(setup: Setup<'_>, fds: &ChildFds, plan: &ExecPlan) -> ChildResult<()> {
    if let Some(procs) = &fds.cgroup_procs {
        write_fd(procs, b"0").map_err(|e| ChildError::sys("joining the container cgroup", e))?;
    }
    nix::unistd::setsid().map_err(|e| ChildError::sys("setsid", e))?;
    for (i, fd) in fds.stdio.iter().enumerate() {
        // SAFETY: dup2 of a valid fd onto 0..=2 in this single-threaded child.
        let r = unsafe { libc::dup2(fd.as_raw_fd(), i as i32) };
        Errno::result(r).map_err(|e| ChildError::sys("setting up stdio", e))?;
    }
    if fds.tty {
        // SAFETY: TIOCSCTTY on fd 0 (the pty slave) with argument 0; no memory is passed.
        let r = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
        Errno::result(r).map_err(|e| ChildError::sys("making the pty the controlling terminal", e))?;
    }
    match &setup {
        Setup::Create { flags, join, root } => {
            for (fd, kind) in join.iter() {
                setns(fd.as_fd(), *kind).map_err(|e| ChildError::sys(format!("joining the pod's namespace {kind:?}"), e))?;
            }
            nix::sched::unshare(*flags).map_err(|e| ChildError::sys(format!("creating namespaces {flags:?}"), e))?;
            // As runc: a new network namespace gets its loopback interface up.
            if flags.contains(CloneFlags::CLONE_NEWNET) {
                crate::network::set_up("lo", true).map_err(|e| ChildError::sys("bringing up lo in the new network namespace", e))?;
            }
            setup_root(root)?
        }
        Setup::Join(namespaces) => {
            for (fd, kind) in namespaces.iter() {
                setns(fd.as_fd(), *kind).map_err(|e| ChildError::sys(format!("joining namespace {kind:?}"), e))?;
            }
        }
    }
    // Before the credentials change: installing a filter without no_new_privs needs
    // CAP_SYS_ADMIN, which the process may be about to give up.
    if let Some(guard) = plan.vsock_guard {
        guard.install()?;
    }
    // As runc: without no_new_privs the profile goes in now, while the process still has
    // CAP_SYS_ADMIN; with it, as late as possible (right before execve, below), so that the
    // profile need not allow what the setup does.
    if let Some(profile) = plan.seccomp.as_deref().filter(|_| !plan.no_new_privs) {
        profile.install()?;
    }
    if let Some(adj) = plan.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| ChildError::sys(format!("setting oom_score_adj {adj}"), io_errno(&e)))?;
    }
    let (uid, gid) = match &plan.username {
        Some(name) => lookup_user(name)?,
        None => (plan.uid, plan.gid),
    };
    if matches!(setup, Setup::Create { .. }) {
        // Like runc: a missing cwd of the init process is created.
        let _ = std::fs::create_dir_all(plan.cwd.to_string_lossy().as_ref());
    }
    // Like runc: with no HOME in the environment, the user's home from /etc/passwd, else "/".
    let mut env = plan.env.clone();
    if !env.iter().any(|e| e.as_bytes().starts_with(b"HOME=")) {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        if let Ok(home) = CString::new(format!("HOME={}", home_in_passwd(&passwd, uid))) {
            env.push(home);
        }
    }
    set_credentials(plan, uid, gid)?;
    nix::unistd::chdir(plan.cwd.as_c_str()).map_err(|e| ChildError { invalid: true, errno: Some(e), msg: format!("cwd {:?}", plan.cwd) })?;
    let exe = resolve_executable(plan)?;
    if let Some(start) = &fds.start {
        write_fd(&fds.report, b"R").map_err(|e| ChildError::sys("reporting ready", e))?;
        let mut byte = [0u8; 1];
        match nix::unistd::read(start, &mut byte) {
            Ok(1) => {}
            // The container was removed before it started.
            _ => {
                // SAFETY: see `run`.
                unsafe { libc::_exit(1) }
            }
        }
    }
    reset_signals();
    // Every fd the agent has open besides stdio must not leak into the workload.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on our own fds.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    let err = match plan.seccomp.as_deref().filter(|_| plan.no_new_privs).map(|p| p.install()).transpose() {
        Ok(_) => {
            let err = nix::unistd::execve(&exe, &plan.args, &env).unwrap_err();
            ChildError { invalid: true, errno: Some(err), msg: format!("exec {:?}", plan.program) }
        }
        Err(e) => e,
    };
    if fds.start.is_some() {
        // Nobody listens to the report pipe after 'R': tell the workload's stderr.
        let text = match err.errno {
            Some(e) => format!("husk-agent: {}: {}\n", err.msg, e.desc()),
            None => format!("husk-agent: {}\n", err.msg),
        };
        let _ = std::io::stderr().write_all(text.as_bytes());
        // SAFETY: see `run`.
        unsafe { libc::_exit(127) }
    }
    Err(err)
}

/// The workload starts with default signal dispositions and nothing blocked (the agent blocks
/// SIGINT/SIGTERM for its signal thread and ignores SIGPIPE, and both would be inherited).
fn reset_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL runs no handler code.
            let _ = unsafe { sigaction(sig, &default) };
        }
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

fn write_fd(fd: &OwnedFd, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn set_credentials(plan: &ExecPlan, uid: u32, gid: u32) -> ChildResult<()> {
    use nix::sys::resource::setrlimit;
    for (res, soft, hard) in &plan.rlimits {
        setrlimit(*res, *soft, *hard).map_err(|e| ChildError { invalid: true, errno: Some(e), msg: format!("rlimit {res:?} {soft}/{hard}") })?;
    }
    if let Some(c) = &plan.caps {
        for cap in caps::all() {
            if !c.bounding.contains(&cap) {
                caps::drop(None, caps::CapSet::Bounding, cap).map_err(|e| ChildError::invalid(format!("dropping {cap} from the bounding set: {e}")))?;
            }
        }
        nix::sys::prctl::set_keepcaps(true).map_err(|e| ChildError::sys("PR_SET_KEEPCAPS", e))?;
    }
    let groups: Vec<Gid> = plan.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| ChildError { invalid: true, errno: Some(e), msg: format!("additional gids {:?}", plan.groups) })?;
    let g = Gid::from_raw(gid);
    nix::unistd::setresgid(g, g, g).map_err(|e| ChildError { invalid: true, errno: Some(e), msg: format!("gid {gid}") })?;
    let u = Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(|e| ChildError { invalid: true, errno: Some(e), msg: format!("uid {uid}") })?;
    if let Some(c) = &plan.caps {
        for (set, which, name) in [
            // Effective before permitted: each capset needs effective ⊆ permitted.
            (&c.inheritable, caps::CapSet::Inheritable, "inheritable"),
            (&c.effective, caps::CapSet::Effective, "effective"),
            (&c.permitted, caps::CapSet::Permitted, "permitted"),
            (&c.ambient, caps::CapSet::Ambient, "ambient"),
        ] {
            caps::set(None, which, set).map_err(|e| ChildError::invalid(format!("setting {name} capabilities {set:?}: {e}")))?;
        }
    }
    if plan.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| ChildError::sys("PR_SET_NO_NEW_PRIVS", e))?;
    }
    if let Some(mask) = plan.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    Ok(())
}

/// The home directory of `uid` in the text of an /etc/passwd, or "/" when it has none.
fn home_in_passwd(passwd: &str, uid: u32) -> &str {
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && f[2].parse() == Ok(uid))
        .map(|f| f[5])
        .filter(|home| home.starts_with('/'))
        .unwrap_or("/")
}

/// uid and gid of `name` from the container's /etc/passwd.
fn lookup_user(name: &str) -> ChildResult<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            if let (Ok(u), Ok(g)) = (f[2].parse(), f[3].parse()) {
                return Ok((u, g));
            }
        }
    }
    Err(ChildError::invalid(format!("user {name:?} not found in the container's /etc/passwd")))
}

fn is_executable(path: &CString) -> bool {
    let meta = std::fs::metadata(path.to_string_lossy().as_ref());
    meta.is_ok_and(|m| m.is_file()) && access(path.as_c_str(), AccessFlags::X_OK).is_ok()
}

fn resolve_executable(plan: &ExecPlan) -> ChildResult<CString> {
    let program = &plan.program;
    if program.contains('/') {
        let c = CString::new(program.as_str()).map_err(|_| ChildError::invalid("program contains NUL"))?;
        if is_executable(&c) {
            return Ok(c);
        }
        return Err(ChildError::invalid(format!("executable {program:?} not found or not executable in the container")));
    }
    for dir in plan.path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        if let Ok(c) = CString::new(format!("{dir}/{program}")) {
            if is_executable(&c) {
                return Ok(c);
            }
        }
    }
    Err(ChildError::invalid(format!("executable {program:?} not found in PATH {:?} in the container", plan.path)))
}

/// Decodes a report. Ok(true): ready ('R'); Ok(false): nothing (exec succeeded).
pub fn decode_report(buf: &[u8]) -> crate::error::Result<bool> {
    use crate::error::AgentError;
    match buf.first() {
        None => Ok(false),
        Some(b'R') => Ok(true),
        Some(b'I') => Err(AgentError::InvalidArgument(String::from_utf8_lossy(&buf[1..]).into_owned())),
        Some(b'E') if buf.len() >= 5 => {
            let mut n = [0u8; 4];
            n.copy_from_slice(&buf[1..5]);
            let errno = i32::from_le_bytes(n);
            Err(AgentError::Internal { what: String::from_utf8_lossy(&buf[5..]).into_owned(), source: std::io::Error::from_raw_os_error(errno) })
        }
        Some(_) => {
            Err(AgentError::Internal { what: "process setup sent a malformed report".into(), source: std::io::Error::from(std::io::ErrorKind::InvalidData) })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn home_comes_from_passwd_or_is_root() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\nbad:x:7\nrel:x:8:8::home:/x\n";
        assert_eq!(super::home_in_passwd(passwd, 0), "/root");
        assert_eq!(super::home_in_passwd(passwd, 1000), "/home/user");
        assert_eq!(super::home_in_passwd(passwd, 7), "/", "short line");
        assert_eq!(super::home_in_passwd(passwd, 8), "/", "relative home");
        assert_eq!(super::home_in_passwd(passwd, 4242), "/", "unknown uid");
        assert_eq!(super::home_in_passwd("", 0), "/", "no passwd");
    }

    use super::*;

    #[test]
    fn reports_round_trip() {
        let e = ChildError::invalid("executable \"nope\" not found");
        let err = decode_report(&e.encode()).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(err.to_string().contains("nope"));
        let e = ChildError::sys("mount proc on /proc", Errno::EPERM);
        let err = decode_report(&e.encode()).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL);
        assert!(crate::error::chain(&err).contains("mount proc on /proc"));
        assert!(decode_report(b"R").unwrap());
        assert!(!decode_report(b"").unwrap());
        assert!(decode_report(b"Zx").is_err());
    }
}
