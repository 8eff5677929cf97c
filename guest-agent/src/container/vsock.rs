//! Keeping containers away from vsock. The agent's API is served on vsock, so by default no
//! process of a container may open an AF_VSOCK socket: a seccomp filter, installed in every
//! container process before it drops privileges, makes `socket(AF_VSOCK, ...)` and
//! `socketpair(AF_VSOCK, ...)` fail with EAFNOSUPPORT (what a kernel without vsock answers),
//! and `io_uring_setup` fail with ENOSYS (io_uring can create sockets without a syscall that
//! seccomp sees; programs take ENOSYS as "no io_uring here" and fall back).
//!
//! A container gets vsock only when its spec says so, in one of two ways:
//! - the annotation `io.husk.vsock` is `"allow"` (`"deny"` is the default; any other value is
//!   refused), or
//! - its own seccomp profile (`linux.seccomp`) has a rule with action `SCMP_ACT_ALLOW` for
//!   `socket` whose argument 0 is compared `SCMP_CMP_EQ` to 40 (AF_VSOCK), unless the
//!   annotation says `"deny"`.
//!
//! With CRI, container annotations only reach the spec when the runtime handler's
//! `container_annotations` lists them, so a pod cannot grant itself vsock unless the
//! administrator allowed that annotation.
use std::sync::OnceLock;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, Spec};
use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};

use crate::error::{AgentError, Result};
use crate::process::child::{ChildError, ChildResult};

/// The annotation that grants or denies a container vsock.
pub const ANNOTATION: &str = "io.husk.vsock";

const AF_VSOCK: u64 = libc::AF_VSOCK as u64;

/// The compiled filters that keep a process off vsock.
#[derive(Debug)]
pub struct VsockGuard {
    /// socket/socketpair(AF_VSOCK) → EAFNOSUPPORT.
    sockets: BpfProgram,
    /// io_uring_setup → ENOSYS.
    io_uring: BpfProgram,
}

fn compile(rules: Vec<(i64, Vec<SeccompRule>)>, errno: i32) -> std::result::Result<BpfProgram, seccompiler::BackendError> {
    let arch = if cfg!(target_arch = "aarch64") { TargetArch::aarch64 } else { TargetArch::x86_64 };
    let filter = SeccompFilter::new(rules.into_iter().collect(), SeccompAction::Allow, SeccompAction::Errno(errno as u32), arch)?;
    BpfProgram::try_from(filter)
}

fn build() -> std::result::Result<VsockGuard, seccompiler::BackendError> {
    let family_is_vsock = || -> std::result::Result<Vec<SeccompRule>, seccompiler::BackendError> {
        let cond = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, AF_VSOCK)?;
        Ok(vec![SeccompRule::new(vec![cond])?])
    };
    let sockets = compile(vec![(libc::SYS_socket, family_is_vsock()?), (libc::SYS_socketpair, family_is_vsock()?)], libc::EAFNOSUPPORT)?;
    // An empty rule list matches the syscall whatever its arguments.
    let io_uring = compile(vec![(libc::SYS_io_uring_setup, Vec::new())], libc::ENOSYS)?;
    Ok(VsockGuard { sockets, io_uring })
}

/// The guard, compiled once (before any fork: the child only installs it).
pub fn guard() -> Result<&'static VsockGuard> {
    static GUARD: OnceLock<std::result::Result<VsockGuard, String>> = OnceLock::new();
    match GUARD.get_or_init(|| build().map_err(|e| e.to_string())) {
        Ok(g) => Ok(g),
        Err(e) => Err(AgentError::io("compiling the seccomp filter that keeps containers off vsock", std::io::Error::other(e.clone()))),
    }
}

impl VsockGuard {
    /// Installs the filters in the calling (single-threaded, forked) process. Needs
    /// CAP_SYS_ADMIN (the agent's children have it until they set their credentials), so the
    /// process's no_new_privs stays what its spec says.
    pub fn install(&self) -> ChildResult<()> {
        for prog in [&self.sockets, &self.io_uring] {
            let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
            // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) copies the program `fprog` points to
            // (alive for the whole call: `prog` is 'static) and keeps no reference to it.
            // seccompiler's sock_filter is #[repr(C)] with the kernel's layout.
            let r = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const libc::sock_fprog) };
            nix::errno::Errno::result(r).map_err(|e| ChildError::sys("installing the seccomp filter that keeps the container off vsock", e))?;
        }
        Ok(())
    }
}

/// Whether the spec grants its container vsock (see the module documentation).
pub fn allowed(spec: &Spec) -> Result<bool> {
    match spec.annotations().as_ref().and_then(|a| a.get(ANNOTATION)).map(String::as_str) {
        Some("allow") => return Ok(true),
        Some("deny") => return Ok(false),
        Some(other) => return Err(AgentError::InvalidArgument(format!("annotation {ANNOTATION} is {other:?}: it must be \"allow\" or \"deny\""))),
        None => {}
    }
    Ok(spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()).is_some_and(profile_allows_vsock))
}

