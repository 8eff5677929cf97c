//! OCI spec fields husk cannot honour in its guest ([`UNSUPPORTED_OCI_FIELDS`]: AppArmor and
//! SELinux labels, user namespaces and id mappings, Intel RDT). A spec that sets one is refused
//! before anything is built, naming the field, unless the configuration's
//! `[shim] ignore_unsupported` lists it: then the container runs without it and the shim logs
//! a warning. The shim checks, not the agent: the error comes before a VM boots, and the
//! configuration that decides stays on the host.
use husk_config::husk::UNSUPPORTED_OCI_FIELDS;
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use crate::error::{Result, ShimError};

/// The unsupported fields a process sets (also those of ExecProcess).
pub fn process_fields(p: &Process) -> Vec<&'static str> {
    let mut found = Vec::new();
    if p.apparmor_profile().as_deref().is_some_and(|s| !s.is_empty()) {
        found.push("process.apparmorProfile");
    }
    if p.selinux_label().as_deref().is_some_and(|s| !s.is_empty()) {
        found.push("process.selinuxLabel");
    }
    found
}

/// The unsupported fields a container's spec sets.
pub fn spec_fields(spec: &Spec) -> Vec<&'static str> {
    let mut found = spec.process().as_ref().map(process_fields).unwrap_or_default();
    if let Some(l) = spec.linux() {
        if l.mount_label().as_deref().is_some_and(|s| !s.is_empty()) {
            found.push("linux.mountLabel");
        }
        if l.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()) {
            found.push("linux.uidMappings");
        }
        if l.gid_mappings().as_ref().is_some_and(|m| !m.is_empty()) {
            found.push("linux.gidMappings");
        }
        if l.namespaces().iter().flatten().any(|n| n.typ() == LinuxNamespaceType::User) {
            found.push("linux.namespaces.user");
        }
        if l.intel_rdt().is_some() {
            found.push("linux.intelRdt");
        }
    }
    debug_assert!(found.iter().all(|f| UNSUPPORTED_OCI_FIELDS.contains(f)));
    found
}

/// Refuses `found` fields `ignore` does not list; logs a warning for each ignored one.
/// `what` names the container or exec in messages.
pub fn check(what: &str, found: &[&'static str], ignore: &[String]) -> Result<()> {
    let refused: Vec<&str> = found.iter().copied().filter(|f| !ignore.iter().any(|i| i == f)).collect();
    if !refused.is_empty() {
        return Err(ShimError::invalid(
            format!("{what}: {}", refused.join(", ")),
            "husk cannot honour this in its guest; list it in [shim] ignore_unsupported of husk's configuration to run without it",
        ));
    }
    for f in found {
        log::warn!("{what}: ignoring {f} (listed in [shim] ignore_unsupported): husk's guest cannot honour it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        let mut s = serde_json::json!({"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"}});
        json_merge(&mut s, json);
        serde_json::from_value(s).expect("test spec")
    }

    fn json_merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    json_merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn every_unsupported_field_is_found_and_named() {
        assert!(spec_fields(&spec(serde_json::json!({}))).is_empty());
        let all = spec(serde_json::json!({
            "process": {"apparmorProfile": "cri-containerd.apparmor.d", "selinuxLabel": "system_u:system_r:container_t:s0"},
            "linux": {"mountLabel": "system_u:object_r:container_file_t:s0",
                "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}], "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
                "namespaces": [{"type": "user"}, {"type": "pid"}], "intelRdt": {"closID": "x"}}
        }));
        assert_eq!(spec_fields(&all), UNSUPPORTED_OCI_FIELDS);
        let e = check("container c1", &spec_fields(&all), &["process.apparmorProfile".into()]).expect_err("refused").to_string();
        assert!(e.contains("container c1") && e.contains("process.selinuxLabel") && e.contains("linux.intelRdt"), "{e}");
        assert!(!e.contains("apparmorProfile"), "the ignored field is not named: {e}");
        // Empty strings are unset, as runc reads them.
        assert!(spec_fields(&spec(serde_json::json!({"process": {"apparmorProfile": ""}}))).is_empty());
    }

    #[test]
    fn ignored_fields_pass() {
        let s = spec(serde_json::json!({"process": {"apparmorProfile": "cri-containerd.apparmor.d"}}));
        assert_eq!(spec_fields(&s), ["process.apparmorProfile"]);
        check("container c1", &spec_fields(&s), &["process.apparmorProfile".into()]).expect("ignored");
        let e = check("container c1", &spec_fields(&s), &[]).expect_err("refused").to_string();
        assert!(e.contains("process.apparmorProfile") && e.contains("ignore_unsupported"), "{e}");
    }
}
