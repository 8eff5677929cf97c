//! Stats, pause/resume, process lists, bad requests, and that failures leave nothing behind.
#![allow(clippy::unwrap_used)]
mod common;

use std::time::Duration;

use common::{process, spec, status, Agent};
use husk_protocol::agent::*;

fn counter(a: &Agent) -> u64 {
    std::fs::read_to_string(a.rootfs().join("tmp/count")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn stats_pause_resume_and_process_list() {
    let a = Agent::start();
    a.run("p", &spec(&["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.01; done"]), false);
    a.exec("p", "extra", &process(&["sleep", "1000"]), false).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let mut req = StatsRequest::new();
    req.container_id = "p".into();
    let stats = a.client.stats(common::ctx(), &req).unwrap();
    assert!(stats.cpu.usage_usec > 0, "{stats:?}");
    assert!(stats.pids.current >= 2, "{stats:?}");

    let mut list = ListProcessesRequest::new();
    list.container_id = "p".into();
    let procs = a.client.list_processes(common::ctx(), &list).unwrap().processes;
    assert!(procs.iter().any(|p| p.agent_started && p.exec_id.is_empty()));
    assert!(procs.iter().any(|p| p.agent_started && p.exec_id == "extra"));

    let mut pause = PauseContainerRequest::new();
    pause.container_id = "p".into();
    a.client.pause_container(common::ctx(), &pause).unwrap();
    let frozen = counter(&a);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(&a), frozen, "the paused container kept running");
    let (code, msg) = status(a.exec("p", "while-paused", &process(&["true"]), false));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("paused"), "{msg}");

    let mut resume = ResumeContainerRequest::new();
    resume.container_id = "p".into();
    a.client.resume_container(common::ctx(), &resume).unwrap();
    // Polled: on a loaded host the thawed loop may take a while to get the CPU.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // A read between the shell's truncate and write sees an empty file (0): wait for more.
    let mut now = counter(&a);
    while now <= frozen && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        now = counter(&a);
    }
    assert!(now > frozen, "the resumed container did not run");

    a.signal("p", "", libc::SIGKILL, true).unwrap();
    assert_eq!(a.wait("p", "").signal, 9);
    a.remove("p").unwrap();
    assert!(a.agent_mounts().is_empty());
}

