//! Seccomp filters per thread kind, compiled with seccompiler and installed by each thread
//! before its loop (`--no-seccomp` turns them off for debugging). A call outside the list
//! kills the process (SIGSYS).
//!
//! - vCPU threads: KVM_RUN, KVM_IRQ_LINE, and KVM_GET_MP_STATE and KVM_GET_REGS (a halt
//!   probe reads the vCPU's own state) as the only ioctls, I/O to the console and eventfds,
//!   locks, memory allocation.
//! - Every thread may trim a bounded log file (the console, stderr: `crate::bounded_log`),
//!   hence positioned reads and writes, lseek and ftruncate in the common list.
//! - The device event loop: epoll, file and socket I/O for block, net and vsock backends.
//! - Disk I/O threads (one per disk): epoll on their queue, vectored file I/O, sync,
//!   KVM_IRQ_LINE (the only ioctl) for the disk's interrupt.
//! - The API thread: accepting and serving unix-socket connections, signalling vCPU threads,
//!   opening the images attached to disk slots, and KVM_IRQ_LINE (the only ioctl) for the
//!   config-change interrupt of a slot.
//! - The main thread, once everything runs: waiting for the exit, removing the API socket.

use std::collections::BTreeMap;
use std::sync::Arc;

use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};

/// Building a filter failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the seccomp filter for {0} threads")]
pub struct SeccompError(&'static str, #[source] seccompiler::BackendError);

/// Kinds of threads with their own filter.
#[derive(Clone, Copy, Debug)]
pub enum ThreadKind {
    /// `vcpu-N`.
    Vcpu,
    /// `vmm-events`.
    EventLoop,
    /// `vmm-api`.
    Api,
    /// `blk-<id>`, the I/O thread of one disk.
    BlockIo,
    /// The main thread once the VM runs (waits for the exit, removes the API socket).
    Main,
}

/// The compiled filters.
pub struct Filters {
    vcpu: Arc<BpfProgram>,
    event_loop: Arc<BpfProgram>,
    api: Arc<BpfProgram>,
    block_io: Arc<BpfProgram>,
    main: Arc<BpfProgram>,
}

impl Filters {
    /// The filter of one thread kind.
    pub fn get(&self, kind: ThreadKind) -> Arc<BpfProgram> {
        match kind {
            ThreadKind::Vcpu => self.vcpu.clone(),
            ThreadKind::EventLoop => self.event_loop.clone(),
            ThreadKind::Api => self.api.clone(),
            ThreadKind::BlockIo => self.block_io.clone(),
            ThreadKind::Main => self.main.clone(),
        }
    }
}

/// KVM_RUN = _IO(0xAE, 0x80).
const KVM_RUN: u64 = 0xae80;
/// KVM_IRQ_LINE = _IOW(0xAE, 0x61, struct kvm_irq_level), 8 bytes.
const KVM_IRQ_LINE: u64 = 0x4008_ae61;
/// KVM_GET_MP_STATE = _IOR(0xAE, 0x98, struct kvm_mp_state), 4 bytes.
const KVM_GET_MP_STATE: u64 = 0x8004_ae98;
/// KVM_GET_REGS = _IOR(0xAE, 0x81, struct kvm_regs), 144 bytes.
const KVM_GET_REGS: u64 = 0x8090_ae81;

/// Syscalls every thread needs: memory, locks, signals, exit, logging.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_mprotect,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_rseq,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_fcntl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_ftruncate,
];

const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ioctl,
    libc::SYS_fcntl,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_openat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

const API: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_lseek,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_setsockopt,
    libc::SYS_fcntl,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

const BLOCK_IO: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
];

const MAIN: &[i64] = &[libc::SYS_unlink, libc::SYS_unlinkat];

/// Builds one filter: the syscalls of `allow`, and `ioctl` either among them (any request) or,
/// with `ioctls`, for those requests only.
fn build(name: &'static str, allow: &[&[i64]], ioctls: Option<&[u64]>) -> Result<Arc<BpfProgram>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for list in allow {
        for &nr in *list {
            rules.insert(nr, Vec::new());
        }
    }
    if let Some(requests) = ioctls {
        let mut any_of = Vec::new();
        for &req in requests {
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req).map_err(|e| SeccompError(name, e))?;
            any_of.push(SeccompRule::new(vec![cond]).map_err(|e| SeccompError(name, e))?);
        }
        rules.insert(libc::SYS_ioctl, any_of);
    }
    let filter = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, TargetArch::x86_64).map_err(|e| SeccompError(name, e))?;
    BpfProgram::try_from(filter).map(Arc::new).map_err(|e| SeccompError(name, e))
}

