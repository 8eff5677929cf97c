//! Processes the agent starts: their stdio, their exit, and how they are forked.
pub mod child;
pub mod plan;
pub mod reaper;
pub mod stdio;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::container::mounts::RootPlan;
use crate::error::{AgentError, Result};
use crate::pod::NsPlan;
use child::{ChildFds, Setup};
use plan::ExecPlan;
use reaper::Reaper;
use stdio::{Stdin, Stream};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal.
    pub status: u32,
    /// Terminating signal, 0 if it exited.
    pub signal: u32,
    /// Nanoseconds since the Unix epoch when the exit was reaped.
    pub at_unix_nanos: u64,
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl ExitInfo {
    /// Exited with `code`.
    pub fn exited(code: i32) -> Self {
        ExitInfo { status: (code & 0xff) as u32, signal: 0, at_unix_nanos: now_nanos() }
    }
    /// Killed by `sig`.
    pub fn signaled(sig: i32) -> Self {
        ExitInfo { status: 128 + sig as u32, signal: sig as u32, at_unix_nanos: now_nanos() }
    }
}

/// A process the agent started.
pub struct Process {
    /// Pid in the agent's pid namespace.
    pub pid: i32,
    /// "" for a container's init process.
    pub exec_id: String,
    /// stdout (or the terminal).
    pub stdout: Arc<Stream>,
    /// stderr (closed for a terminal).
    pub stderr: Arc<Stream>,
    /// stdin.
    pub stdin: Stdin,
    /// The pty master of a terminal process.
    pub tty: Option<Arc<OwnedFd>>,
    exit: Mutex<Option<ExitInfo>>,
    exit_cond: Condvar,
    start: Mutex<Option<OwnedFd>>,
}

impl Process {
    /// Records the exit (called by the reaper).
    pub fn set_exited(&self, info: ExitInfo) {
        self.stdout.mark_exited();
        self.stderr.mark_exited();
        *self.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(info);
        self.exit_cond.notify_all();
        // An init that never started: drop the start pipe.
        self.start.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The exit, if the process ended.
    pub fn exit_info(&self) -> Option<ExitInfo> {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until the process exited and its output up to the exit is buffered.
    pub fn wait(&self) -> ExitInfo {
        let info = {
            let mut g = self.exit.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(i) = *g {
                    break i;
                }
                g = self.exit_cond.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        };
        self.stdout.wait_drained();
        self.stderr.wait_drained();
        info
    }

    /// Lets a created init process exec. False if it was already started.
    pub fn start(&self) -> Result<bool> {
        let Some(fd) = self.start.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(false);
        };
        nix::unistd::write(&fd, b"S").map_err(|e| AgentError::sys("starting the init process", e))?;
        Ok(true)
    }

    /// Whether StartContainer ran (always true for exec processes and exited processes).
    pub fn started(&self) -> bool {
        self.start.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Sends `sig` unless the process already exited.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        if self.exit_info().is_some() {
            return Err(AgentError::NotFound(format!("process {} already exited", self.pid)));
        }
        match nix::sys::signal::kill(Pid::from_raw(self.pid), sig) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(AgentError::sys(format!("sending {sig} to pid {}", self.pid), e)),
        }
    }

    /// Resizes the terminal.
    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        let Some(master) = &self.tty else {
            return Err(AgentError::FailedPrecondition(format!("process {} has no terminal", self.pid)));
        };
        set_winsize(master, width, height)
    }

    /// Stops the output threads (container removed).
    pub fn abandon(&self) {
        self.stdout.abandon();
        self.stderr.abandon();
        let _ = self.stdin.close();
    }
}

fn set_winsize(fd: &impl AsFd, width: u16, height: u16) -> Result<()> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize that lives for the whole call.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    nix::errno::Errno::result(r).map(drop).map_err(|e| AgentError::sys(format!("resizing terminal to {width}x{height}"), e))
}

/// Parent and child ends of a process's stdio.
struct StdioPair {
    child: [OwnedFd; 3],
    stdin: Option<Arc<OwnedFd>>,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    master: Option<Arc<OwnedFd>>,
}

fn io(what: &str) -> impl Fn(nix::Error) -> AgentError + '_ {
    move |e| AgentError::sys(what, e)
}

fn make_stdio(plan: &ExecPlan, want_stdin: bool) -> Result<StdioPair> {
    let cloexec = OFlag::O_CLOEXEC;
    if plan.terminal {
        let pty = nix::pty::openpty(None, None).map_err(io("opening a pty"))?;
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).map_err(io("setting FD_CLOEXEC on the pty"))?;
        }
        if let Some((w, h)) = plan.console_size {
            set_winsize(&pty.master, w, h)?;
        }
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| AgentError::io("dup of pty", e));
        let child = [dup(&pty.slave)?, dup(&pty.slave)?, pty.slave];
        let stdout = dup(&pty.master)?;
        let master = Arc::new(pty.master);
        return Ok(StdioPair { child, stdin: want_stdin.then(|| master.clone()), stdout, stderr: None, master: Some(master) });
    }
    let (stdin_child, stdin) = if want_stdin {
        let (r, w) = nix::unistd::pipe2(cloexec).map_err(io("creating the stdin pipe"))?;
        (r, Some(Arc::new(w)))
    } else {
        let null = std::fs::File::open("/dev/null").map_err(|e| AgentError::io("opening /dev/null", e))?;
        (OwnedFd::from(null), None)
    };
    let (out_r, out_w) = nix::unistd::pipe2(cloexec).map_err(io("creating the stdout pipe"))?;
    let (err_r, err_w) = nix::unistd::pipe2(cloexec).map_err(io("creating the stderr pipe"))?;
    Ok(StdioPair { child: [stdin_child, out_w, err_w], stdin, stdout: out_r, stderr: Some(err_r), master: None })
}

