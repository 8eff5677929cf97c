//! Seccomp filters per thread kind, compiled with seccompiler and installed by each thread
//! before its loop (`--no-seccomp` turns them off for debugging). A call outside the list
//! ends the process (SIGSYS, see the end of this doc). `ioctl` is allowed by request number
//! only, on every thread.
//!
//! - vCPU threads: KVM_RUN, KVM_IRQ_LINE, and the KVM_GET_* ioctls of their own vCPU's state
//!   (a halt probe reads MP state and registers, a snapshot all of it), I/O to the console
//!   and eventfds, locks, memory.
//! - Every thread may trim a bounded log file (the console, stderr: `crate::bounded_log`),
//!   hence positioned reads and writes, lseek and ftruncate in the common list.
//! - The device event loop (`vmm-events`, the thread that handles what the guest puts in the
//!   queues): epoll, reads and writes on descriptors it already has, accepting host clients of
//!   vsock, the vhost-user messages of virtio-fs; ioctls KVM_IRQ_LINE, TUNSETOFFLOAD and
//!   KVM_IRQFD (routing a vhost-user backend's call EventFds to the guest's interrupt);
//!   `fallocate` only as `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`, with which the balloon
//!   gives pages the guest reported free back to the host (a hole in guest RAM's memfd). It
//!   cannot open a file, create or connect a socket, or remove a file: everything it serves
//!   was opened before the filters went in (or by the shim, and inherited), and the host side
//!   of guest-initiated vsock connections is connected by the vsock connector thread.
//! - The vsock connector thread (`vsock-connect`): creates unix stream sockets and connects
//!   them to `<uds>_<port>`; nothing else.
//! - Disk I/O threads (one per disk): epoll on their queue, vectored file I/O, sync,
//!   KVM_IRQ_LINE for the disk's interrupt.
//! - The API thread: accepting and serving unix-socket connections (with the descriptors a
//!   request carries, `recvmsg`), signalling vCPU threads, opening an image attached to a disk
//!   slot by path (read-only or read-write, never creating or truncating), and KVM_IRQ_LINE
//!   for the config-change interrupt of a slot; for a snapshot, the VM's KVM_GET_IRQCHIP,
//!   KVM_GET_PIT2 and KVM_GET_CLOCK, creating its files (only new ones: O_EXCL), fsync, and
//!   unlink of what a failed snapshot wrote.
//! - The main thread, once everything runs: waiting for the exit, removing the API socket.
//!
//! A refused call raises SIGSYS in the thread that made it (`SECCOMP_RET_TRAP`). husk-vmm's
//! handler ([`install_violation_report`]) writes one line to stderr naming the call's number
//! and the thread's kind, then the process dies of SIGSYS as under `SECCOMP_RET_KILL_PROCESS`
//! (the handler is reset on entry and the signal raised again). Without the line, a rare
//! refusal (one CI run in many) left only "Bad system call" and no way to tell which call.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;

use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};

#[cfg(test)]
mod bpf_eval;
#[cfg(test)]
mod tests;

/// Building a filter failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the seccomp filter for {0} threads")]
pub struct SeccompError(&'static str, #[source] seccompiler::BackendError);

/// Kinds of threads with their own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// `vcpu-N`.
    Vcpu,
    /// `vmm-events`.
    EventLoop,
    /// `vmm-api`.
    Api,
    /// `blk-<id>`, the I/O thread of one disk.
    BlockIo,
    /// `vsock-connect`, which connects guest-initiated vsock connections.
    VsockConnect,
    /// The main thread once the VM runs (waits for the exit, removes the API socket).
    Main,
}

impl ThreadKind {
    /// The kind's name in a violation report.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::EventLoop => "vmm-events",
            ThreadKind::Api => "vmm-api",
            ThreadKind::BlockIo => "disk I/O",
            ThreadKind::VsockConnect => "vsock-connect",
            ThreadKind::Main => "main",
        }
    }
}

thread_local! {
    /// The kind of the filter this thread installed, for the violation report.
    static INSTALLED: Cell<&'static str> = const { Cell::new("unfiltered") };
}

