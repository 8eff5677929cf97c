//! Network configuration: interfaces found by MAC are renamed, get MTU and addresses; routes.
#![allow(clippy::unwrap_used)]
//! The agent runs in its own network namespace; a veth pair stands in for virtio-net.
mod common;

use std::process::Command;

use common::{spec, status, Agent};
use husk_protocol::agent::*;

fn in_agent_netns(a: &Agent, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg("-t")
        .arg(a.agent_pid().to_string())
        .arg("-n")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn interfaces_and_routes_are_configured_and_shared_with_containers() {
    let a = Agent::start();
    in_agent_netns(&a, &["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    let link = in_agent_netns(&a, &["ip", "-o", "link", "show", "v0"]);
    let mac = link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap().to_string();
    let mac = mac.trim().to_uppercase();

    let mut iface = Interface::new();
    iface.hw_addr = mac.clone();
    iface.name = "eth7".into();
    iface.mtu = 1400;
    for (addr, prefix) in [("10.9.8.7", 24), ("fd00::7", 64)] {
        let mut ip = IpAddress::new();
        ip.address = addr.into();
        ip.prefix_len = prefix;
        iface.addresses.push(ip);
    }
    let mut req = UpdateInterfacesRequest::new();
    req.interfaces.push(iface);
    a.client.update_interfaces(common::ctx(), &req).unwrap();

    let mut routes = UpdateRoutesRequest::new();
    for (dst, gw) in [("default", "10.9.8.1"), ("10.50.0.0/16", "")] {
        let mut r = Route::new();
        r.destination = dst.into();
        r.gateway = gw.into();
        r.device = "eth7".into();
        routes.routes.push(r);
    }
    a.client.update_routes(common::ctx(), &routes).unwrap();

    let link = in_agent_netns(&a, &["ip", "-o", "link", "show", "eth7"]);
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(link.contains(",UP"), "{link}");
    let addrs = in_agent_netns(&a, &["ip", "-o", "addr", "show", "eth7"]);
    assert!(addrs.contains("10.9.8.7/24"), "{addrs}");
    assert!(addrs.contains("fd00::7/64"), "{addrs}");
    let routes = in_agent_netns(&a, &["ip", "route"]);
    assert!(routes.contains("default via 10.9.8.1 dev eth7"), "{routes}");
    assert!(routes.contains("10.50.0.0/16 dev eth7"), "{routes}");

    // A container whose spec names no network namespace shares the agent's, as runc shares
    // the host's.
    let mut s = spec(&["cat", "/sys/class/net/eth7/mtu"]);
    s["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "mount"}, {"type": "uts"}]);
    a.run("net", &s, false);
    assert_eq!(a.read_all("net", "", false), b"1400\n");
    a.wait("net", "");

    // Bad requests.
    let mut bad = Interface::new();
    bad.hw_addr = "02:00:00:00:00:99".into();
    let mut req = UpdateInterfacesRequest::new();
    req.interfaces.push(bad);
    let (code, msg) = status(a.client.update_interfaces(common::ctx(), &req));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("02:00:00:00:00:99"), "{msg}");
    let mut bad = Interface::new();
    bad.hw_addr = mac;
    let mut ip = IpAddress::new();
    ip.address = "300.1.1.1".into();
    bad.addresses.push(ip);
    let mut req = UpdateInterfacesRequest::new();
    req.interfaces.push(bad);
    let (code, msg) = status(a.client.update_interfaces(common::ctx(), &req));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("300.1.1.1"), "{msg}");
    let mut r = Route::new();
    r.destination = "10.0.0.0".into();
    r.device = "eth7".into();
    let mut req = UpdateRoutesRequest::new();
    req.routes.push(r);
    let (code, msg) = status(a.client.update_routes(common::ctx(), &req));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("CIDR"), "{msg}");
}
