//! What each filter answers (evaluated from the compiled program), what the kernel does when a
//! thread under a filter breaks it (in forked children), and that the work each thread does
//! still runs under its filter.

use super::bpf_eval::{self, ALLOW, ARCH_X86_64, KILL_PROCESS, TRAP};
use super::*;

fn verdict(kind: ThreadKind, nr: i64, args: [u64; 6]) -> u32 {
    bpf_eval::run(&filters().unwrap().get(kind), ARCH_X86_64, nr, args)
}

fn allowed(kind: ThreadKind, nr: i64, args: [u64; 6]) -> bool {
    match verdict(kind, nr, args) {
        ALLOW => true,
        TRAP => false,
        v => panic!("{kind:?} syscall {nr}: unexpected verdict {v:#x}"),
    }
}

fn ioctl(req: u64) -> [u64; 6] {
    [3, req, 0, 0, 0, 0]
}

fn open_flags(flags: i32) -> [u64; 6] {
    [libc::AT_FDCWD as u64, 0x1000, flags as u64, 0, 0, 0]
}

const ALL: [ThreadKind; 6] = [ThreadKind::Vcpu, ThreadKind::EventLoop, ThreadKind::Api, ThreadKind::BlockIo, ThreadKind::VsockConnect, ThreadKind::Main];