/// Installs `filter`, the filter of `kind`, on the calling thread.
pub fn apply(filter: &BpfProgram, kind: ThreadKind) -> Result<(), seccompiler::Error> {
    INSTALLED.with(|k| k.set(kind.name()));
    seccompiler::apply_filter(filter)
}

/// Offset of `_sigsys._syscall` in the kernel's `siginfo_t` on x86-64 (after `si_signo`,
/// `si_errno`, `si_code`, padding, and `_call_addr`); the libc crate has no accessor for it.
const SIGINFO_SYSCALL_OFFSET: usize = 24;

/// Makes a refused call report itself on stderr before the process dies (see the module doc).
pub fn install_violation_report() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value to fill in.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigsys as *const () as usize;
    // SA_RESETHAND: the signal raised again in the handler takes the default action (death
    // with a core), and so does any second refusal; SA_NODEFER: it is not blocked meanwhile.
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER;
    // SAFETY: installing a handler for SIGSYS with a valid sigaction; the old one is not read.
    if unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Appends `n` in decimal to `buf` at `*at` (no allocation: this runs in a signal handler).
fn put_decimal(buf: &mut [u8], at: &mut usize, n: u64) {
    let mut digits = [0u8; 20];
    let (mut i, mut v) = (digits.len(), n);
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(buf, at, &digits[i..]);
}

fn put(buf: &mut [u8], at: &mut usize, bytes: &[u8]) {
    let n = bytes.len().min(buf.len().saturating_sub(*at));
    buf[*at..*at + n].copy_from_slice(&bytes[..n]);
    *at += n;
}

/// The report line, built without allocating.
fn violation_line(buf: &mut [u8; 160], kind: &str, tid: u64, nr: i64) -> usize {
    let mut at = 0;
    put(buf, &mut at, b"husk-vmm: seccomp: the ");
    put(buf, &mut at, kind.as_bytes());
    put(buf, &mut at, b" thread (tid ");
    put_decimal(buf, &mut at, tid);
    put(buf, &mut at, b") made syscall ");
    if nr < 0 {
        put(buf, &mut at, b"-");
    }
    put_decimal(buf, &mut at, nr.unsigned_abs());
    put(buf, &mut at, b", which its filter refuses; exiting\n");
    at
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler; for SIGSYS from
    // seccomp its `_sigsys._syscall` field is at this offset (read unaligned, as plain bytes).
    let nr = unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SIGINFO_SYSCALL_OFFSET).cast::<i32>()) };
    let kind = INSTALLED.try_with(|k| k.get()).unwrap_or("unknown");
    // SAFETY: gettid and getpid take no arguments and cannot fail.
    let (tid, pid) = unsafe { (libc::syscall(libc::SYS_gettid), libc::getpid()) };
    let mut buf = [0u8; 160];
    let len = violation_line(&mut buf, kind, tid as u64, i64::from(nr));
    // SAFETY: write(2) of our own stack buffer to stderr, tgkill(2) of the calling thread
    // (the handler was reset to the default action on entry, so this ends the process), and
    // _exit should the signal not end it. All three are in every thread's filter.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGSYS);
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// The compiled filters.
pub struct Filters {
    vcpu: Arc<BpfProgram>,
    event_loop: Arc<BpfProgram>,
    api: Arc<BpfProgram>,
    block_io: Arc<BpfProgram>,
    vsock_connect: Arc<BpfProgram>,
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
            ThreadKind::VsockConnect => self.vsock_connect.clone(),
            ThreadKind::Main => self.main.clone(),
        }
    }
}

