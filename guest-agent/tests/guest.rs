//! In-guest test: drives a real husk-agent running as PID 1 of a husk-vmm microVM over hybrid
//! vsock. Run by tests/agent/test-guest.sh inside the testbed (it boots the VM and sets
//! HUSK_AGENT_UDS); ignored in a plain `cargo test`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentClient;
use serde_json::json;

/// Connects through the VMM's hybrid vsock socket: `CONNECT <port>\n` → `OK <n>\n`.
fn connect(uds: &str, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s.try_clone()?).read_line(&mut line)?;
    if !line.starts_with("OK ") {
        return Err(std::io::Error::other(format!("vsock answered {line:?}")));
    }
    Ok(s)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(120_000_000_000)
}

fn client(uds: &str) -> AgentClient {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(s) = connect(uds, husk_protocol::DEFAULT_AGENT_PORT) {
            let c = AgentClient::new(ttrpc::Client::new(s.into_raw_fd()).unwrap());
            if c.check(ctx(), &CheckRequest::new()).is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "the agent did not answer on vsock port 1024");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read_all(c: &AgentClient, id: &str, exec_id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut req = ReadStreamRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        let r = c.read_stdout(ctx(), &req).unwrap();
        if r.eof {
            return out;
        }
        out.extend(r.data);
    }
}

fn wait(c: &AgentClient, id: &str, exec_id: &str) -> WaitProcessResponse {
    let mut req = WaitProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    c.wait_process(ctx(), &req).unwrap()
}

fn process(args: &[&str]) -> serde_json::Value {
    json!({"user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/"})
}

#[test]
#[ignore = "needs a booted guest: run tests/agent/test-guest.sh in the testbed"]
fn agent_in_a_microvm() {
    let uds = std::env::var("HUSK_AGENT_UDS").expect("HUSK_AGENT_UDS: the VMM's vsock socket");
    let c = client(&uds);
    let v = c.version(ctx(), &VersionRequest::new()).unwrap();
    assert_eq!(v.api_version, husk_protocol::API_VERSION);

    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process(&["sh", "-c", "echo hi from $(hostname); head -c 1048576 /dev/zero | wc -c; touch /new && echo writable"]),
        "root": {"path": "rootfs"},
        "hostname": "guestbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}],
            "resources": {"memory": {"limit": 16777216}, "pids": {"limit": 32},
                          "cpu": {"quota": 50000, "period": 100000}}
        }
    });
    let mut rootfs = Rootfs::new();
    rootfs.disk_serial = "rootfs".into();
    rootfs.fstype = "ext4".into();
    rootfs.read_only = true;
    let mut req = CreateContainerRequest::new();
    req.container_id = "g1".into();
    req.oci_spec_json = serde_json::to_vec(&spec).unwrap();
    req.rootfs = Some(rootfs).into();
    c.create_container(ctx(), &req).unwrap();
    let mut start = StartContainerRequest::new();
    start.container_id = "g1".into();
    c.start_container(ctx(), &start).unwrap();
    assert_eq!(String::from_utf8(read_all(&c, "g1", "")).unwrap(), "hi from guestbox\n1048576\nwritable\n");
    assert_eq!(wait(&c, "g1", "").exit_status, 0);

    // cgroup v2 limits are in place.
    let mut sreq = StatsRequest::new();
    sreq.container_id = "g1".into();
    let stats = c.stats(ctx(), &sreq).unwrap();
    assert_eq!(stats.memory.limit_bytes, 16 << 20);
    assert_eq!(stats.pids.limit, 32);
    c.remove_container(ctx(), &{
        let mut r = RemoveContainerRequest::new();
        r.container_id = "g1".into();
        r
    })
    .unwrap();

    // A long-running container: exec, then an OOM kill is reported.
    let mut spec2 = spec.clone();
    spec2["process"] = process(&["sleep", "1000"]);
    req.container_id = "g2".into();
    req.oci_spec_json = serde_json::to_vec(&spec2).unwrap();
    c.create_container(ctx(), &req).unwrap();
    start.container_id = "g2".into();
    c.start_container(ctx(), &start).unwrap();
    let mut exec = ExecProcessRequest::new();
    exec.container_id = "g2".into();
    exec.exec_id = "echo".into();
    exec.process_json = serde_json::to_vec(&process(&["echo", "exec works"])).unwrap();
    c.exec_process(ctx(), &exec).unwrap();
    assert_eq!(read_all(&c, "g2", "echo"), b"exec works\n");
    exec.exec_id = "hog".into();
    exec.process_json = serde_json::to_vec(&process(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"])).unwrap();
    c.exec_process(ctx(), &exec).unwrap();
    let hog = wait(&c, "g2", "hog");
    assert_eq!(hog.signal, 9, "the memory hog was not OOM-killed: {hog:?}");
    let oom = c.get_oom_event(ctx(), &GetOomEventRequest::new()).unwrap();
    assert_eq!(oom.container_id, "g2");

    clock_and_entropy_after_restore(&c);
    vsock_is_closed_to_containers(&c, &req);

    // Shutdown powers the VM off (the script checks husk-vmm's exit status).
    c.shutdown(ctx(), &ShutdownRequest::new()).unwrap();
}

/// `date +%s` run in the running container g2 (through ExecProcess).
fn guest_date(c: &AgentClient, exec_id: &str) -> i64 {
    let mut exec = ExecProcessRequest::new();
    exec.container_id = "g2".into();
    exec.exec_id = exec_id.into();
    exec.process_json = serde_json::to_vec(&process(&["date", "+%s"])).unwrap();
    c.exec_process(ctx(), &exec).unwrap();
    let out = String::from_utf8(read_all(c, "g2", exec_id)).unwrap();
    assert_eq!(wait(c, "g2", exec_id).exit_status, 0, "date: {out}");
    out.trim().parse().unwrap()
}

/// SyncAfterRestore moves the guest's wall clock (seen by `date` in a container) to the time it
/// is given, forward and back, credits the entropy, leaves CLOCK_BOOTTIME alone, and refuses a
/// bad entropy length.
fn clock_and_entropy_after_restore(c: &AgentClient) {
    let sync = |secs: i64| {
        let mut req = SyncAfterRestoreRequest::new();
        req.realtime_ns = secs * 1_000_000_000;
        req.entropy = (0..64).map(|i| (i * 37 + secs) as u8).collect();
        c.sync_after_restore(ctx(), &req)
    };
    let uptime = || c.check(ctx(), &CheckRequest::new()).unwrap().uptime_ms;
    let up_before = uptime();
    // 2100-01-01T00:00:00Z.
    let future = 4_102_444_800;
    sync(future).unwrap();
    let seen = guest_date(c, "date-future");
    assert!((future..future + 300).contains(&seen), "guest date {seen} after setting {future}");
    let up_after = uptime();
    assert!(up_after >= up_before && up_after - up_before < 300_000, "CLOCK_BOOTTIME jumped: {up_before} -> {up_after} ms");

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    sync(now).unwrap();
    let seen = guest_date(c, "date-now");
    assert!((now..now + 300).contains(&seen), "guest date {seen} after setting the host's {now}");

    let mut bad = SyncAfterRestoreRequest::new();
    bad.realtime_ns = now * 1_000_000_000;
    bad.entropy = vec![0; 8];
    match c.sync_after_restore(ctx(), &bad) {
        Err(ttrpc::Error::RpcStatus(s)) => assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT, "{}", s.message()),
        other => panic!("8 bytes of entropy: {other:?}"),
    }
}

