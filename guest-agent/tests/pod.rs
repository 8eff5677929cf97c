//! Pods: the sandbox container defines the pod's namespaces and /dev/shm; other containers of
//! the pod join what their spec names by path, and keep their own PID namespace unless they
//! share the pod's. Run against a real agent without a VM.
#![allow(clippy::unwrap_used)]
mod common;

use common::{process, spec, status, Agent};
use husk_protocol::agent::*;
use serde_json::{json, Value};

/// Creates `id` as a member of pod `sandbox` (the sandbox itself when equal).
fn create(a: &Agent, id: &str, sandbox: &str, spec: &Value) -> ttrpc::Result<u32> {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.into();
    req.sandbox_id = sandbox.into();
    req.oci_spec_json = serde_json::to_vec(spec).unwrap();
    req.rootfs = Some(a.rootfs_msg(true)).into();
    a.client.create_container(common::ctx(), &req).map(|r| r.pid)
}

fn start(a: &Agent, id: &str) {
    let mut req = StartContainerRequest::new();
    req.container_id = id.into();
    a.client.start_container(common::ctx(), &req).unwrap();
}

fn output(a: &Agent, id: &str) -> String {
    let out = String::from_utf8(a.read_all(id, "", false)).unwrap();
    let err = String::from_utf8(a.read_all(id, "", true)).unwrap();
    let w = a.wait(id, "");
    assert_eq!(w.exit_status, 0, "{id} failed: {out} {err}");
    out
}

/// A CRI-like spec: the pod's namespaces given by path, the pod's shm bound on /dev/shm.
fn member(a: &Agent, args: &[&str], share_pid: bool) -> Value {
    let mut s = spec(args);
    let shm = a.dir.join("run/pod/shm").display().to_string();
    s["mounts"][3] = json!({"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rw"]});
    let mut ns = vec![
        json!({"type": "mount"}),
        json!({"type": "network", "path": "/proc/77/ns/net"}),
        json!({"type": "ipc", "path": "/proc/77/ns/ipc"}),
        json!({"type": "uts", "path": "/proc/77/ns/uts"}),
    ];
    ns.push(if share_pid { json!({"type": "pid", "path": "/proc/77/ns/pid"}) } else { json!({"type": "pid"}) });
    s["linux"]["namespaces"] = json!(ns);
    s
}

#[test]
fn containers_of_a_pod_share_its_namespaces_and_shm() {
    let a = Agent::start();
    let (code, msg) = status(create(&a, "early", "pause", &spec(&["true"])));
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("\"pause\""), "{msg}");

    // The sandbox: its network namespace comes from CNI on the host (a path); in the VM it is new.
    let mut s = member(&a, &["sleep", "1000"], false);
    s["hostname"] = json!("podhost");
    s["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1"},
                                      {"type": "ipc"}, {"type": "uts"}, {"type": "pid"}]);
    s["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmni": "1234"});
    create(&a, "pause", "pause", &s).unwrap();
    start(&a, "pause");
    let (code, msg) = status(create(&a, "pause2", "pause2", &spec(&["true"])));
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS, "{msg}");

    // A member: same hostname, network and IPC settings, its writes to /dev/shm reach the pod;
    // its own PID namespace (it is PID 1 there).
    let m = member(&a, &["sh", "-c", "hostname; cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni; echo from-app >/dev/shm/x; echo pid=$$; ls /sys/class/net | grep -c .; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags"], false);
    create(&a, "app", "pause", &m).unwrap();
    start(&a, "app");
    let out = output(&a, "app");
    // Only lo in the pod's new network namespace, and up (IFF_UP|IFF_LOOPBACK).
    assert_eq!(out, "podhost\n1\n1234\npid=1\n1\nunknown\n0x9\n", "{out}");
    a.exec("pause", "see", &process(&["cat", "/dev/shm/x"]), false).unwrap();
    assert_eq!(a.read_all("pause", "see", false), b"from-app\n");

    // An emptyDir: made on first use, shared by the pod's containers.
    let mut m = member(&a, &["sh", "-c", "echo kept >/cache/f"], false);
    let empty = a.dir.join("run/pod/emptydir/cache").display().to_string();
    m["mounts"].as_array_mut().unwrap().push(json!({"destination": "/cache", "type": "bind", "source": empty, "options": ["rbind"]}));
    create(&a, "writer", "pause", &m).unwrap();
    start(&a, "writer");
    output(&a, "writer");
    a.remove("writer").unwrap();
    assert_eq!(std::fs::read_to_string(a.dir.join("run/pod/emptydir/cache/f")).unwrap(), "kept\n");

    // CRI's (v1-style) cgroup mount is the guest's cgroup2, read-only.
    let mut m = member(&a, &["sh", "-c", "test -f /sys/fs/cgroup/cgroup.procs && echo cgroup2; touch /sys/fs/cgroup/x 2>/dev/null || echo ro"], false);
    m["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}));
    create(&a, "cg", "pause", &m).unwrap();
    start(&a, "cg");
    assert_eq!(output(&a, "cg"), "cgroup2\nro\n");
    a.remove("cg").unwrap();

    // shareProcessNamespace: the sandbox's process is PID 1 of the member too.
    let m = member(&a, &["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo pid=$$"], true);
    create(&a, "peer", "pause", &m).unwrap();
    start(&a, "peer");
    let out = output(&a, "peer");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("sleep 1000 "), "{out}");
    assert_ne!(lines.next(), Some("pid=1"), "{out}");

    // Bad input: a bind source the host did not share, a sysctl of the whole VM.
    let mut bad = member(&a, &["true"], false);
    bad["mounts"][3]["source"] = json!("/etc");
    let (code, msg) = status(create(&a, "bad1", "pause", &bad));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("\"/etc\"") && msg.contains("not a file the host shared"), "{msg}");
    let mut bad = member(&a, &["true"], false);
    bad["linux"]["sysctl"] = json!({"vm.swappiness": "1"});
    let (code, msg) = status(create(&a, "bad2", "pause", &bad));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("vm.swappiness"), "{msg}");

    // The sandbox goes last.
    a.signal("pause", "", 9, false).unwrap();
    a.wait("pause", "");
    let (code, msg) = status(a.remove("pause"));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    a.remove("app").unwrap();
    a.remove("peer").unwrap();
    a.remove("pause").unwrap();
    assert!(!a.dir.join("run/pod").exists(), "pod directory left (emptyDir included)");
    assert!(a.agent_mounts().is_empty(), "mounts left: {:?}", a.agent_mounts());
    // A new pod can follow.
    create(&a, "next", "next", &spec(&["true"])).unwrap();
    a.remove("next").unwrap();
    assert!(a.agent_mounts().is_empty(), "mounts left: {:?}", a.agent_mounts());
}