/// A KVM ioctl number: direction (0 none, 1 write, 2 read, 3 both), number, argument size.
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}
/// What a snapshot reads of a vCPU, on the vCPU's own thread (`crate::snapshot::cpu`).
const KVM_VCPU_STATE_GETS: [u64; 9] = [
    kvm_ioc(2, 0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>()),
    kvm_ioc(3, 0x88, std::mem::size_of::<kvm_bindings::kvm_msrs>()),
    kvm_ioc(3, 0x91, std::mem::size_of::<kvm_bindings::kvm_cpuid2>()),
    kvm_ioc(2, 0x8e, std::mem::size_of::<kvm_bindings::kvm_lapic_state>()),
    kvm_ioc(2, 0x9f, std::mem::size_of::<kvm_bindings::kvm_vcpu_events>()),
    kvm_ioc(2, 0xa1, std::mem::size_of::<kvm_bindings::kvm_debugregs>()),
    kvm_ioc(2, 0xa4, std::mem::size_of::<kvm_bindings::kvm_xsave>()),
    kvm_ioc(2, 0xa6, std::mem::size_of::<kvm_bindings::kvm_xcrs>()),
    kvm_ioc(0, 0xa3, 0),
];
/// What a snapshot reads of the VM, on the API thread (`crate::snapshot::vm_state`).
const KVM_VM_STATE_GETS: [u64; 3] = [
    kvm_ioc(3, 0x62, std::mem::size_of::<kvm_bindings::kvm_irqchip>()),
    kvm_ioc(2, 0x9f, std::mem::size_of::<kvm_bindings::kvm_pit_state2>()),
    kvm_ioc(2, 0x7c, std::mem::size_of::<kvm_bindings::kvm_clock_data>()),
];

/// KVM_RUN = _IO(0xAE, 0x80).
const KVM_RUN: u64 = 0xae80;
/// KVM_IRQ_LINE = _IOW(0xAE, 0x61, struct kvm_irq_level), 8 bytes.
const KVM_IRQ_LINE: u64 = 0x4008_ae61;
/// KVM_IRQFD = _IOW(0xAE, 0x76, struct kvm_irqfd), 32 bytes.
const KVM_IRQFD: u64 = 0x4020_ae76;
/// KVM_GET_MP_STATE = _IOR(0xAE, 0x98, struct kvm_mp_state), 4 bytes.
const KVM_GET_MP_STATE: u64 = 0x8004_ae98;
/// KVM_GET_REGS = _IOR(0xAE, 0x81, struct kvm_regs), 144 bytes.
const KVM_GET_REGS: u64 = 0x8090_ae81;
/// TUNSETOFFLOAD = _IOW('T', 208, unsigned int): the net device sets the tap's offloads when
/// the guest activates it (what the guest acked decides them).
const TUNSETOFFLOAD: u64 = 0x4004_54d0;

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

/// The event loop: no openat, socket, connect, unlink or unlinkat (see the module doc).
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
];

/// `fsync` and `unlink`: a snapshot's files are synced, and removed when the snapshot fails.
const API: &[i64] = &[
    libc::SYS_fsync,
    libc::SYS_unlink,
    libc::SYS_lseek,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_setsockopt,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

const BLOCK_IO: &[i64] = &[libc::SYS_epoll_wait, libc::SYS_epoll_pwait, libc::SYS_preadv, libc::SYS_pwritev, libc::SYS_fdatasync, libc::SYS_fsync];

/// The connector: `socket` (unix streams only, a rule below) and these.
const VSOCK_CONNECT: &[i64] = &[libc::SYS_connect, libc::SYS_setsockopt];

const MAIN: &[i64] = &[libc::SYS_unlink, libc::SYS_unlinkat];

/// The only `fallocate` mode the event loop may use: free pages of guest RAM's memfd without
/// changing its size (the balloon's free page reporting).
const PUNCH_HOLE_KEEP_SIZE: u64 = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64;

/// The kernel's O_LARGEFILE, which musl passes on x86-64 (glibc's constant there is 0).
const KERNEL_O_LARGEFILE: i32 = 0o100000;
/// Open flags the API thread may pass besides the access mode: never O_CREAT, O_TRUNC,
/// O_APPEND, O_PATH or O_TMPFILE.
const OPEN_HARMLESS_FLAGS: u64 = (libc::O_CLOEXEC | KERNEL_O_LARGEFILE | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW) as u64;

/// What one filter allows: whole syscalls, and syscalls allowed only with certain arguments
/// (each a list of alternatives, each alternative a list of conditions that must all hold).
struct Allow<'a> {
    name: &'static str,
    calls: &'a [&'a [i64]],
    ioctls: &'a [u64],
    conditional: Vec<(i64, Vec<Vec<Cond>>)>,
}

