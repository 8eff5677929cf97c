//! What the guest gets of a container's OCI spec: namespaces checked against the pod, bind
//! mounts rewritten to the guest paths where the agent finds their sources (the pod's /dev/shm,
//! the host files shared with the pod).

use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::error::{Result, ShimError};

/// containerd's CRI plugin: the type of a container (`sandbox` or `container`).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// containerd's CRI plugin: the pod sandbox a container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Where a container stands in its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role<'a> {
    /// The pod's sandbox container (or a `ctr run` container, its own pod).
    Sandbox,
    /// Another container of pod `sandbox_id`, whose sandbox container has guest pid
    /// `sandbox_pid`; `others` are the pids of the pod's other containers.
    Member {
        /// The pod.
        sandbox_id: &'a str,
        /// Guest pid of the sandbox container's init (what containerd put in the paths).
        sandbox_pid: u32,
        /// Pids of the pod's other containers with their ids.
        others: &'a [(u32, String)],
    },
}

/// The sandbox id a spec's annotations name, if the container belongs to a CRI pod.
pub fn sandbox_of(spec: &Spec) -> Option<String> {
    spec.annotations().as_ref()?.get(SANDBOX_ID).filter(|s| !s.is_empty()).cloned()
}

/// Checks the spec's namespaces for a container in `role`: user namespaces are refused; a
/// member's namespace given by path must be the pod sandbox's (containerd writes
/// `/proc/<sandbox pid>/ns/<type>`), since the agent joins the pod's namespace for it.
pub fn check_namespaces(spec: &Spec, role: Role<'_>) -> Result<()> {
    for ns in spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()).into_iter().flatten() {
        let typ = ns.typ();
        if typ == LinuxNamespaceType::User {
            return Err(ShimError::invalid("linux.namespaces", "user namespaces are not supported: the VM is the container's isolation boundary"));
        }
        let (Some(path), Role::Member { sandbox_id, sandbox_pid, others }) = (ns.path(), role) else { continue };
        let p = path.to_string_lossy();
        let pid = p.strip_prefix("/proc/").and_then(|r| r.split('/').next()).and_then(|n| n.parse::<u32>().ok());
        match pid {
            Some(pid) if pid == sandbox_pid => {}
            Some(pid) => {
                if let Some((_, other)) = others.iter().find(|(p, _)| *p == pid) {
                    return Err(ShimError::invalid(
                        "linux.namespaces",
                        format!("{typ:?} namespace {p}: joining another container's namespace (namespace mode TARGET, container {other}) is not supported; only the pod's"),
                    ));
                }
                return Err(ShimError::invalid("linux.namespaces", format!("{typ:?} namespace {p} is not a namespace of pod {sandbox_id}")));
            }
            // A network namespace by name (e.g. /var/run/netns/cni-…) is the pod's network.
            None if typ == LinuxNamespaceType::Network => {}
            None => return Err(ShimError::invalid("linux.namespaces", format!("{typ:?} namespace {p} is not a namespace of pod {sandbox_id}"))),
        }
    }
    Ok(())
}

/// Whether `m` is a bind mount.
pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind") || m.options().iter().flatten().any(|o| o == "bind" || o == "rbind")
}

/// Whether `m` is containerd CRI's bind of the pod's shm (`…/sandboxes/<sandbox_id>/shm` on
/// /dev/shm), which the guest serves from the pod's own tmpfs.
pub fn is_pod_shm(m: &Mount, sandbox_id: &str) -> bool {
    let Some(src) = m.source().as_deref() else { return false };
    m.destination() == Path::new("/dev/shm")
        && src.file_name().is_some_and(|n| n == "shm")
        && src.parent().and_then(Path::file_name).is_some_and(|n| n == sandbox_id)
}

/// Files below /proc a container may bind over, as runc allows (lxcfs-style views).
const PROC_BINDABLE: [&str; 10] = [
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
];

/// Refuses a bind mount over a path the container may not shadow: its root, and /proc (but
/// for the files runc allows).
fn check_destination(m: &Mount) -> Result<()> {
    let dst = m.destination();
    let norm: std::path::PathBuf = dst.components().collect();
    let bad = norm == Path::new("/") || (norm.starts_with("/proc") && !PROC_BINDABLE.iter().any(|p| norm == Path::new(p)));
    if bad {
        return Err(ShimError::invalid("mounts", format!("bind mount on {}: the container may not shadow that path", dst.display())));
    }
    Ok(())
}

/// The name of a Kubernetes emptyDir volume whose host directory is `src`
/// (`…/volumes/kubernetes.io~empty-dir/<name>`), if it is one.
pub fn empty_dir_name(src: &Path) -> Option<String> {
    let name = src.file_name()?.to_str()?;
    let kind = src.parent()?.file_name()?;
    (kind == "kubernetes.io~empty-dir" && crate::state::validate_id(name).is_ok()).then(|| name.to_string())
}

