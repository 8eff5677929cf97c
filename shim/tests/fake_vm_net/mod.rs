//! The pod's network through the real shim with the fake VM (root: `ip netns`, veth pairs).
//! The fake VMM writes down the taps it inherited and the fake agent the interfaces and routes
//! it was given, in `<vsock uds>.net`.

use std::process::Command;
use std::time::{Duration, Instant};

use containerd_shim_protos::api::StartRequest;

use super::{create, ctx, fifo, finish, reader, setup, wait, Env};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn in_ns(ns: &str, cmd: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A pod namespace as CNI leaves it: eth0 (one end of a veth whose other end is in a node
/// namespace), 10.99.N.2/24, MTU 1400, default route via .1. Removed on drop.
struct PodNs {
    node: String,
    pod: String,
}

impl PodNs {
    fn new(tag: &str, n: u8, address: bool) -> PodNs {
        let base = format!("husk-f{}-{tag}", std::process::id());
        let p = PodNs { node: format!("{base}-n"), pod: format!("{base}-p") };
        ip(&["netns", "add", &p.node]);
        ip(&["netns", "add", &p.pod]);
        ip(&["-n", &p.node, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", &p.pod]);
        ip(&["-n", &p.pod, "link", "set", "eth0", "mtu", "1400", "up"]);
        if address {
            ip(&["-n", &p.pod, "addr", "add", &format!("10.99.{n}.2/24"), "dev", "eth0"]);
            ip(&["-n", &p.pod, "route", "add", "default", "via", &format!("10.99.{n}.1")]);
        }
        p
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.pod)
    }

    fn mac(&self) -> String {
        in_ns(&self.pod, "cat /sys/class/net/eth0/address").trim().to_string()
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        for ns in [&self.node, &self.pod] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Points the bundle's spec at network namespace `path`.
fn use_netns(env: &Env, path: &str) {
    edit_spec(env, |s| s["linux"] = serde_json::json!({"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "network", "path": path}]}));
}

fn edit_spec(env: &Env, f: impl FnOnce(&mut serde_json::Value)) {
    let spec_path = env.dir.path().join("bundle/config.json");
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    f(&mut spec);
    std::fs::write(&spec_path, spec.to_string()).unwrap();
}

/// A new network namespace, as `ctr run` and nerdctl ask for.
fn new_netns(env: &Env) {
    edit_spec(env, |s| s["linux"] = serde_json::json!({"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "network"}]}));
}

/// What CNI's bridge plugin does for the container whose host process is `pid`: a veth from
/// the node namespace to eth0 in `/proc/<pid>/ns/net`, an address and a default route.
fn cni_add_script(node: &str, host_end: &str, n: u8, pid: &str) -> String {
    format!(
        "ip -n {node} link add {host_end} type veth peer name eth0 netns {pid} && ip -n {node} link set {host_end} up && \\
         nsenter -t {pid} -n sh -c 'ip link set eth0 mtu 1400 up && ip addr add 10.99.{n}.2/24 dev eth0 && ip route add default via 10.99.{n}.1'"
    )
}

fn net_log(env: &Env, id: &str) -> String {
    std::fs::read_to_string(env.dir.path().join(format!("state/test/{id}/jail/run/vsock.sock.net"))).unwrap()
}

/// eth0's MAC in the network namespace of process `pid` (over netlink: sysfs shows the
/// namespace of whoever mounted it).
fn mac_in(pid: u32) -> String {
    let out = Command::new("nsenter").args(["-t", &pid.to_string(), "-n", "ip", "-o", "link", "show", "eth0"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap_or_else(|| panic!("no MAC in {text:?}")).to_string()
}

fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
}

fn vmm_pid(env: &Env, id: &str) -> i32 {
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(env.dir.path().join(format!("state/test/{id}/state.json"))).unwrap()).unwrap();
    info["vmm_pid"].as_i64().unwrap() as i32
}

pub fn the_pods_network_reaches_the_vm_and_nothing_is_left() {
    let ns = PodNs::new("ok", 1, true);
    let env = setup("net", &["sleep"]);
    use_netns(&env, &ns.path());
    let (o, e) = (fifo(env.dir.path(), "o"), fifo(env.dir.path(), "e"));
    let (_ro, _re) = (reader(o.clone()), reader(e.clone()));
    create(&env, "net", None, &o, &e);
    let log = std::fs::read_to_string(env.dir.path().join("state/test/net/jail/run/vsock.sock.net")).unwrap();
    let mac = ns.mac();
    let want = [
        format!("net tap0_husk fd open mac {mac} tap tap0_husk"),
        format!("iface {mac} eth0 1400 10.99.1.2/24"),
        "route default via \"10.99.1.1\" dev eth0".to_string(),
    ];
    assert_eq!(log.lines().collect::<Vec<_>>(), want, "the VMM got the tap, the agent the interface and its routes, in this order");
    assert!(in_ns(&ns.pod, "tc filter show dev eth0 ingress").contains("tap0_husk"));
    env.client.start(ctx(), &StartRequest { id: "net".into(), ..Default::default() }).unwrap();
    let log = std::fs::read_to_string(env.dir.path().join("state/test/net/jail/run/vsock.sock.net")).unwrap();
    assert!(log.ends_with("start net\n"), "nothing more at Start: {log}");

    // The VM dies: its tap goes with it at once; Delete removes the redirect on eth0.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(vmm_pid(&env, "net")), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !in_ns(&ns.pod, "ip link show tap0_husk").contains("does not exist") {
        assert!(Instant::now() < deadline, "the tap outlived its VM");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(wait(&env, "net", ""), 255);
    finish(env, "net");
    assert!(!in_ns(&ns.pod, "tc qdisc show dev eth0").contains("ingress"), "{}", in_ns(&ns.pod, "tc qdisc show dev eth0"));
    assert_eq!(in_ns(&ns.pod, "ip -o link show").lines().count(), 2, "lo and eth0 only");
    assert!(in_ns(&ns.pod, "ip -o addr show dev eth0").contains("10.99.1.2/24"), "CNI's address stays");
}

pub fn a_network_the_vm_cannot_get_fails_create_and_leaves_nothing() {
    let ns = PodNs::new("bad", 2, false);
    let env = setup("nonet", &["sleep"]);
    use_netns(&env, &ns.path());
    let (o, e) = (env.dir.path().join("o"), env.dir.path().join("e"));
    let req = containerd_shim_protos::api::CreateTaskRequest {
        id: "nonet".into(),
        bundle: env.dir.path().join("bundle").display().to_string(),
        stdout: o.display().to_string(),
        stderr: e.display().to_string(),
        ..Default::default()
    };
    match env.client.create(ctx(), &req) {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert!(s.message().contains("eth0") && s.message().contains("no IP address") && s.message().contains(&ns.pod), "{}", s.message())
        }
        other => panic!("{other:?}"),
    }
    assert!(!env.dir.path().join("state/test/nonet").exists(), "state directory left");
    assert_eq!(in_ns(&ns.pod, "ip -o link show").lines().count(), 2, "no tap left");
    // A namespace that vanished is named.
    use_netns(&env, "/var/run/netns/husk-gone");
    match env.client.create(ctx(), &req) {
        Err(ttrpc::Error::RpcStatus(s)) => assert!(s.message().contains("/var/run/netns/husk-gone"), "{}", s.message()),
        other => panic!("{other:?}"),
    }
    assert!(!env.dir.path().join("state/test/nonet").exists(), "state directory left");
}

/// ctr run --cni: a new network namespace that ctr configures between Create and Start in
/// /proc/<task pid>/ns/net.
pub fn ctr_cni_configures_the_namespace_between_create_and_start() {
    let nodes = PodNs::new("cni", 3, false);
    let env = setup("cni", &["sleep"]);
    new_netns(&env);
    let (o, e) = (fifo(env.dir.path(), "o"), fifo(env.dir.path(), "e"));
    let (_ro, _re) = (reader(o.clone()), reader(e.clone()));
    let pid = create(&env, "cni", None, &o, &e);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim(),
        "husk-netns",
        "the task pid is a host process in the container's namespace"
    );
    let log = net_log(&env, "cni");
    let placeholder = log.split_whitespace().nth(5).unwrap().to_string();
    assert!(log.starts_with("net tap0_husk fd open mac ") && log.lines().count() == 1, "one spare tap, nothing configured yet: {log}");
    // ctr's CNI ADD, into the holder's namespace.
    let add = cni_add_script(&nodes.node, "vethcni", 3, &pid.to_string());
    let out = Command::new("sh").arg("-c").arg(&add).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mac = mac_in(pid);
    env.client.start(ctx(), &StartRequest { id: "cni".into(), ..Default::default() }).unwrap();
    let log = net_log(&env, "cni");
    let want = format!("iface {placeholder} mac->{mac} eth0 1400 10.99.3.2/24\nroute default via \"10.99.3.1\" dev eth0\nstart cni\n");
    assert!(log.ends_with(&want), "the spare device gets eth0's MAC and address before the start: {log}");
    env.client.kill(ctx(), &containerd_shim_protos::api::KillRequest { id: "cni".into(), signal: 9, ..Default::default() }).unwrap();
    assert_eq!(wait(&env, "cni", ""), 137);
    finish(env, "cni");
    assert!(gone(pid), "the holder outlived the container");
    // The kernel dismantles a namespace (and the veth in it) asynchronously once its last user left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !in_ns(&nodes.node, "ip link show vethcni").contains("does not exist") {
        assert!(Instant::now() < deadline, "the namespace (and the veth with it) outlived the container");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// nerdctl: a createRuntime hook runs CNI in /proc/<state pid>/ns/net during Create; the
/// poststop hook runs after the VM is gone.
pub fn a_nerdctl_style_hook_configures_the_namespace_during_create() {
    let nodes = PodNs::new("hook", 4, false);
    let env = setup("hook", &["sleep"]);
    new_netns(&env);
    let d = env.dir.path().to_path_buf();
    let hook = d.join("cni-hook");
    let add = cni_add_script(&nodes.node, "vethhook", 4, "$pid");
    std::fs::write(&hook, format!("#!/bin/sh\nset -e\npid=$(sed 's/.*\"pid\":\\([0-9]*\\).*/\\1/')\necho $pid >{}/hook.pid\n{add}\n", d.display())).unwrap();
    // The poststop hook writes outside the test's directory, which goes with the shim.
    let keep = tempfile::tempdir().unwrap();
    let poststop = keep.path().join("poststop.json");
    let post = d.join("post-hook");
    std::fs::write(&post, format!("#!/bin/sh\ncat >{}\n", poststop.display())).unwrap();
    for h in [&hook, &post] {
        std::fs::set_permissions(h, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let env_path = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"];
    edit_spec(&env, |s| s["hooks"] = serde_json::json!({"createRuntime": [{"path": hook, "env": env_path}], "poststop": [{"path": post}]}));
    let (o, e) = (fifo(env.dir.path(), "o"), fifo(env.dir.path(), "e"));
    let (_ro, _re) = (reader(o.clone()), reader(e.clone()));
    let pid = create(&env, "hook", None, &o, &e);
    let hook_pid: u32 = std::fs::read_to_string(d.join("hook.pid")).unwrap().trim().parse().unwrap();
    assert_eq!(hook_pid, pid, "the hook got the task's host process");
    let mac = mac_in(pid);
    let log = net_log(&env, "hook");
    let want = [
        format!("net tap0_husk fd open mac {mac} tap tap0_husk"),
        format!("iface {mac} eth0 1400 10.99.4.2/24"),
        "route default via \"10.99.4.1\" dev eth0".to_string(),
    ];
    assert_eq!(log.lines().collect::<Vec<_>>(), want, "the network the hook made is the VM's from the boot");
    env.client.start(ctx(), &StartRequest { id: "hook".into(), ..Default::default() }).unwrap();
    env.client.kill(ctx(), &containerd_shim_protos::api::KillRequest { id: "hook".into(), signal: 9, ..Default::default() }).unwrap();
    assert_eq!(wait(&env, "hook", ""), 137);
    assert!(!poststop.exists(), "poststop runs at Delete");
    finish(env, "hook");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&poststop).unwrap()).unwrap();
    assert_eq!((state["id"].as_str(), state["status"].as_str()), (Some("hook"), Some("stopped")));
    assert!(gone(pid));
}

/// A failing createRuntime hook fails Create with its stderr and leaves no holder.
pub fn a_failing_hook_fails_create_and_leaves_nothing() {
    let env = setup("badhook", &["sleep"]);
    new_netns(&env);
    let d = env.dir.path().to_path_buf();
    let hook = d.join("bad-hook");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\nsed 's/.*\"pid\":\\([0-9]*\\).*/\\1/' >{}/hook.pid\necho 'no free IP in 10.99.9.0/24' >&2\nexit 7\n", d.display()),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    edit_spec(&env, |s| s["hooks"] = serde_json::json!({"createRuntime": [{"path": hook, "timeout": 10}]}));
    let req = containerd_shim_protos::api::CreateTaskRequest { id: "badhook".into(), bundle: d.join("bundle").display().to_string(), ..Default::default() };
    match env.client.create(ctx(), &req) {
        Err(ttrpc::Error::RpcStatus(s)) => assert!(
            s.message().contains("createRuntime hook") && s.message().contains("exit status 7") && s.message().contains("no free IP in 10.99.9.0/24"),
            "{}",
            s.message()
        ),
        other => panic!("{other:?}"),
    }
    let pid: u32 = std::fs::read_to_string(d.join("hook.pid")).unwrap().trim().parse().unwrap();
    assert!(gone(pid), "the holder {pid} outlived the failed Create");
    assert!(!d.join("state/test/badhook").exists(), "state directory left");
}