#[test]
fn filters_compile_and_answer_per_thread_kind() {
    let none = [0u64; 6];
    // Every thread: its common calls, and never exec, fork, ptrace, mount or a new filter.
    for kind in ALL {
        for nr in [libc::SYS_futex, libc::SYS_write, libc::SYS_exit] {
            assert!(allowed(kind, nr, none), "{kind:?}: common syscall {nr} refused");
        }
        for nr in [libc::SYS_execve, libc::SYS_clone, libc::SYS_fork, libc::SYS_ptrace, libc::SYS_mount, libc::SYS_seccomp, libc::SYS_setuid, libc::SYS_kill] {
            assert!(!allowed(kind, nr, none), "{kind:?}: syscall {nr} allowed");
        }
        // Another architecture's syscall numbers mean something else: killed.
        assert_eq!(bpf_eval::run(&filters().unwrap().get(kind), 0x4000_0003, libc::SYS_write, none), KILL_PROCESS, "{kind:?}: i386 call allowed");
    }
    // Only the threads that handle sockets of their own may open, create, connect or remove.
    let may = |nr: i64, args: [u64; 6], want: &[ThreadKind]| {
        for k in ALL {
            assert_eq!(allowed(k, nr, args), want.contains(&k), "{k:?}: syscall {nr} with {args:x?}");
        }
    };
    may(libc::SYS_openat, open_flags(libc::O_RDONLY | libc::O_CLOEXEC), &[ThreadKind::Api]);
    may(libc::SYS_openat, open_flags(libc::O_RDWR | libc::O_CLOEXEC), &[ThreadKind::Api]);
    may(libc::SYS_openat, open_flags(libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC), &[]);
    // A snapshot's new files: created exclusively (never an existing file), by the API only.
    may(libc::SYS_openat, open_flags(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC), &[ThreadKind::Api]);
    may(libc::SYS_openat, open_flags(libc::O_RDWR | libc::O_CREAT | libc::O_EXCL), &[]);
    may(libc::SYS_openat, open_flags(libc::O_RDWR | libc::O_TRUNC), &[]);
    may(libc::SYS_openat, open_flags(libc::O_PATH), &[]);
    may(libc::SYS_openat, open_flags(libc::O_TMPFILE | libc::O_RDWR), &[]);
    may(libc::SYS_open, open_flags(0), &[]);
    let unix_stream = [libc::AF_UNIX as u64, (libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64, 0, 0, 0, 0];
    may(libc::SYS_socket, unix_stream, &[ThreadKind::VsockConnect]);
    may(libc::SYS_socket, [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0], &[]);
    may(libc::SYS_socket, [libc::AF_NETLINK as u64, libc::SOCK_RAW as u64, 0, 0, 0, 0], &[]);
    may(libc::SYS_connect, none, &[ThreadKind::VsockConnect]);
    may(libc::SYS_unlink, none, &[ThreadKind::Main, ThreadKind::Api]);
    may(libc::SYS_unlinkat, none, &[ThreadKind::Main]);
    may(libc::SYS_recvmsg, none, &[ThreadKind::EventLoop, ThreadKind::Api]);
    may(libc::SYS_accept4, none, &[ThreadKind::EventLoop, ThreadKind::Api]);
    // fallocate: only the balloon's hole punch, only on the event loop (never allocating,
    // zeroing, collapsing or a punch that would change the size).
    let falloc = |mode: i32| [3, mode as u64, 0, 4096, 0, 0];
    may(libc::SYS_fallocate, falloc(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE), &[ThreadKind::EventLoop]);
    for mode in
        [0, libc::FALLOC_FL_KEEP_SIZE, libc::FALLOC_FL_PUNCH_HOLE, libc::FALLOC_FL_ZERO_RANGE, libc::FALLOC_FL_COLLAPSE_RANGE, libc::FALLOC_FL_INSERT_RANGE]
    {
        may(libc::SYS_fallocate, falloc(mode), &[]);
    }
    // ioctl by request number, on every thread.
    may(libc::SYS_ioctl, ioctl(KVM_RUN), &[ThreadKind::Vcpu]);
    may(libc::SYS_ioctl, ioctl(KVM_IRQ_LINE), &[ThreadKind::Vcpu, ThreadKind::EventLoop, ThreadKind::Api, ThreadKind::BlockIo]);
    may(libc::SYS_ioctl, ioctl(TUNSETOFFLOAD), &[ThreadKind::EventLoop]);
    may(libc::SYS_ioctl, ioctl(KVM_IRQFD), &[ThreadKind::EventLoop]);
    // A snapshot: each vCPU reads its own state, the API thread the VM's.
    for req in KVM_VCPU_STATE_GETS {
        may(libc::SYS_ioctl, ioctl(req), &[ThreadKind::Vcpu]);
    }
    for req in KVM_VM_STATE_GETS {
        may(libc::SYS_ioctl, ioctl(req), &[ThreadKind::Api]);
    }
    // What no thread may do once running: set up taps, change KVM's memory map, create vCPUs,
    // toggle non-blocking mode with FIONBIO, read socket queue sizes.
    const TUNSETIFF: u64 = 0x4004_54ca;
    const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_ae46;
    const KVM_CREATE_VCPU: u64 = 0xae41;
    for req in [TUNSETIFF, KVM_SET_USER_MEMORY_REGION, KVM_CREATE_VCPU, libc::FIONBIO, libc::FIONREAD] {
        may(libc::SYS_ioctl, ioctl(req), &[]);
    }
    // The request is compared on its 32 bits (the kernel's `unsigned int cmd`).
    assert!(allowed(ThreadKind::Vcpu, libc::SYS_ioctl, ioctl(0xffff_ffff_0000_0000 | KVM_RUN)));
}

/// Runs `f` in a forked child that first installs the filter of `kind`; returns the child's
/// wait status. `f` returns the exit code.
fn in_child_under(kind: ThreadKind, f: impl FnOnce() -> i32) -> i32 {
    let filter = filters().unwrap().get(kind);
    // SAFETY: fork in a test; the child installs the prepared filter, runs `f` and exits
    // without returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = if seccompiler::apply_filter(&filter).is_err() { 99 } else { f() };
        // SAFETY: ending the child.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    status
}

fn killed_by_seccomp(status: i32) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

fn exited(status: i32) -> Option<i32> {
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

#[test]
fn the_event_loop_cannot_open_a_file_or_a_socket() {
    let path = c"/etc/hostname";
    let st = in_child_under(ThreadKind::EventLoop, || {
        // SAFETY: a plain open(2) of a constant path.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            3
        } else {
            4
        }
    });
    assert!(killed_by_seccomp(st), "open under the event loop's filter: status {st:#x}");
    let st = in_child_under(ThreadKind::EventLoop, || {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd >= 0 {
            3
        } else {
            4
        }
    });
    assert!(killed_by_seccomp(st), "socket under the event loop's filter: status {st:#x}");
    let st = in_child_under(ThreadKind::EventLoop, || {
        // SAFETY: unlink(2) of a path that does not exist.
        unsafe { libc::unlink(c"/nonexistent/husk-seccomp".as_ptr()) };
        3
    });
    assert!(killed_by_seccomp(st), "unlink under the event loop's filter: status {st:#x}");
    // And what it does all the time still works: reading and writing its own descriptors.
    let st = in_child_under(ThreadKind::EventLoop, || {
        let evt = match vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK) {
            Ok(e) => e,
            Err(_) => return 5,
        };
        if evt.write(1).is_ok() && evt.read().ok() == Some(1) {
            0
        } else {
            6
        }
    });
    assert_eq!(exited(st), Some(0), "eventfd I/O under the event loop's filter: status {st:#x}");
}

