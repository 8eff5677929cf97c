#![allow(clippy::unwrap_used)]
use super::*;

/// containerd 1.6.20's default profile, as `ctr run --seccomp` puts it in the spec (taken from
/// `ctr container info` of such a container).
const CONTAINERD_DEFAULT: &str = include_str!("containerd-1.6.20-default.json");

fn profile(json: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(json).unwrap()
}

fn plan(json: serde_json::Value) -> SeccompPlan {
    SeccompPlan::from_oci(&profile(json)).unwrap()
}

/// Runs `f` in a forked child with the plan installed (and no_new_privs, so that the test needs
/// no CAP_SYS_ADMIN) and returns how it ended: Ok(exit code) or Err(signal).
fn in_child(plan: &SeccompPlan, f: impl FnOnce() -> i32) -> std::result::Result<i32, nix::sys::signal::Signal> {
    crate::test_fork::in_child(|| {
        // SAFETY: prctl without pointers.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 || plan.install().is_err() {
            99
        } else {
            f()
        }
    })
}

/// The errno of a raw syscall (0 when it succeeded).
fn errno_of(nr: libc::c_long, args: [u64; 6]) -> i32 {
    // SAFETY: the syscalls the tests make take no pointers, or get invalid ones the kernel
    // checks (EFAULT), or are answered by the filter before the kernel runs them.
    let r = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
    if r < 0 {
        nix::errno::Errno::last_raw()
    } else {
        0
    }
}

/// Calls getppid (which ignores its arguments) with `args` in its argument registers: the
/// filter sees them.
fn getppid(args: [u64; 6]) -> i32 {
    errno_of(libc::SYS_getppid, args)
}

#[test]
fn containerd_default_profile_behaves_like_runc() {
    let p = SeccompPlan::from_oci(&serde_json::from_str(CONTAINERD_DEFAULT).unwrap()).unwrap();
    // The base filter (default ERRNO EPERM) and clone3's ERRNO ENOSYS.
    assert_eq!(p.filter_count(), 2);
    let code = in_child(&p, || {
        let checks: [(i32, i32); 8] = [
            (errno_of(libc::SYS_getpid, [0; 6]), 0),
            // unshare -U, keyctl, add_key: not in the profile → EPERM.
            (errno_of(libc::SYS_unshare, [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]), libc::EPERM),
            (errno_of(libc::SYS_keyctl, [0; 6]), libc::EPERM),
            (errno_of(libc::SYS_add_key, [0; 6]), libc::EPERM),
            // clone3 → ENOSYS, so that glibc falls back to clone.
            (errno_of(libc::SYS_clone3, [0; 6]), libc::ENOSYS),
            // personality: allowed for 0xffffffff (query), refused for other values.
            (errno_of(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]), 0),
            (errno_of(libc::SYS_personality, [0x0040_0000, 0, 0, 0, 0, 0]), libc::EPERM),
            // clone with CLONE_NEWUSER is outside the MASKED_EQ rule → EPERM.
            (errno_of(libc::SYS_clone, [(libc::CLONE_NEWUSER | libc::SIGCHLD) as u64, 0, 0, 0, 0, 0]), libc::EPERM),
        ];
        checks.iter().position(|(got, want)| got != want).map_or(0, |i| 10 + i as i32)
    });
    assert_eq!(code, Ok(0), "check {} failed", code.unwrap_or(0) - 10);
}

#[test]
fn a_rule_action_beats_a_harsher_default() {
    // Default KILL_PROCESS; getppid → ERRNO ENOSYS: the base filter allows getppid (a rule
    // matches it), so the rule's ERRNO is the result, not the default's kill.
    let p = plan(serde_json::json!({"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [
        {"names": ["exit_group", "exit"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
    ]}));
    assert_eq!(in_child(&p, || getppid([0; 6])), Ok(libc::ENOSYS));
    // An unlisted syscall is killed.
    assert_eq!(in_child(&p, || errno_of(libc::SYS_getuid, [0; 6])), Err(nix::sys::signal::Signal::SIGSYS));
}

#[test]
fn the_most_restrictive_matching_rule_wins_and_later_errnos_win_ties() {
    let p = plan(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5, "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2, "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS", "args": [{"index": 2, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"names": ["getppid"], "action": "SCMP_ACT_LOG", "args": [{"index": 3, "value": 1, "op": "SCMP_CMP_EQ"}]},
    ]}));
    assert_eq!(in_child(&p, || getppid([0; 6])), Ok(0), "no rule matches: default ALLOW");
    assert_eq!(in_child(&p, || getppid([1, 0, 0, 0, 0, 0])), Ok(libc::EIO));
    assert_eq!(in_child(&p, || getppid([0, 1, 0, 0, 0, 0])), Ok(libc::ENOENT));
    assert_eq!(in_child(&p, || getppid([1, 1, 0, 0, 0, 0])), Ok(libc::ENOENT), "tie: the later errno wins");
    assert_eq!(in_child(&p, || getppid([1, 1, 1, 0, 0, 0])), Err(nix::sys::signal::Signal::SIGSYS), "KILL_PROCESS beats ERRNO");
    assert_eq!(in_child(&p, || getppid([0, 0, 0, 1, 0, 0])), Ok(0), "LOG lets the call through");
    assert_eq!(in_child(&p, || getppid([1, 0, 0, 1, 0, 0])), Ok(libc::EIO), "ERRNO beats LOG");
}