/// One argument condition: argument index, comparison, value (32-bit compare).
type Cond = (u8, SeccompCmpOp, u64);

fn build(a: Allow<'_>) -> Result<Arc<BpfProgram>, SeccompError> {
    let err = |e| SeccompError(a.name, e);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for list in a.calls {
        for &nr in *list {
            rules.insert(nr, Vec::new());
        }
    }
    let mut conditional = a.conditional;
    if !a.ioctls.is_empty() {
        conditional.push((libc::SYS_ioctl, a.ioctls.iter().map(|&req| vec![(1, SeccompCmpOp::Eq, req)]).collect()));
    }
    for (nr, alternatives) in conditional {
        let mut any_of = Vec::new();
        for all_of in alternatives {
            let conds = all_of
                .into_iter()
                .map(|(arg, op, v)| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, v).map_err(err))
                .collect::<Result<Vec<_>, _>>()?;
            any_of.push(SeccompRule::new(conds).map_err(err)?);
        }
        rules.insert(nr, any_of);
    }
    let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, TargetArch::x86_64).map_err(err)?;
    BpfProgram::try_from(filter).map(Arc::new).map_err(err)
}

/// Compiles all filters.
pub fn filters() -> Result<Filters, SeccompError> {
    let plain = |name, calls, ioctls| Allow { name, calls, ioctls, conditional: Vec::new() };
    // An image attached by path is opened read-only or read-write, nothing else.
    let open_image = |mode: i32| vec![(2, SeccompCmpOp::MaskedEq(!OPEN_HARMLESS_FLAGS & 0xffff_ffff), mode as u64)];
    // A snapshot's files are created, never opened if they exist.
    let create_new = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u64;
    let snapshot_file = vec![(2, SeccompCmpOp::MaskedEq(!OPEN_HARMLESS_FLAGS & 0xffff_ffff), create_new)];
    let mut api_ioctls = vec![KVM_IRQ_LINE];
    api_ioctls.extend(KVM_VM_STATE_GETS);
    let api = Allow {
        name: "api",
        calls: &[COMMON, API],
        // The config-change interrupt of a slot after an attach or detach; a snapshot's reads.
        ioctls: &api_ioctls,
        conditional: vec![(libc::SYS_openat, vec![open_image(libc::O_RDONLY), open_image(libc::O_RDWR), snapshot_file])],
    };
    let connect = Allow {
        name: "vsock connector",
        calls: &[COMMON, VSOCK_CONNECT],
        ioctls: &[],
        conditional: vec![(libc::SYS_socket, vec![vec![(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)]])],
    };
    let event_loop = Allow {
        name: "event loop",
        calls: &[COMMON, EVENT_LOOP],
        ioctls: &[KVM_IRQ_LINE, TUNSETOFFLOAD, KVM_IRQFD],
        conditional: vec![(libc::SYS_fallocate, vec![vec![(1, SeccompCmpOp::Eq, PUNCH_HOLE_KEEP_SIZE)]])],
    };
    let mut vcpu_ioctls = vec![KVM_RUN, KVM_IRQ_LINE, KVM_GET_MP_STATE, KVM_GET_REGS];
    vcpu_ioctls.extend(KVM_VCPU_STATE_GETS);
    Ok(Filters {
        // A vCPU raises a config-change interrupt when a device fails to activate.
        vcpu: build(plain("vcpu", &[COMMON], &vcpu_ioctls))?,
        event_loop: build(event_loop)?,
        api: build(api)?,
        block_io: build(plain("disk I/O", &[COMMON, BLOCK_IO], &[KVM_IRQ_LINE]))?,
        vsock_connect: build(connect)?,
        main: build(plain("main", &[COMMON, MAIN], &[]))?,
    })
}