/// The spec for the guest: each bind mount gets the guest path of its source: the pod's shm
/// tmpfs, a guest-local directory for a Kubernetes emptyDir (the pod's containers share it;
/// it lives in guest memory, never on the host), or what `share(mount)` made of a host path.
/// `share` refuses what it cannot share.
pub fn guest_spec(spec: &Spec, sandbox_id: &str, share: &mut dyn FnMut(&Mount) -> Result<String>) -> Result<Spec> {
    let mut out = spec.clone();
    let mut mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let mut m = m.clone();
        if is_bind(&m) {
            check_destination(&m)?;
            let empty_dir = m.source().as_deref().and_then(empty_dir_name);
            let guest = if is_pod_shm(&m, sandbox_id) {
                husk_protocol::POD_SHM_DIR.to_string()
            } else if let Some(name) = empty_dir {
                format!("{}/{name}", husk_protocol::POD_EMPTY_DIR)
            } else {
                share(&m)?
            };
            m.set_source(Some(guest.into()));
        }
        mounts.push(m);
    }
    out.set_mounts(Some(mounts));
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn member_namespaces_must_be_the_pods() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"mount"},{"type":"network","path":"/proc/42/ns/net"},{"type":"ipc","path":"/proc/42/ns/ipc"}]}}"#,
        );
        let others = [(57, "web".to_string())];
        let member = |pid| Role::Member { sandbox_id: "pod1", sandbox_pid: pid, others: &others };
        check_namespaces(&s, member(42)).unwrap();
        let e = check_namespaces(&s, member(7)).unwrap_err().to_string();
        assert!(e.contains("/proc/42/ns/net") && e.contains("pod1"), "{e}");
        let t = spec(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid","path":"/proc/57/ns/pid"}]}}"#);
        let e = check_namespaces(&t, member(42)).unwrap_err().to_string();
        assert!(e.contains("TARGET") && e.contains("web"), "{e}");
        let u = spec(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"user"}]}}"#);
        let e = check_namespaces(&u, Role::Sandbox).unwrap_err().to_string();
        assert!(e.contains("user namespaces are not supported"), "{e}");
        let n = spec(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network","path":"/var/run/netns/cni-1"}]}}"#);
        check_namespaces(&n, Role::Sandbox).unwrap();
        check_namespaces(&n, member(42)).unwrap();
    }

    #[test]
    fn the_pod_shm_goes_to_the_guest_tmpfs_and_other_binds_are_shared() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","mounts":[
            {"destination":"/proc","type":"proc","source":"proc"},
            {"destination":"/dev/shm","type":"bind","source":"/run/containerd/io.containerd.grpc.v1.cri/sandboxes/pod1/shm","options":["rbind","rw"]},
            {"destination":"/etc/hosts","type":"bind","source":"/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/pod1/hosts","options":["rbind","ro"]}]}"#,
        );
        let mut seen = Vec::new();
        let g = guest_spec(&s, "pod1", &mut |m| {
            seen.push(m.source().clone().unwrap());
            Ok("/run/husk/pod/shared/1".into())
        })
        .unwrap();
        let m = g.mounts().as_ref().unwrap();
        assert_eq!(m[0].source().as_deref(), Some(Path::new("proc")));
        assert_eq!(m[1].source().as_deref(), Some(Path::new(husk_protocol::POD_SHM_DIR)));
        assert_eq!(m[2].source().as_deref(), Some(Path::new("/run/husk/pod/shared/1")));
        assert_eq!(seen.len(), 1);
        // Another pod's shm is not this pod's.
        assert!(guest_spec(&s, "pod2", &mut |_| Err(ShimError::invalid("bind", "refused"))).is_err());
    }

    #[test]
    fn empty_dirs_stay_in_the_guest_and_some_paths_cannot_be_shadowed() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","mounts":[
            {"destination":"/cache","type":"bind","source":"/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache","options":["rbind"]},
            {"destination":"/proc/meminfo","type":"bind","source":"/var/lib/lxcfs/proc/meminfo","options":["rbind"]}]}"#,
        );
        let mut shared = 0;
        let g = guest_spec(&s, "p", &mut |_| {
            shared += 1;
            Ok("/run/husk/pod/shared/0".into())
        })
        .unwrap();
        let m = g.mounts().as_ref().unwrap();
        assert_eq!(m[0].source().as_deref(), Some(Path::new("/run/husk/pod/emptydir/cache")));
        assert_eq!(shared, 1, "only the lxcfs file is a host share");
        for dst in ["/", "/proc", "/proc/self", "/proc/../proc/sys"] {
            let bad = spec(&format!(r#"{{"ociVersion":"1.0.2","mounts":[{{"destination":"{dst}","type":"bind","source":"/x","options":["rbind"]}}]}}"#));
            let e = guest_spec(&bad, "p", &mut |_| Ok("/g".into())).unwrap_err().to_string();
            assert!(e.contains("may not shadow"), "{dst}: {e}");
        }
        assert_eq!(empty_dir_name(Path::new("/v/kubernetes.io~empty-dir/../x")), None);
    }
}