/// A profile rule allowing `socket` with argument 0 == AF_VSOCK.
fn profile_allows_vsock(profile: &LinuxSeccomp) -> bool {
    profile.syscalls().iter().flatten().any(|rule| {
        rule.action() == LinuxSeccompAction::ScmpActAllow
            && rule.names().iter().any(|n| n == "socket")
            && rule.args().iter().flatten().any(|a| a.index() == 0 && a.value() == AF_VSOCK && a.op() == LinuxSeccompOperator::ScmpCmpEq)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> Spec {
        let mut s = serde_json::json!({"ociVersion": "1.0.2"});
        s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(s).unwrap()
    }

    fn vsock_rule(op: &str, value: u64, action: &str) -> serde_json::Value {
        serde_json::json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": []},
            {"names": ["socket"], "action": action, "args": [{"index": 0, "value": value, "op": op}]}
        ]}}})
    }

    #[test]
    fn vsock_is_denied_unless_the_spec_allows_it() {
        assert!(!allowed(&spec(serde_json::json!({}))).unwrap(), "default");
        // A profile allowing every socket() does not name AF_VSOCK: still denied.
        assert!(!allowed(&spec(serde_json::json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ALLOW"}]}}})))
        .unwrap());
        assert!(allowed(&spec(vsock_rule("SCMP_CMP_EQ", 40, "SCMP_ACT_ALLOW"))).unwrap());
        assert!(!allowed(&spec(vsock_rule("SCMP_CMP_EQ", 40, "SCMP_ACT_ERRNO"))).unwrap(), "errno rule");
        assert!(!allowed(&spec(vsock_rule("SCMP_CMP_NE", 40, "SCMP_ACT_ALLOW"))).unwrap(), "NE");
        assert!(!allowed(&spec(vsock_rule("SCMP_CMP_EQ", 1, "SCMP_ACT_ALLOW"))).unwrap(), "AF_UNIX");
        assert!(allowed(&spec(serde_json::json!({"annotations": {ANNOTATION: "allow"}}))).unwrap());
        let mut denied = vsock_rule("SCMP_CMP_EQ", 40, "SCMP_ACT_ALLOW");
        denied["annotations"] = serde_json::json!({ANNOTATION: "deny"});
        assert!(!allowed(&spec(denied)).unwrap(), "the annotation's deny wins over the profile");
        let err = allowed(&spec(serde_json::json!({"annotations": {ANNOTATION: "yes"}}))).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(err.to_string().contains("io.husk.vsock") && err.to_string().contains("\"yes\""), "{err}");
    }

    /// Runs `f` in a forked child and returns its exit code (the test harness is threaded:
    /// a filter must not land on its threads).
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        crate::test_fork::in_child(f).unwrap_or_else(|sig| panic!("child killed by {sig}"))
    }

    fn errno_of(r: libc::c_long) -> i32 {
        if r >= 0 {
            // SAFETY: closing the socket this test just opened.
            unsafe { libc::close(r as i32) };
            0
        } else {
            nix::errno::Errno::last_raw()
        }
    }

    fn socket(family: i32) -> i32 {
        // SAFETY: socket(2) with constant arguments; the fd is closed by errno_of.
        errno_of(unsafe { libc::socket(family, libc::SOCK_STREAM, 0) } as libc::c_long)
    }

    fn io_uring_setup() -> i32 {
        // SAFETY: io_uring_setup with a NULL params pointer: the kernel fails with EFAULT
        // without touching memory, or the filter answers first.
        errno_of(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, std::ptr::null_mut::<u8>()) })
    }

    #[test]
    fn the_guard_refuses_vsock_sockets_and_io_uring_only() {
        let guard = guard().unwrap();
        // Codes: 10 + the check that failed, 0 = all as expected.
        let code = in_child(|| {
            // Before, both reach the kernel: a vsock socket opens (where the host kernel has
            // vsock) and io_uring_setup fails on its NULL params (EFAULT), not with ENOSYS.
            let (vsock_before, uring_before) = (socket(libc::AF_VSOCK), io_uring_setup());
            if vsock_before != 0 && uring_before == libc::ENOSYS {
                return 16;
            }
            if guard.install().is_err() {
                return 11;
            }
            if socket(libc::AF_VSOCK) != libc::EAFNOSUPPORT {
                return 12;
            }
            if socket(libc::AF_UNIX) != 0 || socket(libc::AF_INET) != 0 {
                return 13;
            }
            if io_uring_setup() != libc::ENOSYS {
                return 14;
            }
            // SAFETY: socketpair(2) into a local array.
            let r = unsafe { libc::socketpair(libc::AF_VSOCK, libc::SOCK_STREAM, 0, [0i32; 2].as_mut_ptr()) };
            if errno_of(r as libc::c_long) != libc::EAFNOSUPPORT {
                return 15;
            }
            0
        });
        assert_ne!(code, 16, "this host has neither vsock nor io_uring: the filter cannot be observed");
        assert_eq!(code, 0, "check {} failed in the filtered child", code - 10);
    }

    #[test]
    fn the_guard_needs_no_no_new_privs() {
        let guard = guard().unwrap();
        let code = in_child(|| {
            if guard.install().is_err() {
                return 1;
            }
            // PR_GET_NO_NEW_PRIVS: still 0, so setuid programs in the container keep working.
            // SAFETY: prctl query without pointers.
            (unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } != 0) as i32 * 2
        });
        assert_eq!(code, 0, "1: install failed, 2: no_new_privs was set");
    }
}
