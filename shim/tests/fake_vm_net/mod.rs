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
    let spec_path = env.dir.path().join("bundle/config.json");
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    spec["linux"] = serde_json::json!({"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "network", "path": path}]});
    std::fs::write(&spec_path, spec.to_string()).unwrap();
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
    let log = std::fs::read_to_string(env.dir.path().join("state/test/net/vsock.sock.net")).unwrap();
    let mac = ns.mac();
    let want = [format!("net tap0_husk fd open mac {mac} tap tap0_husk"), format!("iface {mac} eth0 1400 10.99.1.2/24"), "route default via \"10.99.1.1\" dev eth0".to_string()];
    assert_eq!(log.lines().collect::<Vec<_>>(), want, "the VMM got the tap, the agent the interface and its routes, in this order");
    assert!(in_ns(&ns.pod, "tc filter show dev eth0 ingress").contains("tap0_husk"));
    env.client.start(ctx(), &StartRequest { id: "net".into(), ..Default::default() }).unwrap();

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
        Err(ttrpc::Error::RpcStatus(s)) => assert!(s.message().contains("eth0") && s.message().contains("no IP address") && s.message().contains(&ns.pod), "{}", s.message()),
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
