//! A host process standing for a container in its network namespace. Clients that configure a
//! container's network from the host look for a process in it: `ctr run --cni` runs CNI in
//! `/proc/<task pid>/ns/net` between Create and Start, and nerdctl's createRuntime hook in
//! `/proc/<state pid>/ns/net`. A VM's processes are not host processes, so for a sandbox whose
//! spec asks for a new network namespace (or runs host hooks) the shim forks this holder: it
//! enters (or creates) the namespace, closes every descriptor and sleeps until killed. Its pid
//! is the one the shim reports until the container starts.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use super::NetworkError;

/// The namespace the holder lives in.
#[derive(Debug)]
pub enum HolderNs<'a> {
    /// A new network namespace.
    New,
    /// This one (an nsfs file opened by the caller).
    Join(&'a File),
}

#[derive(Debug, Default)]
struct Exited {
    done: Mutex<bool>,
    cond: Condvar,
}

/// The holder process; killed and reaped on drop.
#[derive(Debug)]
pub struct NetnsHolder {
    pid: u32,
    exited: Arc<Exited>,
}

fn holder_err(source: std::io::Error) -> NetworkError {
    NetworkError::Holder { source }
}

/// The child's side: only async-signal-safe system calls on values computed before the fork.
/// Reports 0 or an errno on `report`, then sleeps until killed.
fn child(join: Option<RawFd>, report: RawFd, parent: libc::pid_t) -> ! {
    // SAFETY: after fork in a multithreaded process only async-signal-safe calls are
    // allowed; these are raw system calls on descriptors and integers that were valid before
    // the fork, and pointers to locals. Nothing allocates, locks or returns into Rust code.
    unsafe {
        let r = match join {
            Some(fd) => libc::setns(fd, libc::CLONE_NEWNET),
            None => libc::unshare(libc::CLONE_NEWNET),
        };
        let code: i32 = if r == 0 { 0 } else { *libc::__errno_location() };
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 || libc::getppid() != parent {
            libc::_exit(1);
        }
        libc::prctl(libc::PR_SET_NAME, c"husk-netns".as_ptr() as libc::c_ulong, 0, 0, 0);
        // Nothing of the shim's: no tap, socket or FIFO stays open because of the holder. Closed
        // before the report, so the holder holds nothing once `spawn` returns.
        let report_u = report as u32;
        if report_u > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, report_u - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, report_u + 1, u32::MAX, 0u32);
        libc::write(report, (&code as *const i32).cast(), 4);
        libc::close(report);
        if code != 0 {
            libc::_exit(1);
        }
        loop {
            libc::pause();
        }
    }
}

impl NetnsHolder {
    /// Forks the holder into `ns`. Its namespace is in place when this returns.
    pub fn spawn(ns: HolderNs<'_>) -> Result<NetnsHolder, NetworkError> {
        let join = match ns {
            HolderNs::New => None,
            HolderNs::Join(f) => Some(f.as_raw_fd()),
        };
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| holder_err(e.into()))?;
        let exited = Arc::new(Exited::default());
        let watch = exited.clone();
        let (tx, rx) = mpsc::channel();
        let parent = std::process::id() as libc::pid_t;
        let report = write.as_raw_fd();
        // The forking thread lives until the holder is reaped: PR_SET_PDEATHSIG fires when the
        // thread that forked ends.
        std::thread::Builder::new()
            .name("netns-holder".into())
            .spawn(move || {
                // SAFETY: fork(2); the child runs only `child`, which is async-signal-safe.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    child(join, report, parent);
                }
                let _ = tx.send(if pid < 0 { Err(std::io::Error::last_os_error()) } else { Ok(pid) });
                if pid > 0 {
                    // Waits for the exit without reaping (WNOWAIT), then reaps under the lock:
                    // `stop` never signals a pid that was reaped and could be reused.
                    loop {
                        // SAFETY: siginfo_t is plain data; all-zero is a valid value.
                        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                        // SAFETY: waitid on our own child with a valid siginfo pointer.
                        let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
                        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                            break;
                        }
                    }
                    let mut done = watch.done.lock().unwrap_or_else(|p| p.into_inner());
                    let mut status = 0;
                    // SAFETY: waitpid on our own (exited) child, with a valid status pointer.
                    unsafe { libc::waitpid(pid, &mut status, 0) };
                    *done = true;
                    watch.cond.notify_all();
                }
            })
            .map_err(holder_err)?;
        // The forking thread may still be starting (and hold `join` open for the child), so the
        // caller's namespace file stays borrowed until the child reported.
        let pid = rx.recv().map_err(|_| holder_err(std::io::Error::other("the holder thread died")))?.map_err(holder_err)?;
        drop(write);
        let holder = NetnsHolder { pid: pid as u32, exited };
        let mut code = [0u8; 4];
        let mut f = File::from(read);
        let got = std::io::Read::read(&mut f, &mut code).map_err(holder_err)?;
        let failed = match (got, i32::from_ne_bytes(code)) {
            (4, 0) => {
                // EOF once the holder closed its end: it holds no descriptor of ours from here on.
                let mut rest = [0u8; 1];
                std::io::Read::read(&mut f, &mut rest).map_err(holder_err)?;
                return Ok(holder);
            }
            (4, errno) => std::io::Error::from_raw_os_error(errno),
            _ => std::io::Error::other("the holder exited before entering the namespace"),
        };
        // It exits by itself: wait until it is reaped, so that nothing signals a reused pid.
        holder.wait_reaped(Duration::from_secs(5));
        Err(holder_err(failed))
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its network namespace, as a path.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// Opens its network namespace (a reference that outlives the holder).
    pub fn open_netns(&self) -> Result<File, NetworkError> {
        super::netns::open(&self.netns_path())
    }

    /// Waits up to `timeout` until the holder is reaped; returns whether it is.
    fn wait_reaped(&self, timeout: Duration) -> bool {
        let done = self.exited.done.lock().unwrap_or_else(|p| p.into_inner());
        *self.exited.cond.wait_timeout_while(done, timeout, |d| !*d).unwrap_or_else(|p| p.into_inner()).0
    }

    /// SIGKILLs the holder (unless it is reaped already: the reaper reaps under the lock held
    /// here) and waits a few seconds at most until it is reaped.
    pub fn stop(&self) {
        {
            let done = self.exited.done.lock().unwrap_or_else(|p| p.into_inner());
            if !*done {
                if let Ok(pid) = i32::try_from(self.pid) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        if !self.wait_reaped(Duration::from_secs(5)) {
            log::error!("netns holder {} not reaped within 5 s of SIGKILL", self.pid);
        }
    }
}

impl Drop for NetnsHolder {
    fn drop(&mut self) {
        self.stop();
    }
}