#[test]
fn the_balloon_gives_reported_pages_back_under_the_event_loop_filter() {
    use crate::devices::virtio::balloon::{Balloon, REPORTQ};
    use crate::devices::virtio::test_utils::{get, interrupt, put, TestQueue};
    use crate::devices::virtio::VirtioDevice;
    let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
    let queues: Vec<_> = (0..3u64).map(|i| TestQueue::new(&mem, 0x1000 + i * 0x2000, 64)).collect();
    let mut dev = Balloon::new().unwrap();
    dev.activate(mem.clone(), interrupt(), queues.iter().map(TestQueue::queue).collect()).unwrap();
    let mut reports = queues.into_iter().nth(REPORTQ).unwrap();
    put(&mem, 8 << 20, &[0xa5; 2 << 20]);
    reports.add(&[(8 << 20, 2 << 20, true)]);
    // The child's hole punch frees the pages of the memfd the parent shares.
    let st = in_child_under(ThreadKind::EventLoop, || {
        dev.process_reports();
        let c = dev.counters();
        if c.reported_bytes.get() == 2 << 20 && c.discard_errors.get() == 0 {
            0
        } else {
            12
        }
    });
    assert_eq!(exited(st), Some(0), "the balloon under the event loop's filter: status {st:#x}");
    assert!(get(&mem, 8 << 20, 2 << 20).iter().all(|&b| b == 0), "the reported block still holds the guest's data");
    // Any other fallocate is killed, even on the same file.
    let file = vm_memory::GuestMemoryBackend::iter(&mem).next().unwrap().file_offset().unwrap().file().try_clone().unwrap();
    let st = in_child_under(ThreadKind::EventLoop, || {
        // SAFETY: fallocate on a memfd this test owns.
        unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), libc::FALLOC_FL_KEEP_SIZE, 0, 4096) };
        3
    });
    assert!(killed_by_seccomp(st), "allocating fallocate under the event loop's filter: status {st:#x}");
}

#[test]
fn the_vcpu_filter_kills_other_syscalls() {
    let st = in_child_under(ThreadKind::Vcpu, || {
        // SAFETY: getppid(2) has no arguments.
        unsafe { libc::getppid() };
        0
    });
    assert!(killed_by_seccomp(st), "getppid must be refused, status {st:#x}");
}

#[test]
fn ioctls_are_filtered_by_request_on_every_thread() {
    // ioctl(-1, request) comes back with EBADF when allowed.
    let ioctl_status = |kind, request: u64| {
        in_child_under(kind, || {
            // SAFETY: an ioctl on fd -1 touches no memory.
            unsafe { libc::ioctl(-1, request as _, 0) };
            7
        })
    };
    for kind in [ThreadKind::Vcpu, ThreadKind::BlockIo, ThreadKind::Api, ThreadKind::EventLoop] {
        let st = ioctl_status(kind, KVM_IRQ_LINE);
        assert_eq!(exited(st), Some(7), "{kind:?}: KVM_IRQ_LINE refused, status {st:#x}");
    }
    for kind in ALL {
        let st = ioctl_status(kind, libc::FIONREAD);
        assert!(killed_by_seccomp(st), "{kind:?}: FIONREAD allowed, status {st:#x}");
    }
    assert_eq!(exited(ioctl_status(ThreadKind::Vcpu, KVM_RUN)), Some(7), "vcpu: KVM_RUN refused");
    // The halt probe of a vCPU thread (power-off only when every vCPU halted).
    for req in [KVM_GET_MP_STATE, KVM_GET_REGS] {
        assert_eq!(exited(ioctl_status(ThreadKind::Vcpu, req)), Some(7), "vcpu: halt probe ioctl {req:#x} refused");
        assert!(killed_by_seccomp(ioctl_status(ThreadKind::EventLoop, req)), "event loop: ioctl {req:#x} allowed");
    }
    assert_eq!(exited(ioctl_status(ThreadKind::EventLoop, TUNSETOFFLOAD)), Some(7), "event loop: TUNSETOFFLOAD refused");
    assert!(killed_by_seccomp(ioctl_status(ThreadKind::EventLoop, KVM_RUN)), "event loop: KVM_RUN allowed");
}

