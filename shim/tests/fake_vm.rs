//! The whole Task API path through the real shim server with a fake VM: this test binary, run
//! with HUSK_FAKE_VMM set, is the "husk-vmm" the shim spawns. It serves the hybrid-vsock
//! handshake on `--vsock uds=` and a scripted husk agent behind it, so stdio bridging, exit
//! ordering, exec, kill, a VMM crash and cleanup are checked without KVM.
#![allow(clippy::unwrap_used, missing_docs)]

mod fake_agent;
mod fake_containerd;
mod fake_vm_net;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::{
    CloseIORequest, CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, ShutdownRequest, StartRequest, StateRequest, WaitRequest,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::shim_sync::TaskClient;
use ttrpc::context;

fn main() {
    if fake_agent::is_fake_vmm() {
        fake_agent::run_fake_vmm();
        return;
    }
    let tests: [(&str, fn()); 15] = [
        ("large_output_arrives_before_the_exit", large_output_arrives_before_the_exit),
        ("stdin_is_forwarded_to_eof", stdin_is_forwarded_to_eof),
        ("exec_and_kill", exec_and_kill),
        ("vmm_crash_is_an_error_exit_not_a_hang", vmm_crash_is_an_error_exit_not_a_hang),
        ("a_pod_shares_one_vm_and_its_containers_use_disk_slots", a_pod_shares_one_vm_and_its_containers_use_disk_slots),
        ("a_container_of_an_unknown_pod_is_refused", a_container_of_an_unknown_pod_is_refused),
        ("a_guest_that_never_reports_a_sigkill_loses_its_vm", a_guest_that_never_reports_a_sigkill_loses_its_vm),
        ("a_bind_mount_that_cannot_be_shared_is_refused_before_a_vm_boots", a_bind_mount_that_cannot_be_shared_is_refused_before_a_vm_boots),
        ("the_pods_network_reaches_the_vm_and_nothing_is_left", fake_vm_net::the_pods_network_reaches_the_vm_and_nothing_is_left),
        ("a_network_the_vm_cannot_get_fails_create_and_leaves_nothing", fake_vm_net::a_network_the_vm_cannot_get_fails_create_and_leaves_nothing),
        ("ctr_cni_configures_the_namespace_between_create_and_start", fake_vm_net::ctr_cni_configures_the_namespace_between_create_and_start),
        ("a_nerdctl_style_hook_configures_the_namespace_during_create", fake_vm_net::a_nerdctl_style_hook_configures_the_namespace_during_create),
        ("a_failing_hook_fails_create_and_leaves_nothing", fake_vm_net::a_failing_hook_fails_create_and_leaves_nothing),
        ("an_oom_flood_from_the_guest_is_bounded", an_oom_flood_from_the_guest_is_bounded),
        ("a_task_exit_reaches_a_restarted_containerd", a_task_exit_reaches_a_restarted_containerd),
    ];
    let mut failed = 0;
    for (name, t) in tests {
        let r = std::panic::catch_unwind(t);
        println!("test {name} ... {}", if r.is_ok() { "ok" } else { "FAILED" });
        failed += usize::from(r.is_err());
    }
    println!("test result: {} passed; {failed} failed", tests.len() - failed);
    std::process::exit(i32::from(failed > 0));
}

struct Env {
    dir: tempfile::TempDir,
    shim: Child,
    client: TaskClient,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.shim.kill();
        let _ = self.shim.wait();
    }
}

fn ctx() -> context::Context {
    context::with_timeout(60_000_000_000)
}

fn setup(id: &str, args: &[&str]) -> Env {
    setup_with(id, args, tempfile::tempdir().unwrap(), None)
}

