//! Test helper: runs a closure in a forked child, for tests that install process-wide state
//! (seccomp filters, cgroup membership) that must not land on the threaded test harness.
#![allow(clippy::unwrap_used)]

/// Runs `f` in a forked child and returns how it ended: Ok(exit code) or Err(signal).
pub(crate) fn in_child(f: impl FnOnce() -> i32) -> Result<i32, nix::sys::signal::Signal> {
    // SAFETY: the callers' closures make plain syscalls; the child leaves with _exit.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let code = f();
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None).unwrap() {
            nix::sys::wait::WaitStatus::Exited(_, code) => Ok(code),
            nix::sys::wait::WaitStatus::Signaled(_, sig, _) => Err(sig),
            other => panic!("child ended with {other:?}"),
        },
    }
}
