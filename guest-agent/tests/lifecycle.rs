//! Container lifecycle through the generated client against a real agent (no VM).
#![allow(clippy::unwrap_used)]
mod common;

use common::{process, spec, status, Agent};
use husk_protocol::agent::*;

#[test]
fn init_runs_with_output_and_exit_status_then_is_removed() {
    let a = Agent::start();
    let s = spec(&["sh", "-c", "echo out; echo err >&2; hostname; echo pid=$$; id -u; exit 3"]);
    let pid = a.create("c1", &s, false).unwrap();
    assert!(pid > 1);
    // Not started yet: nothing runs, so no output.
    let list = a
        .client
        .list_processes(common::ctx(), &{
            let mut r = ListProcessesRequest::new();
            r.container_id = "c1".into();
            r
        })
        .unwrap();
    assert_eq!(list.processes.len(), 1);
    assert_eq!(list.processes[0].pid, pid);
    assert!(list.processes[0].agent_started);

    let mut start = StartContainerRequest::new();
    start.container_id = "c1".into();
    assert_eq!(a.client.start_container(common::ctx(), &start).unwrap().pid, pid);
    let (code, msg) = status(a.client.start_container(common::ctx(), &start));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");

    let out = String::from_utf8(a.read_all("c1", "", false)).unwrap();
    assert_eq!(out, "out\nbox\npid=1\n0\n");
    assert_eq!(a.read_all("c1", "", true), b"err\n");
    let w = a.wait("c1", "");
    assert_eq!((w.pid, w.exit_status, w.signal), (pid, 3, 0));
    assert!(w.exited_at_unix_nanos > 0);
    // Waiting again gives the same answer.
    assert_eq!(a.wait("c1", "").exit_status, 3);

    a.remove("c1").unwrap();
    assert!(a.agent_mounts().is_empty(), "mounts left: {:?}", a.agent_mounts());
    assert!(!a.cgroup_root.join("c1").exists());
    assert!(!a.dir.join("run/containers/c1").exists());
    let (code, _) = status(a.remove("c1"));
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
}

#[test]
fn exec_stdin_signals_and_kill() {
    let a = Agent::start();
    a.run("c", &spec(&["sleep", "1000"]), false);

    // stdin → stdout through cat; EOF on close.
    a.exec("c", "cat", &process(&["cat"]), true).unwrap();
    assert_eq!(a.write_stdin("c", "cat", b"hello ").unwrap(), 6);
    assert_eq!(a.write_stdin("c", "cat", b"world").unwrap(), 5);
    a.close_stdin("c", "cat");
    assert_eq!(a.read_all("c", "cat", false), b"hello world");
    assert_eq!(a.wait("c", "cat").exit_status, 0);
    let (code, _) = status(a.write_stdin("c", "cat", b"late"));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);

    // The exec'd process shares the init's pid namespace and hostname.
    a.exec("c", "ps", &process(&["sh", "-c", "hostname; ps -o pid,comm | grep -c sleep"]), false).unwrap();
    assert_eq!(a.read_all("c", "ps", false), b"box\n1\n");
    assert_eq!(a.wait("c", "ps").exit_status, 0);

    // A trapped SIGTERM ends the process with the trap's status.
    a.exec("c", "trap", &process(&["sh", "-c", "trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done"]), false).unwrap();
    assert_eq!(a.read_chunk("c", "trap", false, 0).unwrap().data, b"ready\n");
    a.signal("c", "trap", libc::SIGTERM, false).unwrap();
    let w = a.wait("c", "trap");
    assert_eq!((w.exit_status, w.signal), (7, 0));

    // A running exec's id is taken; an exited one's is free again, and RemoveProcess forgets
    // an exited exec (refused while it runs).
    a.exec("c", "long", &process(&["sleep", "1000"]), false).unwrap();
    let (code, msg) = status(a.exec("c", "long", &process(&["true"]), false));
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS, "{msg}");
    let rm = |id: &str| {
        let mut r = RemoveProcessRequest::new();
        r.container_id = "c".into();
        r.exec_id = id.into();
        a.client.remove_process(common::ctx(), &r)
    };
    let (code, msg) = status(rm("long"));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    a.signal("c", "long", libc::SIGKILL, false).unwrap();
    a.wait("c", "long");
    rm("long").unwrap();
    let (code, msg) = status(rm("long"));
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    a.exec("c", "trap", &process(&["sh", "-c", "echo again"]), false).unwrap();
    assert_eq!(a.read_all("c", "trap", false), b"again\n");
    assert_eq!(a.wait("c", "trap").exit_status, 0);

    // Remove while running is refused.
    let (code, _) = status(a.remove("c"));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);

    // SIGKILL to every process of the container.
    a.exec("c", "bg", &process(&["sleep", "1000"]), false).unwrap();
    a.signal("c", "", libc::SIGKILL, true).unwrap();
    let w = a.wait("c", "");
    assert_eq!((w.exit_status, w.signal), (137, 9));
    assert_eq!(a.wait("c", "bg").signal, 9);
    let (code, msg) = status(a.exec("c", "late", &process(&["true"]), false));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    let (code, _) = status(a.signal("c", "", libc::SIGTERM, false));
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    a.remove("c").unwrap();
    assert!(a.agent_mounts().is_empty());
}