#[test]
fn the_api_thread_opens_images_read_only_or_read_write_and_creates_nothing() {
    let dir = tempfile_dir("api-open");
    let image = dir.join("img");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let st = in_child_under(ThreadKind::Api, || {
        let ro = std::fs::OpenOptions::new().read(true).open(&image).is_ok();
        let rw = std::fs::OpenOptions::new().read(true).write(true).open(&image).is_ok();
        if ro && rw {
            0
        } else {
            8
        }
    });
    assert_eq!(exited(st), Some(0), "opening an image under the API filter: status {st:#x}");
    let created = dir.join("new");
    let st = in_child_under(ThreadKind::Api, || i32::from(std::fs::File::create(&created).is_ok()));
    assert!(killed_by_seccomp(st), "creating a file under the API filter: status {st:#x}");
    assert!(!created.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn guest_connections_are_connected_by_the_connector_while_the_event_loop_is_confined() {
    use crate::devices::virtio::vsock::connector::Connector;
    let dir = tempfile_dir("connector");
    let uds = dir.join("v.sock");
    let listener = std::os::unix::net::UnixListener::bind(dir.join("v.sock_52")).unwrap();
    let filters = filters().unwrap();
    // Not `in_child_under`: the connector thread must start before the filter goes in.
    // SAFETY: fork in a test; the child starts the connector thread, confines it and itself
    // (event-loop filter on the main thread), asks for two connections and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = (|| {
            let c = Connector::start(&uds).ok()?;
            c.install_filter(filters.get(ThreadKind::VsockConnect)).ok()?;
            seccompiler::apply_filter(&filters.get(ThreadKind::EventLoop)).ok()?;
            let ok = c.connect(52).is_ok();
            let refused = c.connect(53).is_err();
            Some(if ok && refused { 0 } else { 10 })
        })()
        .unwrap_or(11);
        // SAFETY: ending the child.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(exited(status), Some(0), "connector under its filter: status {status:#x}");
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_ok(), "the connection reached the host listener");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("husk-seccomp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_thread_may_trim_a_bounded_log() {
    for kind in ALL {
        let st = in_child_under(kind, || {
            // SAFETY: positioned I/O, lseek and ftruncate on fd -1 fail with EBADF.
            unsafe {
                libc::pread(-1, std::ptr::null_mut(), 0, 0);
                libc::pwrite(-1, std::ptr::null(), 0, 0);
                libc::lseek(-1, 0, libc::SEEK_END);
                libc::ftruncate(-1, 0);
            }
            7
        });
        assert_eq!(exited(st), Some(7), "{kind:?}: trimming a bounded log would be killed, status {st:#x}");
    }
}

#[test]
fn a_refused_call_names_itself_and_its_thread_then_the_process_dies_of_sigsys() {
    let mut buf = [0u8; 160];
    let n = violation_line(&mut buf, "vmm-events", 4242, libc::SYS_openat);
    assert_eq!(
        std::str::from_utf8(&buf[..n]).unwrap(),
        "husk-vmm: seccomp: the vmm-events thread (tid 4242) made syscall 257, which its filter refuses; exiting\n"
    );
    // In a child with the handler: stderr goes to a pipe, the child opens a file under the
    // event loop's filter.
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a local array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let filter = filters().unwrap().get(ThreadKind::EventLoop);
    // SAFETY: fork in a test; the child only redirects stderr, installs the handler and the
    // filter, makes the refused call and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: in the child: dup2 of the pipe's write end onto stderr, then open(2).
        unsafe {
            libc::dup2(fds[1], 2);
            if install_violation_report().is_err() || apply(&filter, ThreadKind::EventLoop).is_err() {
                libc::_exit(99);
            }
            libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY);
            libc::_exit(3);
        }
    }
    let mut status = 0;
    // SAFETY: closing our copy of the write end, waiting for our own child.
    unsafe {
        libc::close(fds[1]);
        libc::waitpid(pid, &mut status, 0);
    }
    assert!(killed_by_seccomp(status), "status {status:#x}");
    let mut out = [0u8; 512];
    // SAFETY: read(2) into a local buffer.
    let n = unsafe { libc::read(fds[0], out.as_mut_ptr().cast(), out.len()) };
    // SAFETY: closing the read end.
    unsafe { libc::close(fds[0]) };
    let text = String::from_utf8_lossy(&out[..n.max(0) as usize]).into_owned();
    assert!(text.starts_with("husk-vmm: seccomp: the vmm-events thread (tid ") && text.contains(&format!(") made syscall {}, ", libc::SYS_openat)), "{text:?}");
}
