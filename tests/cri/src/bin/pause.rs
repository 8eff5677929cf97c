//! The pod sandbox's pause process, as Kubernetes' pause.c: as PID 1 of the pod it reaps every
//! child that reaches it (SIGCHLD), sleeps in pause(2), and exits 0 on SIGINT or SIGTERM.
//! Built statically (x86_64-unknown-linux-musl) into the CRI tests' sandbox image.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, Pid};

extern "C" fn sigdown(_: nix::libc::c_int) {
    // SAFETY: _exit is async-signal-safe and ends the process without running anything else.
    unsafe { nix::libc::_exit(0) }
}

extern "C" fn sigreap(_: nix::libc::c_int) {
    // Reap every exited child; waitpid is async-signal-safe. Ends at ECHILD or "none exited".
    while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if st == WaitStatus::StillAlive {
            break;
        }
    }
}

fn install(sig: Signal, handler: extern "C" fn(nix::libc::c_int)) {
    let action = SigAction::new(SigHandler::Handler(handler), SaFlags::SA_NOCLDSTOP | SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: both handlers only call async-signal-safe functions (_exit, waitpid) and touch no
    // shared state.
    if let Err(e) = unsafe { sigaction(sig, &action) } {
        eprintln!("pause: cannot install the {sig} handler: {e}");
        std::process::exit(1);
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("pause (husk CRI tests) {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if getpid().as_raw() != 1 {
        eprintln!("pause: warning: not PID 1");
    }
    install(Signal::SIGINT, sigdown);
    install(Signal::SIGTERM, sigdown);
    install(Signal::SIGCHLD, sigreap);
    loop {
        nix::unistd::pause();
    }
}
