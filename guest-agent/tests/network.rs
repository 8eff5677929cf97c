//! Network configuration goes to the pod's network namespace: interfaces found by MAC in the
//! agent's namespace are moved there, renamed, sized and addressed; routes are added there.
//! The agent runs in its own network namespace; a veth pair stands in for virtio-net.
#![allow(clippy::unwrap_used)]
mod common;

use std::process::Command;

use common::{process, spec, status, Agent};
use husk_protocol::agent::*;

fn in_agent_netns(a: &Agent, args: &[&str]) -> String {
    let out = Command::new("nsenter").arg("-t").arg(a.agent_pid().to_string()).arg("-n").args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `sh -c cmd` as an exec in container `id` and returns its stdout.
fn exec_out(a: &Agent, id: &str, exec_id: &str, cmd: &str) -> String {
    a.exec(id, exec_id, &process(&["sh", "-c", cmd]), false).unwrap();
    let out = String::from_utf8(a.read_all(id, exec_id, false)).unwrap();
    a.wait(id, exec_id);
    out
}

fn create_in_pod(a: &Agent, id: &str, s: &serde_json::Value) {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.into();
    req.sandbox_id = "pod".into();
    req.oci_spec_json = serde_json::to_vec(s).unwrap();
    req.rootfs = Some(a.rootfs_msg(true)).into();
    a.client.create_container(common::ctx(), &req).unwrap();
    let mut start = StartContainerRequest::new();
    start.container_id = id.into();
    a.client.start_container(common::ctx(), &start).unwrap();
}

fn interface(mac: &str, name: &str, mtu: u32, addrs: &[(&str, u32)]) -> UpdateInterfacesRequest {
    let mut iface = Interface::new();
    iface.hw_addr = mac.into();
    iface.name = name.into();
    iface.mtu = mtu;
    for (addr, prefix) in addrs {
        let mut ip = IpAddress::new();
        ip.address = (*addr).into();
        ip.prefix_len = *prefix;
        iface.addresses.push(ip);
    }
    let mut req = UpdateInterfacesRequest::new();
    req.interfaces.push(iface);
    req
}

fn routes(list: &[(&str, &str, &str)]) -> UpdateRoutesRequest {
    let mut req = UpdateRoutesRequest::new();
    for (dst, gw, dev) in list {
        let mut r = Route::new();
        r.destination = (*dst).into();
        r.gateway = (*gw).into();
        r.device = (*dev).into();
        req.routes.push(r);
    }
    req
}

#[test]
fn interfaces_and_routes_go_to_the_pods_network_namespace() {
    let a = Agent::start();
    in_agent_netns(&a, &["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    let link = in_agent_netns(&a, &["ip", "-o", "link", "show", "v0"]);
    let mac = link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap().trim().to_uppercase();
    let req = interface(&mac, "eth7", 1400, &[("10.9.8.7", 24), ("10.9.9.7", 24), ("fd00::7", 64)]);

    // Without a pod there is no namespace to configure.
    let (code, msg) = status(a.client.update_interfaces(common::ctx(), &req));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("sandbox container"), "{msg}");

    // The pod's sandbox: a network namespace by path (CNI's, on the host) is a new one here.
    let mut s = spec(&["sleep", "1000"]);
    s["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "pid"}]);
    create_in_pod(&a, "pod", &s);
    assert!(exec_out(&a, "pod", "lo", "ip -o link show lo").contains(",UP"), "the pod's loopback is up");

    a.client.update_interfaces(common::ctx(), &req).unwrap();
    a.client.update_routes(common::ctx(), &routes(&[("default", "10.9.8.1", "eth7"), ("10.50.0.0/16", "", "eth7")])).unwrap();
    // Again: the interface is already there; addresses and routes are kept or replaced.
    a.client.update_interfaces(common::ctx(), &req).unwrap();
    a.client.update_routes(common::ctx(), &routes(&[("default", "10.9.8.1", "eth7")])).unwrap();

    let link = exec_out(&a, "pod", "l", "ip -o link show eth7");
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    let addrs = exec_out(&a, "pod", "a", "ip -o addr show eth7");
    for want in ["10.9.8.7/24", "10.9.9.7/24", "fd00::7/64"] {
        assert!(addrs.contains(want), "{want} in {addrs}");
    }
    assert!(!addrs.contains("tentative"), "no duplicate address detection: {addrs}");
    let table = exec_out(&a, "pod", "r", "ip route");
    assert!(table.contains("default via 10.9.8.1 dev eth7"), "{table}");
    assert!(table.contains("10.50.0.0/16 dev eth7"), "{table}");
    assert!(!in_agent_netns(&a, &["ip", "-o", "link"]).contains("v0"), "moved out of the agent's namespace");

    // A device booted with a placeholder MAC gets the pod interface's.
    in_agent_netns(&a, &["ip", "link", "add", "v2", "address", "02:00:00:00:aa:01", "type", "veth", "peer", "name", "v3"]);
    let mut late = interface("02:00:00:00:aa:01", "eth8", 0, &[("10.9.10.7", 24)]);
    late.interfaces[0].new_hw_addr = "0a:58:0a:09:0a:07".into();
    a.client.update_interfaces(common::ctx(), &late).unwrap();
    a.client.update_interfaces(common::ctx(), &late).unwrap();
    let link = exec_out(&a, "pod", "m", "ip -o link show eth8");
    assert!(link.contains("link/ether 0a:58:0a:09:0a:07"), "{link}");
    late.interfaces[0].new_hw_addr = "01:00:5e:00:00:01".into();
    let (code, msg) = status(a.client.update_interfaces(common::ctx(), &late));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("01:00:5e:00:00:01") && msg.contains("unicast"), "{msg}");

    // Another container of the pod joins that namespace.
    let mut m = spec(&["cat", "/sys/class/net/eth7/mtu"]);
    m["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}]);
    create_in_pod(&a, "app", &m);
    assert_eq!(a.read_all("app", "", false), b"1400\n");
    a.wait("app", "");

    // Bad requests name what is wrong.
    let (code, msg) = status(a.client.update_interfaces(common::ctx(), &interface("02:00:00:00:00:99", "", 0, &[])));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("02:00:00:00:00:99"), "{msg}");
    let (code, msg) = status(a.client.update_interfaces(common::ctx(), &interface(&mac, "", 0, &[("300.1.1.1", 24)])));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("300.1.1.1"), "{msg}");
    let (code, msg) = status(a.client.update_interfaces(common::ctx(), &interface("zz:00", "", 0, &[])));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("zz:00"), "{msg}");
    let (code, msg) = status(a.client.update_routes(common::ctx(), &routes(&[("10.0.0.0", "", "eth7")])));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("CIDR"), "{msg}");
    let (code, msg) = status(a.client.update_routes(common::ctx(), &routes(&[("10.0.0.0/8", "", "eth9")])));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("eth9"), "{msg}");
    let (code, msg) = status(a.client.update_routes(common::ctx(), &routes(&[("10.0.0.0/8", "fd00::1", "eth7")])));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("another IP family"), "{msg}");
    // The kernel's refusal is named too: a gateway that is not on any link.
    let (code, msg) = status(a.client.update_routes(common::ctx(), &routes(&[("10.60.0.0/16", "192.168.77.1", "eth7")])));
    assert_eq!(code, ttrpc::Code::INTERNAL);
    assert!(msg.contains("10.60.0.0/16") && msg.contains("192.168.77.1"), "{msg}");
}
