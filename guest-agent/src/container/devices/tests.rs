#![allow(clippy::unwrap_used)]
use super::*;

/// Runs the program on one access, the way the kernel does: r1 points at
/// `{access_type, major, minor}`. Only the instructions [`program`] emits are known.
fn run(p: &[Insn], typ: i32, major: u32, minor: u32, access: i32) -> u64 {
    let ctx = [((access as u32) << 16) | typ as u32, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    for _ in 0..10_000 {
        let i = p[pc];
        let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
        pc += 1;
        match i.code {
            LDX_W => {
                assert_eq!(src, 1, "loads only from the context");
                r[dst] = u64::from(ctx[i.off as usize / 4]);
            }
            AND_K => r[dst] &= i.imm as i64 as u64,
            RSH_K => r[dst] >>= i.imm,
            MOV_K => r[dst] = i.imm as i64 as u64,
            MOV_X => r[dst] = r[src],
            JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
            JNE_X if r[dst] != r[src] => pc += i.off as usize,
            JNE_K | JNE_X => {}
            EXIT => return r[0],
            other => panic!("unknown opcode {other:#x}"),
        }
    }
    panic!("the program does not end");
}

fn cgroup_rules(json: serde_json::Value) -> Vec<Rule> {
    let spec: Vec<LinuxDeviceCgroup> = serde_json::from_value(json).unwrap();
    rules(&spec).unwrap()
}

/// Every access of a set of devices: the program agrees with the last-match-wins model.
fn agrees(rules: &[Rule]) {
    let p = program(rules);
    for typ in [DEV_BLOCK, DEV_CHAR] {
        for (major, minor) in [(1, 3), (1, 5), (1, 1), (5, 0), (136, 7), (8, 0), (8, 1), (10, 200), (4095, 0xf_ffff)] {
            for access in 1..=7 {
                let want = decide(rules, typ, major, minor, access);
                assert_eq!(run(&p, typ, major, minor, access) == 1, want, "type {typ} {major}:{minor} access {access:#b}: want {want}");
            }
        }
    }
}

#[test]
fn containerds_default_rules_deny_all_but_runcs_defaults() {
    // What ctr run and CRI put in the spec: deny everything first.
    let rules = cgroup_rules(serde_json::json!([{"allow": false, "access": "rwm"}]));
    agrees(&rules);
    assert!(decide(&rules, DEV_CHAR, 1, 3, ACC_READ | ACC_WRITE), "/dev/null");
    assert!(!decide(&rules, DEV_CHAR, 1, 1, ACC_READ), "/dev/mem");
    assert!(decide(&rules, DEV_CHAR, 1, 1, ACC_MKNOD), "mknod of any char device");
    assert!(!decide(&rules, DEV_BLOCK, 8, 0, ACC_READ), "/dev/sda");
    assert!(decide(&rules, DEV_CHAR, 136, 7, ACC_READ | ACC_WRITE), "/dev/pts/7");
}

#[test]
fn the_last_matching_rule_wins() {
    let rules = cgroup_rules(serde_json::json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "b", "major": 8, "minor": -1, "access": "rw"},
        {"allow": false, "type": "b", "major": 8, "minor": 1, "access": "w"},
        {"allow": true, "type": "c", "major": 4095, "minor": 1048575, "access": "r"},
    ]));
    agrees(&rules);
    assert!(decide(&rules, DEV_BLOCK, 8, 0, ACC_READ | ACC_WRITE));
    assert!(decide(&rules, DEV_BLOCK, 8, 1, ACC_READ), "the deny of 8:1 is for writes only");
    assert!(!decide(&rules, DEV_BLOCK, 8, 1, ACC_WRITE));
    assert!(decide(&rules, DEV_BLOCK, 8, 0, ACC_MKNOD), "m is not in the spec's rw, but runc's b *:* m comes last");
    assert!(!decide(&rules, DEV_BLOCK, 8, 0, ACC_READ | ACC_MKNOD), "no rule allows both");
}

#[test]
fn an_allow_all_rule_ends_the_program_and_a_later_deny_still_counts() {
    let rules = cgroup_rules(serde_json::json!([{"allow": true, "type": "a"}, {"allow": false, "type": "c", "major": 1, "minor": 1, "access": "r"}]));
    agrees(&rules);
    assert!(decide(&rules, DEV_BLOCK, 8, 0, ACC_READ));
    assert!(!decide(&rules, DEV_CHAR, 1, 1, ACC_READ));
    // The allow-all rule is the last block: nothing after it (the verifier refuses dead code).
    let p = program(&rules);
    assert_eq!(p[p.len() - 2], insn(MOV_K, 0, 0, 0, 1));
    // A deny of everything as the spec's last rule: only runc's defaults pass.
    let rules = cgroup_rules(serde_json::json!([{"allow": true, "type": "a"}, {"allow": false}]));
    agrees(&rules);
    assert!(!decide(&rules, DEV_BLOCK, 8, 0, ACC_READ));
}

