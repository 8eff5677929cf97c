//! Host tests with real namespaces (`ip netns`, veth pairs; they need root): a "node"
//! namespace holds one end of a veth, a "pod" namespace the other end as CNI would leave it.
//! The test plays the guest on the tap's descriptor.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A node namespace and a pod namespace joined by a veth (`eth0` in the pod, `veth0` on the
/// node, 10.99.N.1/24 on the node side); removed on drop.
struct Pair {
    node: String,
    pod: String,
}

impl Pair {
    fn new(tag: &str, n: u8) -> Pair {
        let p = Pair::empty(tag);
        p.plug("veth0", "eth0", n);
        p
    }

    /// The two namespaces, not joined yet (before CNI ran).
    fn empty(tag: &str) -> Pair {
        let base = format!("husk-t{}-{tag}", std::process::id());
        let p = Pair { node: format!("{base}-n"), pod: format!("{base}-p") };
        ip(&["netns", "add", &p.node]);
        ip(&["netns", "add", &p.pod]);
        p
    }

    /// A veth from `node_end` in the node namespace to `pod_end` in the pod's, both up.
    fn plug(&self, node_end: &str, pod_end: &str, n: u8) {
        ip(&["-n", &self.node, "link", "add", node_end, "type", "veth", "peer", "name", pod_end, "netns", &self.pod]);
        ip(&["-n", &self.node, "addr", "add", &format!("10.99.{n}.1/24"), "dev", node_end]);
        ip(&["-n", &self.node, "link", "set", node_end, "up"]);
        ip(&["-n", &self.pod, "link", "set", pod_end, "up"]);
    }

    /// What CNI does: an address, an MTU, a default route and one more.
    fn configure(&self, n: u8) {
        ip(&["-n", &self.pod, "link", "set", "eth0", "mtu", "1400"]);
        ip(&["-n", &self.pod, "addr", "add", &format!("10.99.{n}.2/24"), "dev", "eth0"]);
        ip(&["-n", &self.pod, "addr", "add", &format!("fd00:99:{n}::2/64"), "dev", "eth0", "nodad"]);
        ip(&["-n", &self.pod, "route", "add", "default", "via", &format!("10.99.{n}.1")]);
        ip(&["-n", &self.pod, "route", "add", "10.98.0.0/16", "via", &format!("10.99.{n}.1"), "metric", "5"]);
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.pod))
    }

    fn pod_sh(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} {cmd}", self.pod))
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.node]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.pod]).status();
    }
}

fn mac_of(pair: &Pair) -> [u8; 6] {
    let text = pair.pod_sh("cat /sys/class/net/eth0/address");
    let mut mac = [0u8; 6];
    for (b, h) in mac.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(h, 16).unwrap();
    }
    mac
}

/// The virtio-net header on the shim's descriptor: the kernel's default size (husk-vmm sets 12).
const HDR: usize = 10;

/// Reads frames from the tap (virtio-net header first) until `want` accepts one's Ethernet
/// payload, or fails after a few seconds.
fn read_frame(tap: &mut std::fs::File, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        match tap.read(&mut buf) {
            Ok(n) if n > HDR && want(&buf[HDR..n]) => return buf[HDR..n].to_vec(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("reading the tap: {e}"),
        }
    }
    panic!("no matching frame on the tap within 5 s");
}

fn nonblocking(fd: OwnedFd) -> std::fs::File {
    let f = std::fs::File::from(fd);
    let flags = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
    f
}

