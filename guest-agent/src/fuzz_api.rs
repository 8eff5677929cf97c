//! Entry points for fuzzing what the host sends: OCI specs and processes as JSON bytes, and
//! whole request streams of a hostile shim, run through the same decoding, checks and
//! conversions the agent's requests use, without touching the system. Used by
//! `guest-agent/fuzz` and by deterministic tests below.
use std::path::PathBuf;

use husk_protocol::agent::*;
use oci_spec::runtime::{LinuxResources, Process, Spec};
use protobuf::Message;

use crate::container::mounts::{resolve_in_root, RootPlan};
use crate::container::{parse_json, rootfs, vsock};
use crate::error::check_id;
use crate::process::plan::ExecPlan;
use crate::server::checks;

/// Parses `data` as an OCI spec and builds the container plans; errors are fine, panics not.
pub fn spec(data: &[u8]) {
    let Ok(spec) = parse_json::<Spec>("spec", data) else { return };
    let _ = vsock::allowed(&spec);
    if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        let _ = crate::container::seccomp::SeccompPlan::from_oci(profile);
    }
    if let Some(rules) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()).and_then(|r| r.devices().as_ref()) {
        if let Ok(rules) = crate::container::devices::rules(rules) {
            let _ = crate::container::devices::program(&rules);
        }
    }
    let ns = crate::pod::namespace_plan(&spec, None, None).unwrap_or_default();
    let allowed = [PathBuf::from("/nonexistent/husk-fuzz-root/pod")];
    let _ = RootPlan::from_spec(&spec, PathBuf::from("/nonexistent/husk-fuzz-root"), &ns, &allowed);
    if let Some(p) = spec.process() {
        let _ = ExecPlan::from_oci(p);
    }
    for m in spec.mounts().iter().flatten() {
        let _ = resolve_in_root(std::path::Path::new("/nonexistent/husk-fuzz-root"), &m.destination().to_string_lossy());
    }
}

/// Parses `data` as an OCI process (ExecProcess) and builds its plan.
pub fn process(data: &[u8]) {
    if let Ok(p) = parse_json::<Process>("process", data) {
        let _ = ExecPlan::from_oci(&p);
    }
}

/// Most requests taken from one input.
const MAX_REQUESTS: usize = 64;

/// A hostile shim's request stream: records of `[rpc: u8][length: u16 LE][protobuf payload]`.
/// Each payload is decoded as the request message of that RPC (what ttrpc hands the agent)
/// and goes through every check the agent makes before it touches the system: ids, specs,
/// processes, rootfs and disks, signals, stdio sizes, terminal sizes, cgroup resources,
/// interfaces, routes, hostnames, the clock and entropy of SyncAfterRestore. The requests
/// that only look up a container decode only.
pub fn requests(mut data: &[u8]) {
    for _ in 0..MAX_REQUESTS {
        let [rpc, lo, hi, rest @ ..] = data else { return };
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
        let (payload, next) = rest.split_at(len);
        request(*rpc, payload);
        data = next;
    }
}