/// `setup` in `dir`, publishing events to `events` (containerd's TTRPC_ADDRESS) if given.
fn setup_with(id: &str, args: &[&str], dir: tempfile::TempDir, events: Option<String>) -> Env {
    let d = dir.path();
    let bundle = d.join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    std::fs::write(bundle.join("rootfs/bin/placeholder"), b"x").unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]},
        "root": {"path": "rootfs"},
    });
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    for f in ["vmlinux", "initramfs"] {
        std::fs::write(d.join(f), b"x").unwrap();
    }
    let me = std::env::current_exe().unwrap();
    // The jail's RLIMIT_NPROC is sized for husk-vmm (a thread per vCPU and disk slot, plus 8).
    // The fake VMM serves the agent with ttrpc's thread pool (up to 6 workers per connection,
    // 4 of them held by a container's stdout, stderr, wait and OOM requests) behind a proxy
    // of 2 threads per connection: 12 slots give it the room of 22 threads instead of 18,
    // which it overran now and then (a thread spawn failed, the fake agent stopped answering).
    std::fs::write(
        d.join("husk.toml"),
        format!(
            "[vm]\nkernel = \"{p}/vmlinux\"\ninitramfs = \"{p}/initramfs\"\ndisk_slots = 12\n[shim]\nvmm = \"{me}\"\nstate_dir = \"{p}/state\"\nimage_cache_dir = \"{p}/images\"\nboot_timeout_secs = 30\n",
            p = d.display(),
            me = me.display()
        ),
    )
    .unwrap();
    let sock = d.join("shim.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_containerd-shim-husk-v2"));
    cmd.args(["-namespace", "test", "-id", id, "-address", "/nonexistent", "-socket"])
        .arg(format!("unix://{}", sock.display()))
        .current_dir(&bundle)
        .env("HUSK_CONFIG", d.join("husk.toml"))
        .env_remove("TTRPC_ADDRESS")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(addr) = events {
        cmd.env("TTRPC_ADDRESS", addr);
    }
    let shim = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        if let Ok(c) = ttrpc::Client::connect(&format!("unix://{}", sock.display())) {
            break c;
        }
        assert!(Instant::now() < deadline, "shim did not listen");
        std::thread::sleep(Duration::from_millis(50));
    };
    Env { dir, shim, client: TaskClient::new(client) }
}

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    p
}

/// Reads a FIFO to EOF in a thread.
fn reader(p: PathBuf) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        File::open(&p).unwrap().read_to_end(&mut v).unwrap();
        v
    })
}

fn create(env: &Env, id: &str, stdin: Option<&Path>, stdout: &Path, stderr: &Path) -> u32 {
    let req = CreateTaskRequest {
        id: id.into(),
        bundle: env.dir.path().join("bundle").display().to_string(),
        stdin: stdin.map(|p| p.display().to_string()).unwrap_or_default(),
        stdout: stdout.display().to_string(),
        stderr: stderr.display().to_string(),
        ..Default::default()
    };
    env.client.create(ctx(), &req).unwrap().pid
}

/// An exec of `spec` (an OCI process as JSON) in container `id`, output to the FIFOs given.
fn exec_request(id: &str, exec_id: &str, stdout: &Path, stderr: &Path, spec: &serde_json::Value) -> ExecProcessRequest {
    ExecProcessRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        stdout: stdout.display().to_string(),
        stderr: stderr.display().to_string(),
        spec: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: spec.to_string().into_bytes(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

fn wait(env: &Env, id: &str, exec: &str) -> u32 {
    env.client.wait(ctx(), &WaitRequest { id: id.into(), exec_id: exec.into(), ..Default::default() }).unwrap().exit_status
}

/// Delete and Shutdown; the state directory, the fake VMM and the shim must be gone.
fn finish(mut env: Env, id: &str) -> u32 {
    let vmm_pid = std::fs::read_to_string(env.dir.path().join(format!("state/test/{id}/state.json")))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["vmm_pid"].as_u64());
    let d = env.client.delete(ctx(), &DeleteRequest { id: id.into(), ..Default::default() }).unwrap();
    assert!(!env.dir.path().join("state/test").join(id).exists(), "state directory left");
    if let Some(pid) = vmm_pid {
        let gone =
            !Path::new(&format!("/proc/{pid}")).exists() || std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true);
        assert!(gone, "fake VMM {pid} still running");
    }
    env.client.shutdown(ctx(), &ShutdownRequest { id: id.into(), ..Default::default() }).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.shim.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "shim did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.exit_status
}

fn large_output_arrives_before_the_exit() {
    let env = setup("big", &["out", "3000000", "3"]);
    let (o, e) = (fifo(env.dir.path(), "o"), fifo(env.dir.path(), "e"));
    let (ro, re) = (reader(o.clone()), reader(e.clone()));
    create(&env, "big", None, &o, &e);
    env.client.start(ctx(), &StartRequest { id: "big".into(), ..Default::default() }).unwrap();
    assert_eq!(wait(&env, "big", ""), 3);
    let out = ro.join().unwrap();
    assert_eq!(out, fake_agent::pattern(3_000_000));
    assert_eq!(re.join().unwrap(), b"err-line\n");
    let st = env.client.state(ctx(), &StateRequest { id: "big".into(), ..Default::default() }).unwrap();
    assert_eq!((st.status.value(), st.exit_status), (3, 3)); // STOPPED
    assert_eq!(finish(env, "big"), 3);
}

