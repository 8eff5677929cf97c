//! Entry points for fuzzing what the host sends: OCI specs and processes as JSON bytes, run
//! through the same checks and conversions CreateContainer and ExecProcess use, without
//! touching the system. Used by `guest-agent/fuzz` and by a deterministic test below.
use std::path::PathBuf;

use oci_spec::runtime::{Process, Spec};

use crate::container::mounts::{resolve_in_root, RootPlan};
use crate::container::parse_json;
use crate::process::plan::ExecPlan;

/// Parses `data` as an OCI spec and builds the container plans; errors are fine, panics not.
pub fn spec(data: &[u8]) {
    let Ok(spec) = parse_json::<Spec>("spec", data) else { return };
    let ns = crate::pod::namespace_plan(&spec, None).unwrap_or_default();
    let allowed = [PathBuf::from("/nonexistent/husk-fuzz-root/pod")];
    let _ = RootPlan::from_spec(&spec, PathBuf::from("/nonexistent/husk-fuzz-root"), &ns, &allowed);
    if let Some(p) = spec.process() {
        let _ = ExecPlan::from_oci(p);
    }
    for m in spec.mounts().iter().flatten() {
        let _ = resolve_in_root(std::path::Path::new("/nonexistent/husk-fuzz-root"),
                                &m.destination().to_string_lossy());
    }
}

/// Parses `data` as an OCI process (ExecProcess) and builds its plan.
pub fn process(data: &[u8]) {
    if let Ok(p) = parse_json::<Process>("process", data) {
        let _ = ExecPlan::from_oci(&p);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random mutations of a valid spec go through without panics.
    #[test]
    fn mutated_specs_do_not_panic() {
        let base = br#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/",
            "rlimits":[{"type":"RLIMIT_NOFILE","hard":1,"soft":1}],"capabilities":{"bounding":["CAP_KILL"]}},
            "mounts":[{"destination":"/proc","type":"proc"},{"destination":"/a/../b","type":"bind","source":"/x","options":["rbind","ro","mode=1"]}],
            "linux":{"namespaces":[{"type":"mount"},{"type":"pid"}],"sysctl":{"net.ipv4.ip_forward":"1"},
            "maskedPaths":["/proc/kcore"],"resources":{"memory":{"limit":1}}}}"#;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
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
            spec(&data);
            process(&data);
        }
        spec(base);
    }
}