/// How to place the new process.
pub enum Placement<'a> {
    /// New namespaces, joined pod namespaces and a new root.
    Create {
        /// Namespaces to create and to join.
        ns: NsPlan,
        /// The root to build.
        root: &'a RootPlan,
    },
    /// Join a running container: its pid namespace (set on the forking thread) and the others.
    Join {
        /// The container's pid namespace.
        pid_ns: Option<OwnedFd>,
        /// The other namespaces, joined in order (mount last).
        namespaces: Vec<(OwnedFd, CloneFlags)>,
    },
}

/// Forks a process; for `Create` it waits for StartContainer before exec'ing.
pub fn spawn(
    reaper: &Reaper,
    exec_id: &str,
    plan: &ExecPlan,
    want_stdin: bool,
    cgroup_procs: Option<OwnedFd>,
    placement: Placement<'_>,
) -> Result<Arc<Process>> {
    let stdio = make_stdio(plan, want_stdin)?;
    let (report_r, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io("creating a pipe"))?;
    let is_create = matches!(placement, Placement::Create { .. });
    let (start_r, start_w) = if is_create {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io("creating a pipe"))?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let name = if exec_id.is_empty() { "init".to_string() } else { exec_id.to_string() };
    let stdout = Stream::start(stdio.stdout, format!("out-{name}")).map_err(|e| AgentError::io("starting the stdout reader", e))?;
    let stderr = match stdio.stderr {
        Some(fd) => Stream::start(fd, format!("err-{name}")).map_err(|e| AgentError::io("starting the stderr reader", e))?,
        None => Stream::closed(),
    };
    let stdin = match stdio.stdin {
        Some(fd) => Stdin::new(fd, plan.terminal).map_err(|e| AgentError::io("stdin", e))?,
        None => Stdin::none(),
    };
    let fds = ChildFds { stdio: stdio.child, tty: plan.terminal, cgroup_procs, report: report_w, start: start_r };
    let process = |pid: i32| {
        Arc::new(Process {
            pid,
            exec_id: exec_id.to_string(),
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            stdin,
            tty: stdio.master.clone(),
            exit: Mutex::new(None),
            exit_cond: Condvar::new(),
            start: Mutex::new(start_w),
        })
    };
    // Fork from a dedicated thread: entering a new or existing pid namespace changes the pid
    // namespace of the calling thread's future children, and that must not stick to a server
    // thread. fork() (not a raw clone) so the C library's atfork handlers keep malloc usable.
    let proc = std::thread::scope(|s| {
        s.spawn(move || -> Result<Arc<Process>> {
            let setup = match &placement {
                Placement::Create { ns, root } => {
                    if let Some(pid_ns) = &ns.join_pid {
                        nix::sched::setns(pid_ns.as_fd(), CloneFlags::CLONE_NEWPID).map_err(io("joining the pod's pid namespace"))?;
                    } else if ns.new.contains(CloneFlags::CLONE_NEWPID) {
                        nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(io("creating a pid namespace"))?;
                    }
                    Setup::Create { flags: ns.new - CloneFlags::CLONE_NEWPID, join: &ns.join, root }
                }
                Placement::Join { pid_ns, namespaces } => {
                    if let Some(ns) = pid_ns {
                        nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWPID).map_err(io("joining the container's pid namespace"))?;
                    }
                    Setup::Join(namespaces)
                }
            };
            let mut table = reaper.lock();
            // SAFETY: the child only uses data prepared before the fork and ends in _exit
            // (child::run never returns).
            let pid = match unsafe { nix::unistd::fork() }.map_err(io("forking a process"))? {
                nix::unistd::ForkResult::Child => child::run(setup, fds, plan),
                nix::unistd::ForkResult::Parent { child } => child.as_raw(),
            };
            let p = process(pid);
            table.insert(pid, p.clone());
            Ok(p)
        })
        .join()
        .unwrap_or_else(|_| Err(AgentError::FailedPrecondition("spawn thread panicked".into())))
    })?;
    reaper.notify_spawned();
    // Wait for the child's report: 'R' (init ready), EOF (exec'd) or an error.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match nix::unistd::read(&report_r, &mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf == b"R" || buf.len() > 4096 {
                    break;
                }
            }
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(AgentError::sys("reading the child's report", e)),
        }
    }
    match child::decode_report(&buf) {
        Ok(_) if is_create && buf != b"R" => {
            proc.wait();
            Err(AgentError::FailedPrecondition("container init process died during setup".into()))
        }
        Ok(_) => Ok(proc),
        Err(e) => {
            // The child exits after reporting; wait so nothing is left behind.
            proc.abandon();
            proc.wait();
            Err(e)
        }
    }
}