fn stdin_is_forwarded_to_eof() {
    let env = setup("cat", &["cat"]);
    let (i, o, e) = (fifo(env.dir.path(), "i"), fifo(env.dir.path(), "o"), fifo(env.dir.path(), "e"));
    let (ro, _re) = (reader(o.clone()), reader(e.clone()));
    let input: Vec<u8> = (0..200_000u32).flat_map(|n| format!("{n}\n").into_bytes()).collect();
    let data = input.clone();
    let ip = i.clone();
    let writer = std::thread::spawn(move || {
        let mut f = File::options().write(true).open(ip).unwrap();
        f.write_all(&data).unwrap();
        f
    });
    create(&env, "cat", Some(&i), &o, &e);
    env.client.start(ctx(), &StartRequest { id: "cat".into(), ..Default::default() }).unwrap();
    let f = writer.join().unwrap();
    // As ctr does: CloseIO first, close the FIFO after; nothing written may be lost.
    env.client.close_io(ctx(), &CloseIORequest { id: "cat".into(), stdin: true, ..Default::default() }).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(f);
    assert_eq!(wait(&env, "cat", ""), 0);
    assert_eq!(ro.join().unwrap(), input);
    assert_eq!(finish(env, "cat"), 0);
}

fn exec_and_kill() {
    let env = setup("ex", &["sleep"]);
    let (o, e) = (fifo(env.dir.path(), "o"), fifo(env.dir.path(), "e"));
    let (_ro, _re) = (reader(o.clone()), reader(e.clone()));
    create(&env, "ex", None, &o, &e);
    env.client.start(ctx(), &StartRequest { id: "ex".into(), ..Default::default() }).unwrap();
    let (xo, xe) = (fifo(env.dir.path(), "xo"), fifo(env.dir.path(), "xe"));
    let (rxo, _rxe) = (reader(xo.clone()), reader(xe.clone()));
    let spec = serde_json::json!({"args": ["out", "10", "7"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let req = exec_request("ex", "x1", &xo, &xe, &spec);
    env.client.exec(ctx(), &req).unwrap();
    env.client.start(ctx(), &StartRequest { id: "ex".into(), exec_id: "x1".into(), ..Default::default() }).unwrap();
    assert_eq!(wait(&env, "ex", "x1"), 7);
    assert_eq!(rxo.join().unwrap(), fake_agent::pattern(10));
    env.client.delete(ctx(), &DeleteRequest { id: "ex".into(), exec_id: "x1".into(), ..Default::default() }).unwrap();
    // An exec that fails to start: its output FIFOs reach EOF at once (containerd's readers
    // would otherwise wait for a writer that never comes).
    let (mo, me) = (fifo(env.dir.path(), "mo"), fifo(env.dir.path(), "me"));
    let (rmo, rme) = (reader(mo.clone()), reader(me.clone()));
    let spec = serde_json::json!({"args": ["missing"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let req = exec_request("ex", "x2", &mo, &me, &spec);
    env.client.exec(ctx(), &req).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(env.client.start(ctx(), &StartRequest { id: "ex".into(), exec_id: "x2".into(), ..Default::default() }).is_err());
    let t = Instant::now();
    assert_eq!((rmo.join().unwrap(), rme.join().unwrap()), (Vec::new(), Vec::new()));
    assert!(t.elapsed() < Duration::from_secs(5), "the outputs of a failed exec stayed open {:?}", t.elapsed());
    // Its Wait returns (containerd's CRI waits for it before deleting a failed exec), and a
    // kill finds nothing to signal.
    let t = Instant::now();
    assert_eq!(wait(&env, "ex", "x2"), 127);
    assert!(t.elapsed() < Duration::from_secs(5), "Wait of a failed exec took {:?}", t.elapsed());
    env.client.delete(ctx(), &DeleteRequest { id: "ex".into(), exec_id: "x2".into(), ..Default::default() }).unwrap();
    // Deleting the running init is refused; kill it, then delete.
    assert!(env.client.delete(ctx(), &DeleteRequest { id: "ex".into(), ..Default::default() }).is_err());
    env.client.kill(ctx(), &KillRequest { id: "ex".into(), signal: 9, ..Default::default() }).unwrap();
    assert_eq!(wait(&env, "ex", ""), 137);
    // Killing a finished process is NotFound, as with runc.
    match env.client.kill(ctx(), &KillRequest { id: "ex".into(), signal: 9, ..Default::default() }) {
        Err(ttrpc::Error::RpcStatus(s)) => assert_eq!(s.code(), ttrpc::Code::NOT_FOUND),
        other => panic!("{other:?}"),
    }
    assert_eq!(finish(env, "ex"), 137);
}

fn vmm_crash_is_an_error_exit_not_a_hang() {
    let env = setup("crash", &["crash"]);
    let (o, e) = (fifo(env.dir.path(), "o"), fifo(env.dir.path(), "e"));
    let (_ro, _re) = (reader(o.clone()), reader(e.clone()));
    create(&env, "crash", None, &o, &e);
    env.client.start(ctx(), &StartRequest { id: "crash".into(), ..Default::default() }).unwrap();
    let t = Instant::now();
    assert_eq!(wait(&env, "crash", ""), 255);
    assert!(t.elapsed() < Duration::from_secs(20), "exit took {:?}", t.elapsed());
    assert_eq!(finish(env, "crash"), 255);
}

/// A second bundle for container `id` of pod `pod` (CRI's annotations and namespace paths).
fn member_bundle(env: &Env, id: &str, pod: &str, args: &[&str]) -> PathBuf {
    let bundle = env.dir.path().join(format!("bundle-{id}"));
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    std::fs::write(bundle.join("rootfs/bin/app"), id).unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]},
        "root": {"path": "rootfs"},
        "annotations": {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": pod},
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}]},
    });
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    bundle
}