#[test]
fn the_pod_interface_reaches_the_tap_both_ways_and_teardown_removes_what_was_made() {
    let pair = Pair::new("ok", 1);
    pair.configure(1);
    let mac = mac_of(&pair);
    let (net, fds) = PodNetwork::setup(&pair.path(), false).unwrap();

    // What the guest gets.
    let e = &net.endpoints()[0];
    assert_eq!(
        (net.endpoints().len(), e.tap.name.as_str(), e.iface.link.name.as_str(), e.iface.link.mtu, e.iface.link.kind.as_str()),
        (1, "tap0_husk", "eth0", 1400, "veth")
    );
    assert!(net.spares().is_empty());
    let ifs = guest::interfaces(net.endpoints());
    assert_eq!((ifs[0].hw_addr.as_str(), ifs[0].new_hw_addr.as_str()), (scan::mac_string(&mac).as_str(), ""));
    assert_eq!(ifs[0].mtu, 1400);
    let addrs: Vec<String> = ifs[0].addresses.iter().map(|a| format!("{}/{}", a.address, a.prefix_len)).collect();
    assert_eq!(addrs, ["10.99.1.2/24", "fd00:99:1::2/64"], "link-local addresses stay out");
    let routes: Vec<String> = guest::routes(net.endpoints()).iter().map(|r| format!("{} {} {} {}", r.destination, r.gateway, r.device, r.metric)).collect();
    assert!(routes.contains(&"default 10.99.1.1 eth0 0".to_string()) && routes.contains(&"10.98.0.0/16 10.99.1.1 eth0 5".to_string()), "{routes:?}");
    assert!(!routes.iter().any(|r| r.starts_with("10.99.1.0/24") || r.starts_with("fe80")), "kernel routes stay out: {routes:?}");
    let raw: Vec<std::os::fd::RawFd> = fds.0.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    let cfgs = net.net_configs(&raw);
    assert_eq!((cfgs[0].tap.as_str(), cfgs[0].mac, cfgs[0].fd), ("tap0_husk", Some(MacAddr(mac)), Some(raw[0])));

    // What was made: the tap (MTU of eth0, up) and a redirect each way.
    let link = pair.pod_sh("ip link show tap0_husk");
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    let f = pair.pod_sh("tc filter show dev eth0 ingress");
    assert!(f.contains("mirred") && f.contains("Redirect to device tap0_husk"), "{f}");
    let f = pair.pod_sh("tc filter show dev tap0_husk ingress");
    assert!(f.contains("Redirect to device eth0"), "{f}");
    assert!(!pair.pod_sh("ip -6 addr show dev tap0_husk").contains("fe80"), "the namespace's own IPv6 stays off the tap");

    // The guest side: the node's ARP request for the pod IP arrives on the tap; the answer
    // written to the tap reaches the node, whose UDP datagram then follows.
    let mut tap = nonblocking(fds.0.into_iter().next().unwrap());
    let node_path = PathBuf::from(format!("/var/run/netns/{}", pair.node));
    let node = netns::open(&node_path).unwrap();
    let udp = netns::run(&node, &node_path, || Ok(std::net::UdpSocket::bind("10.99.1.1:0").unwrap())).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopper = stop.clone();
    let sender = std::thread::spawn(move || {
        while !stopper.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = udp.send_to(b"to the guest", "10.99.1.2:9");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let arp = read_frame(&mut tap, |f| f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[38..42] == [10, 99, 1, 2]);
    let mut reply = vec![0u8; HDR];
    reply.extend_from_slice(&arp[6..12]); // to the asker
    reply.extend_from_slice(&mac);
    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&mac);
    reply.extend_from_slice(&[10, 99, 1, 2]);
    reply.extend_from_slice(&arp[22..32]); // sender MAC and IP of the request
    tap.write_all(&reply).unwrap();
    let udp = read_frame(&mut tap, |f| f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[23] == 17 && f[30..34] == [10, 99, 1, 2]);
    assert!(udp.ends_with(b"to the guest"));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.join().unwrap();
    let neigh = sh(&format!("ip -n {} neigh show 10.99.1.2", pair.node));
    assert!(neigh.contains(&scan::mac_string(&mac)), "the node learned the pod's MAC through the tap: {neigh}");

    // Teardown while the tap is still open removes it too; nothing of husk's stays.
    net.teardown().unwrap();
    assert!(!pair.pod_sh("tc qdisc show dev eth0").contains("ingress"));
    assert!(pair.pod_sh("ip link show tap0_husk").contains("does not exist"));
    drop(tap);
    assert!(pair.pod_sh("ip -o link show").lines().count() == 2, "lo and eth0 only: {}", pair.pod_sh("ip -o link show"));
    assert!(pair.pod_sh("ip addr show dev eth0").contains("10.99.1.2/24"), "eth0 keeps its addresses");
}

#[test]
fn a_tap_goes_with_its_last_descriptor_and_teardown_still_cleans_the_interface() {
    let pair = Pair::new("gone", 2);
    pair.configure(2);
    let (net, fds) = PodNetwork::setup(&pair.path(), false).unwrap();
    // The VMM died: the last descriptor closed.
    drop(fds);
    assert!(pair.pod_sh("ip link show tap0_husk").contains("does not exist"), "a VM that dies leaves no tap");
    assert!(pair.pod_sh("tc qdisc show dev eth0").contains("ingress"));
    net.teardown().unwrap();
    assert!(!pair.pod_sh("tc qdisc show dev eth0").contains("ingress"));
    // Twice is harmless: nothing of husk's is left to remove.
    net.teardown().unwrap();
}

#[test]
fn teardown_leaves_an_ingress_qdisc_husk_did_not_make() {
    let pair = Pair::new("other", 3);
    pair.configure(3);
    let (net, fds) = PodNetwork::setup(&pair.path(), false).unwrap();
    drop(fds);
    // Someone replaced husk's qdisc with their own.
    pair.pod_sh("tc qdisc del dev eth0 ingress");
    pair.pod_sh("tc qdisc add dev eth0 handle ffff: ingress");
    net.teardown().unwrap();
    assert!(pair.pod_sh("tc qdisc show dev eth0").contains("ingress"), "not husk's: left alone");
}

#[test]
fn bad_namespaces_and_interfaces_are_named_and_leave_nothing() {
    let e = PodNetwork::setup(std::path::Path::new("/var/run/netns/husk-no-such-ns"), false).unwrap_err().to_string();
    assert!(e.contains("husk-no-such-ns"), "{e}");
    let e = PodNetwork::setup(std::path::Path::new("/proc/self/status"), false).unwrap_err().to_string();
    assert!(e.contains("is not a network namespace"), "{e}");

    // An interface without an address.
    let pair = Pair::new("noaddr", 4);
    let e = PodNetwork::setup(&pair.path(), false).unwrap_err().to_string();
    assert!(e.contains("eth0") && e.contains("no IP address") && e.contains(&pair.pod), "{e}");

    // An up interface of a kind a tc redirect cannot carry; down ones are skipped.
    pair.configure(4);
    ip(&["-n", &pair.pod, "link", "add", "br9", "type", "bridge"]);
    PodNetwork::setup(&pair.path(), false).map(|(n, _)| n.teardown().unwrap()).unwrap();
    ip(&["-n", &pair.pod, "addr", "add", "10.97.0.1/24", "dev", "br9"]);
    ip(&["-n", &pair.pod, "link", "set", "br9", "up"]);
    let e = PodNetwork::setup(&pair.path(), false).unwrap_err().to_string();
    assert!(e.contains("br9") && e.contains("type bridge"), "{e}");
    ip(&["-n", &pair.pod, "link", "del", "br9"]);

    // A tap name that is taken.
    ip(&["-n", &pair.pod, "tuntap", "add", "dev", "tap0_husk", "mode", "tap"]);
    let e = PodNetwork::setup(&pair.path(), false).unwrap_err().to_string();
    assert!(e.contains("tap0_husk") && e.contains("exists"), "{e}");
    assert!(!pair.pod_sh("tc qdisc show dev eth0").contains("ingress"));
    ip(&["-n", &pair.pod, "link", "del", "tap0_husk"]);

    // An ingress qdisc that is not husk's: refused, kept, and the new tap is gone again.
    pair.pod_sh("tc qdisc add dev eth0 handle ffff: ingress");
    let e = PodNetwork::setup(&pair.path(), false).unwrap_err().to_string();
    assert!(e.contains("eth0") && e.contains("already has an ingress qdisc"), "{e}");
    assert!(pair.pod_sh("tc qdisc show dev eth0").contains("ingress"));
    assert!(pair.pod_sh("ip link show tap0_husk").contains("does not exist"), "{}", pair.pod_sh("ip link"));
}

#[test]
fn an_interface_made_after_the_boot_gets_the_spare_tap() {
    // ctr run --cni: the namespace is empty at Create; CNI fills it before Start.
    let pair = Pair::empty("late");
    let (mut net, fds) = PodNetwork::setup(&pair.path(), true).unwrap();
    assert!(net.endpoints().is_empty());
    let spare = net.spares()[0].clone();
    assert_eq!((spare.name.as_str(), spare.guest_mac[0] & 3), ("tap0_husk", 2), "a locally administered unicast placeholder");
    assert_eq!(net.net_configs(&[3])[0].mac, Some(MacAddr(spare.guest_mac)));
    assert!(net.attach_late().unwrap().is_empty(), "nothing new yet");

    pair.plug("veth0", "eth0", 5);
    pair.configure(5);
    let mac = mac_of(&pair);
    let new = net.attach_late().unwrap();
    assert_eq!((new.len(), new[0].tap.index, new[0].iface.link.name.as_str()), (1, spare.index, "eth0"));
    assert!(net.spares().is_empty() && net.endpoints().len() == 1);
    let ifs = guest::interfaces(&new);
    assert_eq!(
        (ifs[0].hw_addr.clone(), ifs[0].new_hw_addr.clone()),
        (scan::mac_string(&spare.guest_mac), scan::mac_string(&mac)),
        "found by the placeholder, given eth0's MAC"
    );
    assert!(pair.pod_sh("ip link show tap0_husk").contains("mtu 1400"), "the spare takes eth0's MTU");
    assert!(pair.pod_sh("tc filter show dev eth0 ingress").contains("tap0_husk"));
    assert!(net.attach_late().unwrap().is_empty(), "eth0 is not taken twice");

    // More new interfaces than spares: refused by name, nothing connected.
    pair.plug("veth1", "eth1", 6);
    ip(&["-n", &pair.pod, "addr", "add", "10.99.6.2/24", "dev", "eth1"]);
    let e = net.attach_late().unwrap_err().to_string();
    assert!(e.contains("eth1") && e.contains("no spare network device"), "{e}");
    assert!(!pair.pod_sh("tc qdisc show dev eth1").contains("ingress"));

    net.teardown().unwrap();
    drop(fds);
    assert!(!pair.pod_sh("tc qdisc show dev eth0").contains("ingress"));
    assert!(pair.pod_sh("ip link show tap0_husk").contains("does not exist"));
}

#[test]
fn a_spare_tap_nobody_used_is_removed_too() {
    let pair = Pair::empty("unused");
    let (net, fds) = PodNetwork::setup(&pair.path(), true).unwrap();
    assert!(pair.pod_sh("ip link show tap0_husk").contains("tap0_husk"));
    net.teardown().unwrap();
    assert!(pair.pod_sh("ip link show tap0_husk").contains("does not exist"), "deleted even while its descriptor is open");
    drop(fds);
}

#[test]
fn the_holder_lives_in_its_namespace_with_no_descriptor_and_dies_when_stopped() {
    use holder::{HolderNs, NetnsHolder};
    let ino = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let fresh = NetnsHolder::spawn(HolderNs::New).unwrap();
    let pid = fresh.pid();
    assert_ne!(ino(&format!("/proc/{pid}/ns/net")), ino("/proc/self/ns/net"), "a new namespace");
    assert_eq!(std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count(), 0, "it keeps none of the shim's descriptors");
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim(), "husk-netns");
    // A second holder joins the first one's namespace.
    let ns = fresh.open_netns().unwrap();
    let joined = NetnsHolder::spawn(HolderNs::Join(&ns)).unwrap();
    assert_eq!(ino(&format!("/proc/{}/ns/net", joined.pid())), ino(&format!("/proc/{pid}/ns/net")));
    fresh.stop();
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(st.is_empty(), "killed and reaped: {st}");
    drop(joined);
    // Joining something that is not a namespace fails with the kernel's answer.
    let not_ns = std::fs::File::open("/proc/self/status").unwrap();
    let e = NetnsHolder::spawn(HolderNs::Join(&not_ns)).unwrap_err();
    assert!(crate::error::chain(&e).contains("Invalid argument"), "{}", crate::error::chain(&e));
}