/// Compiles all filters.
pub fn filters() -> Result<Filters, SeccompError> {
    Ok(Filters {
        // A vCPU raises a config-change interrupt when a device fails to activate.
        vcpu: build("vcpu", &[COMMON], Some(&[KVM_RUN, KVM_IRQ_LINE, KVM_GET_MP_STATE, KVM_GET_REGS]))?,
        event_loop: build("event loop", &[COMMON, EVENT_LOOP], None)?,
        // The API thread raises a slot's config-change interrupt after an attach or detach.
        api: build("api", &[COMMON, API], Some(&[KVM_IRQ_LINE]))?,
        block_io: build("disk I/O", &[COMMON, BLOCK_IO], Some(&[KVM_IRQ_LINE]))?,
        main: build("main", &[COMMON, MAIN], None)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `call` in a child under the filter of `kind`; true if the call came back (the
    /// child exits 7), false if the filter killed it (SIGSYS).
    fn allowed_under(kind: ThreadKind, call: fn()) -> bool {
        let f = filters().unwrap().get(kind);
        // SAFETY: fork in a test; the child only installs the prepared filter, makes the
        // call and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            if seccompiler::apply_filter(&f).is_err() {
                // SAFETY: exiting the child.
                unsafe { libc::_exit(9) };
            }
            call();
            // SAFETY: exiting the child.
            unsafe { libc::_exit(7) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS {
            return false;
        }
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7, "{kind:?}: child status {status:#x}");
        true
    }

    const KINDS: [ThreadKind; 5] = [ThreadKind::Vcpu, ThreadKind::EventLoop, ThreadKind::Api, ThreadKind::BlockIo, ThreadKind::Main];

    // The calls the filters are tried with: on fd -1 or with null pointers, so the kernel
    // answers an error (EBADF, EFAULT, ENOENT) without touching memory or running anything.
    fn common_calls() {
        // SAFETY: getpid, and a write of nothing to fd -1 (EBADF).
        unsafe {
            libc::getpid();
            libc::write(-1, std::ptr::null(), 0);
        }
    }
    fn getppid() {
        // SAFETY: getppid takes no arguments.
        unsafe { libc::getppid() };
    }
    fn execve_null() {
        // SAFETY: execve of a NULL path fails with EFAULT if it is let through.
        unsafe { libc::syscall(libc::SYS_execve, 0, 0, 0) };
    }
    fn epoll_wait_bad_fd() {
        // SAFETY: epoll_wait on fd -1 with no events fails with EBADF.
        unsafe { libc::epoll_wait(-1, std::ptr::null_mut(), 0, 0) };
    }
    fn unlink_missing() {
        // SAFETY: unlink of a path that does not exist, from a valid C string.
        unsafe { libc::unlink(c"/nonexistent/husk-seccomp-test".as_ptr()) };
    }
    fn log_trimming_calls() {
        // SAFETY: positioned I/O, lseek and ftruncate on fd -1 fail with EBADF.
        unsafe {
            libc::pread(-1, std::ptr::null_mut(), 0, 0);
            libc::pwrite(-1, std::ptr::null(), 0, 0);
            libc::lseek(-1, 0, libc::SEEK_END);
            libc::ftruncate(-1, 0);
        }
    }

    #[test]
    fn filters_compile() {
        // What each kind is for is allowed, what none needs is killed: the compiled programs
        // really encode the lists (not just some program of some length).
        for kind in KINDS {
            assert!(allowed_under(kind, common_calls), "{kind:?}: common calls refused");
            assert!(!allowed_under(kind, getppid), "{kind:?}: getppid allowed");
            assert!(!allowed_under(kind, execve_null), "{kind:?}: execve allowed");
        }
        assert!(allowed_under(ThreadKind::EventLoop, epoll_wait_bad_fd), "the event loop polls");
        assert!(!allowed_under(ThreadKind::Vcpu, epoll_wait_bad_fd), "vcpu threads do not poll");
        assert!(allowed_under(ThreadKind::Main, unlink_missing), "the main thread removes the API socket");
        assert!(!allowed_under(ThreadKind::Vcpu, unlink_missing), "vcpu threads do not unlink");
    }

    #[test]
    fn every_thread_may_trim_a_bounded_log() {
        for kind in KINDS {
            assert!(allowed_under(kind, log_trimming_calls), "{kind:?}: trimming a bounded log would be killed");
        }
    }

    #[test]
    fn vcpu_filter_kills_other_syscalls() {
        // In a child process: install the vCPU filter, then try a forbidden syscall.
        let f = filters().unwrap().get(ThreadKind::Vcpu);
        // SAFETY: fork in a test; the child only installs the prepared filter and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            if seccompiler::apply_filter(&f).is_err() {
                // SAFETY: exiting the child.
                unsafe { libc::_exit(9) };
            }
            // SAFETY: plain syscalls in the child.
            unsafe {
                libc::getppid();
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "getppid must be refused, status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    /// Runs `ioctl(-1, request)` in a child under the filter of `kind`; returns its status
    /// (exit 7 when the call came back, with EBADF).
    fn ioctl_under(kind: ThreadKind, request: u64) -> i32 {
        let f = filters().unwrap().get(kind);
        // SAFETY: fork in a test; the child only installs the prepared filter, makes one
        // ioctl on an invalid fd and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            if seccompiler::apply_filter(&f).is_err() {
                // SAFETY: exiting the child.
                unsafe { libc::_exit(9) };
            }
            // SAFETY: an ioctl on fd -1 touches no memory; then exiting the child.
            unsafe {
                libc::ioctl(-1, request as _, 0);
                libc::_exit(7);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        status
    }

    #[test]
    fn threads_that_raise_interrupts_may_set_irq_lines_only() {
        for kind in [ThreadKind::Vcpu, ThreadKind::BlockIo, ThreadKind::Api] {
            let st = ioctl_under(kind, KVM_IRQ_LINE);
            assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7, "{kind:?}: KVM_IRQ_LINE refused, status {st:#x}");
            let st = ioctl_under(kind, libc::FIONREAD);
            assert!(libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSYS, "{kind:?}: FIONREAD allowed, status {st:#x}");
        }
        for (name, req) in [("KVM_RUN", KVM_RUN), ("KVM_GET_MP_STATE", KVM_GET_MP_STATE), ("KVM_GET_REGS", KVM_GET_REGS)] {
            let st = ioctl_under(ThreadKind::Vcpu, req);
            assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7, "vcpu: {name} refused, status {st:#x}");
        }
        for kind in [ThreadKind::BlockIo, ThreadKind::Api] {
            let st = ioctl_under(kind, KVM_GET_REGS);
            assert!(libc::WIFSIGNALED(st), "{kind:?}: KVM_GET_REGS allowed, status {st:#x}");
        }
    }
}