fn request(rpc: u8, payload: &[u8]) {
    fn decode<M: Message>(payload: &[u8]) -> Option<M> {
        M::parse_from_bytes(payload).ok()
    }
    match rpc % 17 {
        0 => {
            let Some(r) = decode::<CreateContainerRequest>(payload) else { return };
            let _ = check_id("container id", &r.container_id);
            if !r.sandbox_id.is_empty() {
                let _ = check_id("sandbox id", &r.sandbox_id);
            }
            spec(&r.oci_spec_json);
            if let Some(root) = r.rootfs.as_ref() {
                let _ = rootfs::check_rootfs(root);
            }
            let _ = rootfs::check_disks(&r.disks);
        }
        1 => {
            let Some(r) = decode::<ExecProcessRequest>(payload) else { return };
            let _ = check_id("exec id", &r.exec_id);
            process(&r.process_json);
        }
        2 => {
            let _ = decode::<SignalProcessRequest>(payload).map(|r| checks::signal(r.signal));
        }
        3 => {
            let _ = decode::<ReadStreamRequest>(payload).map(|r| checks::read_limit(r.max_bytes));
        }
        4 => {
            let _ = decode::<WriteStdinRequest>(payload).map(|r| checks::stdin_chunk(r.data.len()));
        }
        5 => {
            let _ = decode::<ResizeTtyRequest>(payload).map(|r| checks::tty_size(r.width, r.height));
        }
        6 => {
            let _ = decode::<UpdateContainerRequest>(payload).map(|r| parse_json::<LinuxResources>("resources_json", &r.resources_json));
        }
        7 => {
            let _ = decode::<UpdateInterfacesRequest>(payload).map(|r| crate::network::plan_interfaces(&r.interfaces));
        }
        8 => {
            let _ = decode::<UpdateRoutesRequest>(payload).map(|r| crate::network::plan_routes(&r.routes));
        }
        9 => {
            let _ = decode::<SetHostnameRequest>(payload).map(|r| checks::hostname(&r.hostname));
        }
        10 => {
            let _ = decode::<StartContainerRequest>(payload);
        }
        11 => {
            let _ = decode::<WaitProcessRequest>(payload);
        }
        12 => {
            let _ = decode::<RemoveContainerRequest>(payload);
        }
        13 => {
            let _ = decode::<StatsRequest>(payload);
        }
        14 => {
            let _ = decode::<ListProcessesRequest>(payload);
        }
        15 => {
            let Some(r) = decode::<SyncAfterRestoreRequest>(payload) else { return };
            let _ = checks::restore_realtime(r.realtime_ns);
            let _ = checks::restore_entropy(r.entropy.len());
        }
        _ => {
            let _ = decode::<CloseStdinRequest>(payload);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Calls `f` on 20000 copies of `base` with 1 to 8 bytes overwritten (xorshift from `seed`).
    fn for_mutations(base: &[u8], mut seed: u64, f: impl Fn(&[u8])) {
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut data = base.to_vec();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % data.len();
                data[i] = next() as u8;
            }
            f(&data);
        }
    }

    /// Deterministic pseudo-random mutations of a valid spec go through without panics.
    #[test]
    fn mutated_specs_do_not_panic() {
        let base = br#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/",
            "rlimits":[{"type":"RLIMIT_NOFILE","hard":1,"soft":1}],"capabilities":{"bounding":["CAP_KILL"]}},
            "mounts":[{"destination":"/proc","type":"proc"},{"destination":"/a/../b","type":"bind","source":"/x","options":["rbind","ro","mode=1"]}],
            "linux":{"namespaces":[{"type":"mount"},{"type":"pid"}],"sysctl":{"net.ipv4.ip_forward":"1"},
            "maskedPaths":["/proc/kcore"],"resources":{"memory":{"limit":1},"devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":-1,"access":"r"}]},
            "devices":[{"path":"/dev/x","type":"c","major":1,"minor":3,"fileMode":438}],
            "seccomp":{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,"flags":["SECCOMP_FILTER_FLAG_LOG"],"syscalls":[{"names":["read","clone"],"action":"SCMP_ACT_ALLOW",
              "args":[{"index":0,"value":2,"valueTwo":2,"op":"SCMP_CMP_MASKED_EQ"},{"index":1,"value":7,"op":"SCMP_CMP_GT"}]},{"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}}}"#;
        for_mutations(base, 0x9e37_79b9_7f4a_7c15, |data| {
            spec(data);
            process(data);
        });
        let parsed = parse_json::<Spec>("spec", base).unwrap();
        let profile = parsed.linux().as_ref().and_then(|l| l.seccomp().as_ref()).unwrap();
        assert_eq!(crate::container::seccomp::SeccompPlan::from_oci(profile).unwrap().filter_count(), 2, "the base spec reaches the seccomp translation");
        spec(base);
    }

    /// A request stream from valid messages of every RPC, then deterministic mutations of it.
    #[test]
    fn mutated_request_streams_do_not_panic() {
        let mut create = CreateContainerRequest::new();
        create.container_id = "c1".into();
        create.oci_spec_json = br#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"}}"#.to_vec();
        let mut root = Rootfs::new();
        root.disk_serial = "rootfs".into();
        root.fstype = "ext4".into();
        create.rootfs = Some(root).into();
        let mut iface = UpdateInterfacesRequest::new();
        let mut i = Interface::new();
        i.hw_addr = "02:00:00:00:00:01".into();
        iface.interfaces.push(i);
        let mut route = UpdateRoutesRequest::new();
        let mut r = Route::new();
        r.destination = "default".into();
        r.gateway = "10.0.0.1".into();
        route.routes.push(r);
        let mut signal = SignalProcessRequest::new();
        signal.signal = 9;
        let mut sync = SyncAfterRestoreRequest::new();
        sync.realtime_ns = 1_796_536_642_000_000_000;
        sync.entropy = vec![0x5a; 64];
        let msgs: Vec<(u8, Vec<u8>)> = vec![
            (0, create.write_to_bytes().unwrap()),
            (2, signal.write_to_bytes().unwrap()),
            (7, iface.write_to_bytes().unwrap()),
            (8, route.write_to_bytes().unwrap()),
            (9, b"\x0a\x03pod".to_vec()),
            (15, sync.write_to_bytes().unwrap()),
        ];
        let mut base = Vec::new();
        for (rpc, m) in &msgs {
            base.push(*rpc);
            base.extend_from_slice(&(m.len() as u16).to_le_bytes());
            base.extend_from_slice(m);
        }
        requests(&base);
        for_mutations(&base, 0x2545_f491_4f6c_dd1d, requests);
    }
}