#[test]
fn argument_comparisons_follow_libseccomp() {
    let rule = |op: &str, value: u64, two: Option<u64>| {
        let mut arg = serde_json::json!({"index": 2, "value": value, "op": op});
        if let Some(t) = two {
            arg["valueTwo"] = t.into();
        }
        plan(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "args": [arg]}]}))
    };
    let big = 0x1_0000_0005u64;
    for (op, value, two, hits, misses) in [
        ("SCMP_CMP_EQ", big, None, vec![big], vec![5, 0x2_0000_0005]),
        ("SCMP_CMP_NE", big, None, vec![5, 0], vec![big]),
        ("SCMP_CMP_LT", big, None, vec![5, big - 1], vec![big, u64::MAX]),
        ("SCMP_CMP_LE", big, None, vec![big, 0], vec![big + 1]),
        ("SCMP_CMP_GT", big, None, vec![big + 1, u64::MAX], vec![big, 5]),
        ("SCMP_CMP_GE", big, None, vec![big, u64::MAX], vec![big - 1]),
        // (arg & 0xff00_0000_00ff) == 0x0100_0000_0001
        ("SCMP_CMP_MASKED_EQ", 0xff00_0000_00ff, Some(0x0100_0000_0001), vec![0x0100_0000_0001, 0x0100_ffff_ff01], vec![0x0100_0000_0002, 1]),
    ] {
        let p = rule(op, value, two);
        for v in hits {
            assert_eq!(in_child(&p, || getppid([0, 0, v, 0, 0, 0])), Ok(libc::EPERM), "{op} {value:#x} should match {v:#x}");
        }
        for v in misses {
            assert_eq!(in_child(&p, || getppid([0, 0, v, 0, 0, 0])), Ok(0), "{op} {value:#x} should not match {v:#x}");
        }
    }
}

#[test]
fn several_comparisons_are_and_unless_they_test_one_argument() {
    let p = plan(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO",
        "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 4, "value": 7, "op": "SCMP_CMP_EQ"}]}]}));
    assert_eq!(in_child(&p, || getppid([1, 0, 0, 0, 7, 0])), Ok(libc::EPERM));
    assert_eq!(in_child(&p, || getppid([1, 0, 0, 0, 0, 0])), Ok(0));
    assert_eq!(in_child(&p, || getppid([0, 0, 0, 0, 7, 0])), Ok(0));
    // Same argument twice: either comparison (runc's rule).
    let p = plan(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO",
        "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 3, "op": "SCMP_CMP_EQ"}]}]}));
    assert_eq!(in_child(&p, || getppid([1, 0, 0, 0, 0, 0])), Ok(libc::EPERM));
    assert_eq!(in_child(&p, || getppid([3, 0, 0, 0, 0, 0])), Ok(libc::EPERM));
    assert_eq!(in_child(&p, || getppid([2, 0, 0, 0, 0, 0])), Ok(0));
}

#[test]
fn unconditional_rules_override_conditional_ones_of_the_same_action() {
    let p = plan(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13, "syscalls": [
        {"names": ["getppid"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"names": ["getppid", "no_such_syscall_here"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["exit_group"], "action": "SCMP_ACT_ALLOW"},
    ]}));
    assert_eq!(p.filter_count(), 1);
    assert_eq!(in_child(&p, || getppid([0; 6])), Ok(0));
    assert_eq!(in_child(&p, || errno_of(libc::SYS_getuid, [0; 6])), Ok(libc::EACCES), "defaultErrnoRet");
}

#[test]
fn unknown_names_are_skipped_and_a_rule_like_the_default_is_left_out() {
    let p = plan(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["not_a_syscall"], "action": "SCMP_ACT_KILL"},
        {"names": ["getuid"], "action": "SCMP_ACT_ERRNO"},
    ]}));
    assert_eq!(p.filter_count(), 1, "only the base filter");
    assert_eq!(syscall_number("read"), Some(libc::SYS_read));
    assert_eq!(syscall_number("clone3"), Some(libc::SYS_clone3));
    assert_eq!(syscall_number("socketcall"), None, "i386 only");
}

#[test]
fn bad_and_hostile_profiles_are_refused_by_name() {
    let err = |json: serde_json::Value| SeccompPlan::from_oci(&profile(json)).unwrap_err().to_string();
    let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
    assert!(e.contains("SCMP_ACT_NOTIFY") && e.contains("defaultAction"), "{e}");
    let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}));
    assert!(e.contains("listenerPath"), "{e}");
    let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}));
    assert!(e.contains("70000") && e.contains("rule 0 (read)"), "{e}");
    let e = err(
        serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}),
    );
    assert!(e.contains("argument index 6"), "{e}");
    let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}));
    assert!(e.contains("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"), "{e}");
    let many: Vec<_> = (0..=MAX_RULES).map(|_| serde_json::json!({"names": ["read"], "action": "SCMP_ACT_ERRNO"})).collect();
    let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": many}));
    assert!(e.contains("1025 rules"), "{e}");
    let names: Vec<String> = (0..=MAX_NAMES).map(|i| format!("n{i}")).collect();
    let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO"}]}));
    assert!(e.contains("4097 syscall names"), "{e}");
    let errnos: Vec<_> = (1..=MAX_FILTERS as u32 + 1).map(|e| serde_json::json!({"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": e})).collect();
    let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": errnos}));
    assert!(e.contains("distinct rule actions"), "{e}");
    let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["seccomp"], "action": "SCMP_ACT_KILL"}]}));
    assert!(e.contains("restricts the seccomp syscall"), "{e}");
    let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x".repeat(65)], "action": "SCMP_ACT_ERRNO"}]}));
    assert!(e.contains("65 bytes"), "{e}");
}

#[test]
fn flags_reach_the_kernel() {
    let p = plan(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_TSYNC"],
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}]}));
    assert_eq!(p.flags, libc::SECCOMP_FILTER_FLAG_LOG);
    assert_eq!(in_child(&p, || getppid([0; 6])), Ok(libc::EPERM));
}