#[test]
fn bad_requests_get_named_errors_and_leave_nothing_behind() {
    let a = Agent::start();
    let code = |r| status(r).0;

    // Unknown container / process.
    let mut start = StartContainerRequest::new();
    start.container_id = "nope".into();
    let (c, msg) = status(a.client.start_container(common::ctx(), &start));
    assert_eq!(c, ttrpc::Code::NOT_FOUND);
    assert!(msg.contains("nope"), "{msg}");
    let mut wait = WaitProcessRequest::new();
    wait.container_id = "nope".into();
    assert_eq!(code(a.client.wait_process(common::ctx(), &wait).map(drop)), ttrpc::Code::NOT_FOUND);
    let mut stats = StatsRequest::new();
    stats.container_id = "nope".into();
    assert_eq!(code(a.client.stats(common::ctx(), &stats).map(drop)), ttrpc::Code::NOT_FOUND);

    // Malformed spec JSON.
    let mut req = CreateContainerRequest::new();
    req.container_id = "bad".into();
    req.oci_spec_json = b"{not json".to_vec();
    req.rootfs = Some(a.rootfs_msg(false)).into();
    let (c, msg) = status(a.client.create_container(common::ctx(), &req));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("oci_spec_json"), "{msg}");

    // Bad container id.
    let (c, msg) = status(a.create("../evil", &spec(&["true"]), false));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("../evil"), "{msg}");

    // Missing executable: named in the error.
    let (c, msg) = status(a.create("noexe", &spec(&["/bin/does-not-exist"]), false));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("/bin/does-not-exist"), "{msg}");
    let (c, msg) = status(a.create("noexe2", &spec(&["frobnicate"]), false));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("frobnicate") && msg.contains("PATH"), "{msg}");

    // Unknown user.
    let mut s = spec(&["true"]);
    s["process"]["user"] = serde_json::json!({"uid": 0, "gid": 0, "username": "ghost"});
    let (c, msg) = status(a.create("ghost", &s, false));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("ghost"), "{msg}");

    // Missing rootfs directory.
    let mut req = CreateContainerRequest::new();
    req.container_id = "noroot".into();
    req.oci_spec_json = serde_json::to_vec(&spec(&["true"])).unwrap();
    let mut r = Rootfs::new();
    r.host_path = "/no/such/dir".into();
    req.rootfs = Some(r).into();
    let (c, msg) = status(a.client.create_container(common::ctx(), &req));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("/no/such/dir"), "{msg}");

    // A disk serial that no disk has.
    let mut r = Rootfs::new();
    r.disk_serial = "missing0".into();
    r.fstype = "ext4".into();
    req.rootfs = Some(r).into();
    let (c, msg) = status(a.client.create_container(common::ctx(), &req));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("missing0"), "{msg}");

    // No mount namespace.
    let mut s = spec(&["true"]);
    s["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]);
    let (c, msg) = status(a.create("nomnt", &s, false));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT, "{msg}");

    // Nothing of the failed creates is left.
    assert!(a.agent_mounts().is_empty(), "{:?}", a.agent_mounts());
    let leftovers: Vec<_> = std::fs::read_dir(&a.cgroup_root).unwrap().flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "cgroups left: {leftovers:?}");
    let dirs = std::fs::read_dir(a.dir.join("run/containers")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(dirs, 0);

    // Duplicate id; bad exec; bad signal.
    a.run("ok", &spec(&["sleep", "1000"]), false);
    let (c, _) = status(a.create("ok", &spec(&["true"]), false));
    assert_eq!(c, ttrpc::Code::ALREADY_EXISTS);
    let (c, msg) = status(a.exec("ok", "x", &serde_json::json!({"args": 5}), false));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    let (c, msg) = status(a.exec("ok", "y", &process(&["no-such-tool"]), false));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("no-such-tool"), "{msg}");
    let (c, _) = status(a.signal("ok", "", 0, false));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    let (c, _) = status(a.signal("ok", "", 1000, false));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    let (c, _) = status(a.signal("ok", "ghost", 15, false));
    assert_eq!(c, ttrpc::Code::NOT_FOUND);

    // SyncAfterRestore checks both fields before it touches the clock (only refused requests
    // here: a valid one would set the host's clock, which no namespace isolates).
    let mut sync = SyncAfterRestoreRequest::new();
    sync.realtime_ns = 1_796_536_642_000_000_000;
    sync.entropy = vec![1; 31];
    let (c, msg) = status(a.client.sync_after_restore(common::ctx(), &sync).map(drop));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("entropy of 31 bytes"), "{msg}");
    sync.entropy = vec![1; 513];
    let (c, msg) = status(a.client.sync_after_restore(common::ctx(), &sync).map(drop));
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("entropy of 513 bytes"), "{msg}");
    sync.entropy = vec![1; 64];
    for bad in [0, -5] {
        sync.realtime_ns = bad;
        let (c, msg) = status(a.client.sync_after_restore(common::ctx(), &sync).map(drop));
        assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
        assert!(msg.contains(&format!("realtime_ns {bad} ")), "{msg}");
    }

    // The agent still serves and the container still works.
    a.client.check(common::ctx(), &CheckRequest::new()).unwrap();
    a.exec("ok", "echo", &process(&["echo", "alive"]), false).unwrap();
    assert_eq!(a.read_all("ok", "echo", false), b"alive\n");
    let v = a.client.version(common::ctx(), &VersionRequest::new()).unwrap();
    assert_eq!(v.api_version, 1);

    // A created but never started container can be removed.
    a.create("idle", &spec(&["true"]), false).unwrap();
    a.remove("idle").unwrap();
}

#[test]
fn shutdown_kills_everything_and_ends_the_agent() {
    let mut a = Agent::start();
    a.run("s", &spec(&["sleep", "1000"]), false);
    a.client.shutdown(common::ctx(), &ShutdownRequest::new()).unwrap();
    let status = a.wait_agent_exit(Duration::from_secs(10)).expect("agent did not exit");
    assert!(status.success(), "{status:?}");
    assert!(!a.cgroup_root.join("s").exists());
}

#[test]
fn sigterm_ends_the_agent_cleanly() {
    let mut a = Agent::start();
    a.run("s", &spec(&["sleep", "1000"]), false);
    let pid = a.agent_pid();
    assert!(pid > 0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = a.wait_agent_exit(Duration::from_secs(10)).expect("agent did not exit");
    assert!(status.success(), "{status:?}");
    assert!(!a.cgroup_root.join("s").exists());
}