#[test]
fn bad_rules_are_refused_by_index() {
    let bad = |json: serde_json::Value| {
        let spec: Vec<LinuxDeviceCgroup> = serde_json::from_value(json).unwrap();
        rules(&spec).unwrap_err().to_string()
    };
    let e = bad(serde_json::json!([{"allow": true}, {"allow": true, "access": "rwx"}]));
    assert!(e.contains("[1]") && e.contains("'x'"), "{e}");
    let e = bad(serde_json::json!([{"allow": true, "type": "c", "major": -2}]));
    assert!(e.contains("major -2"), "{e}");
    let e = bad(serde_json::json!([{"allow": true, "type": "c", "major": 1, "minor": 4294967296u64}]));
    assert!(e.contains("minor 4294967296"), "{e}");
    let many: Vec<_> = (0..=MAX_RULES).map(|_| serde_json::json!({"allow": true})).collect();
    assert!(bad(serde_json::json!(many)).contains("1025 rules"));
    // Fifo rules do not reach the program.
    assert_eq!(cgroup_rules(serde_json::json!([{"allow": true, "type": "p"}])).len(), RUNC_DEFAULTS.len());
}

#[test]
fn the_kernel_verifier_accepts_the_program() {
    let rules = cgroup_rules(serde_json::json!([{"allow": false, "access": "rwm"}, {"allow": true, "type": "b", "major": 8, "minor": -1, "access": "r"}]));
    match bpf::load(&program(&rules)) {
        Ok(_) => {}
        // Without CAP_BPF/CAP_SYS_ADMIN (an unprivileged test run) the kernel refuses any load.
        Err(DeviceError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::EPERM) && !nix::unistd::geteuid().is_root() => {}
        Err(e) => panic!("{}", crate::error::chain(&e)),
    }
}

#[test]
fn a_program_the_verifier_refuses_is_reported_with_its_log() {
    // The program minus its final exit: the verifier refuses a program that falls off its end.
    let rules = cgroup_rules(serde_json::json!([{"allow": true, "access": "rwm"}]));
    let mut p = program(&rules);
    p.pop();
    match bpf::load(&p) {
        Ok(_) => panic!("the verifier accepted a program without an exit"),
        Err(DeviceError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::EPERM) && !nix::unistd::geteuid().is_root() => {}
        Err(DeviceError::Kernel { what, source }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL), "{what}");
            // The verifier's own words follow the count, from the second (logged) load.
            let log = what.split_once("instructions):").map(|(_, l)| l.trim()).unwrap_or_default();
            assert!(!log.is_empty(), "no verifier log in the error: {what}");
        }
        Err(e) => panic!("{}", crate::error::chain(&e)),
    }
}

#[test]
fn device_nodes_are_checked() {
    let devs = |json: serde_json::Value| nodes::plan(&serde_json::from_value::<Vec<oci_spec::runtime::LinuxDevice>>(json).unwrap());
    let n = devs(serde_json::json!([{"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 0o620, "uid": 0, "gid": 4}])).unwrap();
    assert_eq!(n[0].dev, nix::sys::stat::makedev(1, 11));
    assert_eq!((n[0].mode, n[0].gid, n[0].kind), (0o620, 4, nix::sys::stat::SFlag::S_IFCHR));
    let n = devs(serde_json::json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}])).unwrap();
    assert_eq!(n[0].mode, 0o666, "runc's default mode");
    for (json, needle) in [
        (serde_json::json!([{"path": "dev/x", "type": "c", "major": 1, "minor": 1}]), "absolute"),
        (serde_json::json!([{"path": "/dev/../etc/x", "type": "c", "major": 1, "minor": 1}]), "absolute"),
        (serde_json::json!([{"path": "/dev/x", "type": "a", "major": 1, "minor": 1}]), "type \"a\""),
        (serde_json::json!([{"path": "/dev/x", "type": "c", "major": 5000, "minor": 1}]), "major 5000"),
        (serde_json::json!([{"path": "/dev/x", "type": "c", "major": 1, "minor": -1}]), "minor -1"),
    ] {
        let e = devs(json).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains("linux.devices[0]"), "{e} lacks {needle}");
    }
}

/// Opens `path` read-only in a child placed in `cgroup`; returns the errno (0: opened).
fn open_in_cgroup(cgroup: &std::path::Path, path: &str) -> i32 {
    let procs = cgroup.join("cgroup.procs");
    let code = crate::test_fork::in_child(|| {
        if std::fs::write(&procs, b"0").is_err() {
            return 99;
        }
        match std::fs::File::open(path) {
            Ok(_) => 0,
            Err(e) => e.raw_os_error().unwrap_or(98),
        }
    });
    code.unwrap_or_else(|sig| panic!("child killed by {sig}"))
}

#[test]
fn the_attached_filter_decides_what_a_process_of_the_cgroup_opens() {
    // Needs root and a cgroup v2 hierarchy (the guest's /sys/fs/cgroup; on a hybrid host its
    // unified part).
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"].into_iter().map(std::path::Path::new).find(|p| p.join("cgroup.procs").exists());
    let Some(root) = root.filter(|_| nix::unistd::geteuid().is_root()) else {
        eprintln!("skipped: needs root and cgroup v2");
        return;
    };
    for (name, spec, kmsg) in [
        ("deny", serde_json::json!([{"allow": false, "access": "rwm"}]), libc::EPERM),
        ("allow-kmsg", serde_json::json!([{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"}]), 0),
    ] {
        let cg = root.join(format!("husk-devtest-{}-{name}", std::process::id()));
        std::fs::create_dir(&cg).unwrap();
        let fd = bpf::load(&program(&cgroup_rules(spec))).unwrap();
        bpf::attach(&fd, &cg).unwrap();
        let (null, kmsg_got) = (open_in_cgroup(&cg, "/dev/null"), open_in_cgroup(&cg, "/dev/kmsg"));
        std::fs::remove_dir(&cg).unwrap();
        assert_eq!((null, kmsg_got), (0, kmsg), "{name}: /dev/null (runc's defaults allow it) and /dev/kmsg");
    }
}