#[test]
fn user_hostname_and_capabilities_are_applied() {
    let a = Agent::start();
    let mut s = spec(&["sh", "-c", "id -u; id -g; id -G; grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; cat /proc/sys/kernel/hostname"]);
    s["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 6]});
    s["process"]["capabilities"] = serde_json::json!({"bounding": ["CAP_KILL"], "effective": [], "permitted": []});
    s["hostname"] = "other".into();
    a.run("u", &s, false);
    let out = String::from_utf8(a.read_all("u", "", false)).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "1000");
    assert_eq!(lines[2], "1000 5 6");
    assert_eq!(lines[3].split_whitespace().nth(1), Some("0000000000000000"));
    assert_eq!(lines[4].split_whitespace().nth(1), Some("1"));
    assert_eq!(lines[5], "other");
    assert_eq!(a.wait("u", "").exit_status, 0);
    a.remove("u").unwrap();

    // A user by name from the container's /etc/passwd.
    let mut s = spec(&["id", "-u"]);
    s["process"]["user"] = serde_json::json!({"uid": 0, "gid": 0, "username": "user"});
    a.run("named", &s, false);
    assert_eq!(a.read_all("named", "", false), b"1000\n");
    a.wait("named", "");
    a.remove("named").unwrap();
}

#[test]
fn read_only_rootfs_gets_a_writable_overlay_that_is_discarded() {
    let a = Agent::start();
    let mut req = CreateContainerRequest::new();
    req.container_id = "ro".into();
    req.oci_spec_json = serde_json::to_vec(&spec(&["sh", "-c", "echo new > /written; cat /written"])).unwrap();
    req.rootfs = Some(a.rootfs_msg(true)).into();
    a.client.create_container(common::ctx(), &req).unwrap();
    let mut start = StartContainerRequest::new();
    start.container_id = "ro".into();
    a.client.start_container(common::ctx(), &start).unwrap();
    assert_eq!(a.read_all("ro", "", false), b"new\n");
    assert_eq!(a.wait("ro", "").exit_status, 0);
    assert!(!a.rootfs().join("written").exists(), "write went through to the lower layer");
    a.remove("ro").unwrap();
    assert!(a.agent_mounts().is_empty(), "{:?}", a.agent_mounts());
}

#[test]
fn extra_disks_are_mounted_for_bind_mounts() {
    let a = Agent::start();
    let data = a.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "from the disk\n").unwrap();
    let mut s = spec(&["sh", "-c", "cat /mnt/data/hello.txt; touch /mnt/data/new 2>/dev/null && echo writable || echo read-only"]);
    let disk_dir = a.dir.join("run/disks/d/data");
    s["mounts"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "/mnt/data", "type": "bind", "source": disk_dir, "options": ["rbind", "ro"]}
    ));
    let mut req = CreateContainerRequest::new();
    req.container_id = "d".into();
    req.oci_spec_json = serde_json::to_vec(&s).unwrap();
    req.rootfs = Some(a.rootfs_msg(false)).into();
    let mut disk = Disk::new();
    disk.name = "data".into();
    disk.host_path = data.display().to_string();
    disk.read_only = true;
    req.disks.push(disk);
    a.client.create_container(common::ctx(), &req).unwrap();
    let mut start = StartContainerRequest::new();
    start.container_id = "d".into();
    a.client.start_container(common::ctx(), &start).unwrap();
    assert_eq!(a.read_all("d", "", false), b"from the disk\nread-only\n");
    assert_eq!(a.wait("d", "").exit_status, 0);
    a.remove("d").unwrap();
    assert!(a.agent_mounts().is_empty(), "{:?}", a.agent_mounts());

    // Bad disk names are refused before anything is mounted.
    req.container_id = "d2".into();
    req.disks[0].name = "../x".into();
    let (code, msg) = status(a.client.create_container(common::ctx(), &req));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("../x"), "{msg}");
    assert!(a.agent_mounts().is_empty(), "{:?}", a.agent_mounts());
}

#[test]
fn orphans_are_reaped_without_stealing_exit_statuses() {
    let a = Agent::start();
    // Without a pid namespace the background sleeps are re-parented to the agent when their
    // shell exits; the agent must reap them and still report the shell's own status.
    let mut s = spec(&["sh", "-c", "for i in 1 2 3 4 5; do sleep 0.2 & done; exit 4"]);
    s["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "uts"}]);
    a.run("orph", &s, false);
    assert_eq!(a.wait("orph", "").exit_status, 4);
    let agent = a.agent_pid();
    let find_zombies = || {
        let mut found = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{agent}/task")).unwrap().flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for pid in children.split_whitespace() {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')) {
                    found.push(pid.to_string());
                }
            }
        }
        found
    };
    // The sleeps end after 0.2 s; a zombie that outlives 5 s was never reaped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut zombies = find_zombies();
    while !zombies.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        zombies = find_zombies();
    }
    assert!(zombies.is_empty(), "zombies left under the agent: {zombies:?}");
    a.remove("orph").unwrap();
}