fn create_in(env: &Env, id: &str, bundle: &Path, stdout: &Path, stderr: &Path) -> ttrpc::Result<u32> {
    let req = CreateTaskRequest {
        id: id.into(),
        bundle: bundle.display().to_string(),
        stdout: stdout.display().to_string(),
        stderr: stderr.display().to_string(),
        ..Default::default()
    };
    env.client.create(ctx(), &req).map(|r| r.pid)
}

fn shim_alive_after_shutdown(env: &mut Env) -> bool {
    env.client.shutdown(ctx(), &ShutdownRequest { id: "pod".into(), ..Default::default() }).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    env.shim.try_wait().unwrap().is_none()
}

fn a_pod_shares_one_vm_and_its_containers_use_disk_slots() {
    let mut env = setup("pod", &["sleep"]);
    let spec_path = env.dir.path().join("bundle/config.json");
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    spec["annotations"] = serde_json::json!({"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "pod"});
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let (o, e) = (fifo(env.dir.path(), "o"), fifo(env.dir.path(), "e"));
    let (_ro, _re) = (reader(o.clone()), reader(e.clone()));
    assert_eq!(create(&env, "pod", None, &o, &e), 1);
    env.client.start(ctx(), &StartRequest { id: "pod".into(), ..Default::default() }).unwrap();
    let state = env.dir.path().join("state/test/pod");
    let api_log = state.join("jail/run/api.log");

    // Two containers join: each gets its own disk slot, with a serial unique in the VM.
    let mut pids = Vec::new();
    for (i, id) in ["app1", "app2"].iter().enumerate() {
        let b = member_bundle(&env, id, "pod", &["out", "4", &i.to_string()]);
        let (mo, me) = (fifo(env.dir.path(), &format!("{id}.o")), fifo(env.dir.path(), &format!("{id}.e")));
        let (rmo, _rme) = (reader(mo.clone()), reader(me.clone()));
        pids.push(create_in(&env, id, &b, &mo, &me).unwrap());
        env.client.start(ctx(), &StartRequest { id: id.to_string(), ..Default::default() }).unwrap();
        assert_eq!(wait(&env, id, ""), i as u32);
        assert_eq!(rmo.join().unwrap(), fake_agent::pattern(4));
    }
    assert_ne!(pids[0], pids[1]);
    assert_eq!(std::fs::read_to_string(&api_log).unwrap(), "PUT slot0 s0g1\nPUT slot1 s1g2\n");
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(state.join("state.json")).unwrap()).unwrap();
    let ids: Vec<&str> = info["containers"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["pod", "app1", "app2"]);
    let vmm_pid = info["vmm_pid"].as_u64().unwrap();

    // A container of another pod's namespace (TARGET mode) is refused by name.
    let b = member_bundle(&env, "bad", "pod", &["out", "1", "0"]);
    let mut bad: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(b.join("config.json")).unwrap()).unwrap();
    bad["linux"]["namespaces"][1] = serde_json::json!({"type": "pid", "path": format!("/proc/{}/ns/pid", pids[0])});
    std::fs::write(b.join("config.json"), bad.to_string()).unwrap();
    match create_in(&env, "bad", &b, &o, &e) {
        Err(ttrpc::Error::RpcStatus(s)) => assert!(s.message().contains("TARGET") && s.message().contains("app1"), "{}", s.message()),
        other => panic!("{other:?}"),
    }
    assert!(!state.join("containers/bad").exists());

    // Deleting a member frees its slot; the shim stays for the pod; the next one reuses it.
    env.client.delete(ctx(), &DeleteRequest { id: "app1".into(), ..Default::default() }).unwrap();
    assert!(!state.join("containers/app1").exists());
    assert!(shim_alive_after_shutdown(&mut env), "the shim exited while its pod still runs");
    // containerd runs the binary's `delete` for app1 when its connection closes: the pod's
    // shim still answers on the shared socket, so that must leave everything alone.
    let sock = env.dir.path().join("shim.sock");
    let app1 = env.dir.path().join("bundle-app1");
    std::fs::write(app1.join("address"), format!("unix://{}", sock.display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-husk-v2"))
        .args(["-namespace", "test", "-id", "app1", "-address", "/nonexistent", "delete"])
        .current_dir(&app1)
        .env("HUSK_CONFIG", env.dir.path().join("husk.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(sock.exists(), "the delete action removed the pod shim's socket");
    assert!(state.join("state.json").exists(), "the delete action removed the running pod's state");
    let b = member_bundle(&env, "app3", "pod", &["out", "1", "0"]);
    create_in(&env, "app3", &b, &o, &e).unwrap();
    let log = std::fs::read_to_string(&api_log).unwrap();
    assert!(log.ends_with("DELETE slot0 \nPUT slot0 s0g3\n"), "{log}");

    // Deleting the sandbox container ends the VM and every container still in it.
    env.client.kill(ctx(), &KillRequest { id: "pod".into(), signal: 9, ..Default::default() }).unwrap();
    assert_eq!(wait(&env, "pod", ""), 137);
    env.client.delete(ctx(), &DeleteRequest { id: "pod".into(), ..Default::default() }).unwrap();
    assert_eq!(wait(&env, "app3", ""), 137, "a container left in the pod ends with it");
    assert!(!state.exists(), "state directory left");
    assert!(shim_alive_after_shutdown(&mut env), "the shim exited before containerd deleted every container");
    for id in ["app2", "app3"] {
        env.client.delete(ctx(), &DeleteRequest { id: id.into(), ..Default::default() }).unwrap();
    }
    assert!(!b.join("husk-state-dir").exists());
    let gone = !Path::new(&format!("/proc/{vmm_pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{vmm_pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true);
    assert!(gone, "fake VMM {vmm_pid} still running");
    assert!(!shim_alive_after_shutdown(&mut env), "the shim did not exit once its pod was gone");
}

fn a_container_of_an_unknown_pod_is_refused() {
    let env = setup("lone", &["sleep"]);
    let b = member_bundle(&env, "orphan", "nopod", &["out", "1", "0"]);
    let (o, e) = (env.dir.path().join("o"), env.dir.path().join("e"));
    match create_in(&env, "orphan", &b, &o, &e) {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
            assert!(s.message().contains("nopod"), "{}", s.message());
        }
        other => panic!("{other:?}"),
    }
    assert!(!env.dir.path().join("state/test/nopod").exists());
    assert!(!b.join("husk-state-dir").exists());
}

fn a_bind_mount_that_cannot_be_shared_is_refused_before_a_vm_boots() {
    let env = setup("badbind", &["sleep"]);
    let spec_path = env.dir.path().join("bundle/config.json");
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    spec["mounts"] = serde_json::json!([{"destination": "/data", "type": "bind", "source": "/nonexistent/husk-src", "options": ["rbind", "rw"]}]);
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    // No VMM to start: a create that got as far as booting would fail on that instead.
    let cfg_path = env.dir.path().join("husk.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let cfg: String = cfg.lines().map(|l| if l.starts_with("vmm = ") { "vmm = \"/nonexistent/husk-vmm\"\n".to_string() } else { format!("{l}\n") }).collect();
    std::fs::write(&cfg_path, cfg).unwrap();
    let (o, e) = (env.dir.path().join("o"), env.dir.path().join("e"));
    let t = Instant::now();
    match create_in(&env, "badbind", &env.dir.path().join("bundle"), &o, &e) {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT, "{}", s.message());
            assert!(s.message().contains("/nonexistent/husk-src") && s.message().contains("/data"), "{}", s.message());
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "refused after {:?}", t.elapsed());
    assert!(!env.dir.path().join("state/test/badbind").exists(), "state directory left");
    assert!(!env.dir.path().join("bundle/husk-state-dir").exists(), "bundle pointer left");
}

fn a_guest_that_never_reports_a_sigkill_loses_its_vm() {
    let env = setup("hang", &["hang"]);
    let (o, e) = (fifo(env.dir.path(), "o"), fifo(env.dir.path(), "e"));
    let (_ro, _re) = (reader(o.clone()), reader(e.clone()));
    create(&env, "hang", None, &o, &e);
    env.client.start(ctx(), &StartRequest { id: "hang".into(), ..Default::default() }).unwrap();
    let t = Instant::now();
    env.client.kill(ctx(), &KillRequest { id: "hang".into(), signal: 9, ..Default::default() }).unwrap();
    assert_eq!(wait(&env, "hang", ""), 137);
    assert!(t.elapsed() < Duration::from_secs(15), "the task took {:?} to end", t.elapsed());
    assert_eq!(finish(env, "hang"), 137);
}

/// An agent answering GetOomEvent at once, forever: containerd gets at most
/// OOM_POLL_MIN's rate of OOM events, not a flood.
fn an_oom_flood_from_the_guest_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let containerd = fake_containerd::FakeContainerd::start(&dir.path().join("containerd.sock"));
    let env = setup_with("flood", &["oom-flood"], dir, Some(containerd.address()));
    let (o, e) = (fifo(env.dir.path(), "o"), fifo(env.dir.path(), "e"));
    let (_ro, _re) = (reader(o.clone()), reader(e.clone()));
    create(&env, "flood", None, &o, &e);
    env.client.start(ctx(), &StartRequest { id: "flood".into(), ..Default::default() }).unwrap();
    assert!(containerd.wait_for("/tasks/oom", "flood", Duration::from_secs(10)), "no OOM event at all");
    let first = containerd.count("/tasks/oom", "flood");
    std::thread::sleep(Duration::from_secs(3));
    let n = containerd.count("/tasks/oom", "flood") - first;
    // 10 a second at most (plus scheduling slack); the unbounded watch sent thousands.
    assert!((5..=40).contains(&n), "{n} OOM events in 3 s");
    env.client.kill(ctx(), &KillRequest { id: "flood".into(), signal: 9, ..Default::default() }).unwrap();
    assert_eq!(wait(&env, "flood", ""), 137);
    assert_eq!(finish(env, "flood"), 137);
}

/// containerd goes away while a container runs and exits, then comes back at the same
/// address: it still gets the TaskExit.
fn a_task_exit_reaches_a_restarted_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let mut containerd = fake_containerd::FakeContainerd::start(&dir.path().join("containerd.sock"));
    let env = setup_with("restart", &["sleep"], dir, Some(containerd.address()));
    let (o, e) = (fifo(env.dir.path(), "o"), fifo(env.dir.path(), "e"));
    let (_ro, _re) = (reader(o.clone()), reader(e.clone()));
    create(&env, "restart", None, &o, &e);
    env.client.start(ctx(), &StartRequest { id: "restart".into(), ..Default::default() }).unwrap();
    assert!(containerd.wait_for("/tasks/start", "", Duration::from_secs(10)), "TaskStart not published");
    containerd.stop();
    env.client.kill(ctx(), &KillRequest { id: "restart".into(), signal: 9, ..Default::default() }).unwrap();
    assert_eq!(wait(&env, "restart", ""), 137);
    // The shim tries to publish the exit while containerd is away.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(containerd.count("/tasks/exit", "restart"), 0);
    containerd.restart();
    assert!(containerd.wait_for("/tasks/exit", "restart", Duration::from_secs(20)), "the TaskExit never reached the restarted containerd");
    assert_eq!(finish(env, "restart"), 137);
}