/// Runs `spec` as container `id` to its end and returns its stdout.
fn run_container(c: &AgentClient, req: &CreateContainerRequest, id: &str, spec: &serde_json::Value) -> String {
    let mut req = req.clone();
    req.container_id = id.into();
    req.oci_spec_json = serde_json::to_vec(spec).unwrap();
    c.create_container(ctx(), &req).unwrap();
    let mut start = StartContainerRequest::new();
    start.container_id = id.into();
    c.start_container(ctx(), &start).unwrap();
    let out = String::from_utf8(read_all(c, id, "")).unwrap();
    assert_eq!(wait(c, id, "").exit_status, 0, "container {id}: {out}");
    let mut rm = RemoveContainerRequest::new();
    rm.container_id = id.into();
    c.remove_container(ctx(), &rm).unwrap();
    out
}

/// A container process tries to reach the agent over vsock (CIDs 1, 2, 3 and the guest's own,
/// port 1024) with the test's vsock-tool, which prints "connected" or "error <errno>".
/// Without a grant its socket() fails with EAFNOSUPPORT (97); with the `io.husk.vsock`
/// annotation it gets a socket but no connection reaches anything (no loopback in the guest
/// kernel; host-bound connections end at husk-vmm, where nothing listens on port 1024 for the
/// guest). The host side keeps working throughout.
fn vsock_is_closed_to_containers(c: &AgentClient, req: &CreateContainerRequest) {
    let guest_cid: u32 = std::env::var("HUSK_GUEST_CID").expect("HUSK_GUEST_CID").parse().unwrap();
    let cids = [1, 2, 3, guest_cid];
    let probe = format!("for cid in {}; do vsock-tool connect $cid 1024; done", cids.map(|c| c.to_string()).join(" "));
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process(&["sh", "-c", &probe]),
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
    });
    let out = run_container(c, req, "vsock-denied", &spec);
    assert_eq!(out, "error 97\n".repeat(cids.len()), "a container without a vsock grant: {out}");

    let mut allowed = spec.clone();
    allowed["annotations"] = json!({"io.husk.vsock": "allow"});
    let out = run_container(c, req, "vsock-allowed", &allowed);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), cids.len(), "{out}");
    for (cid, line) in cids.iter().zip(&lines) {
        assert!(line.starts_with("error ") && *line != "error 97", "CID {cid} with vsock granted: {line}");
    }
    // The host still reaches the agent.
    c.check(ctx(), &CheckRequest::new()).unwrap();
}
