//! Which namespaces a new container creates and which it joins (see CreateContainer in
//! agent.proto): the pod's sandbox container (or a container outside any pod) creates one for
//! every entry of `linux.namespaces`; another container of the pod joins the pod's namespace
//! for an entry with a `path` and creates one for an entry without.
use std::os::fd::OwnedFd;

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::spare::NamespaceSet;
use super::Pod;
use crate::error::{AgentError, Result};

/// The namespaces of a container to be created.
#[derive(Debug)]
pub struct NsPlan {
    /// Namespaces to create (CLONE_NEWPID included: the forking thread unshares it).
    pub new: CloneFlags,
    /// The pod's pid namespace, when the container shares it (joined by the forking thread).
    pub join_pid: Option<OwnedFd>,
    /// Other namespaces of the pod to join, in order, before the new ones are created.
    pub join: Vec<(OwnedFd, CloneFlags)>,
    /// The kinds among `join` that were made ahead for this container: its own, as new ones.
    pub ahead: CloneFlags,
}

impl Default for NsPlan {
    fn default() -> Self {
        NsPlan { new: CloneFlags::empty(), join_pid: None, join: Vec::new(), ahead: CloneFlags::empty() }
    }
}

impl NsPlan {
    /// Namespaces that are the container's own (created for it now or made ahead for it), not
    /// the pod's: the spec's hostname applies in its own UTS namespace only.
    pub fn fresh(&self) -> CloneFlags {
        self.new | self.ahead
    }

    /// Namespaces of the container that are not the agent's: new ones and the pod's.
    pub fn own(&self) -> CloneFlags {
        let mut f = self.new;
        for (_, flag) in &self.join {
            f |= *flag;
        }
        if self.join_pid.is_some() {
            f |= CloneFlags::CLONE_NEWPID;
        }
        f
    }
}

fn flag_of(typ: LinuxNamespaceType) -> Result<CloneFlags> {
    Ok(match typ {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::User => return Err(AgentError::InvalidArgument("user namespaces are not supported (the VM is the isolation boundary)".into())),
        other => return Err(AgentError::InvalidArgument(format!("namespace type {other:?} is not supported"))),
    })
}

/// The namespace plan of `spec` for a container of `pod` (None: the pod's sandbox container, or
/// a container outside any pod). Such a container joins the namespaces of `ahead` (made ahead
/// for it, see [`super::spare`]) where it would create new ones of their kinds.
pub fn namespace_plan(spec: &Spec, pod: Option<&Pod>, mut ahead: Option<NamespaceSet>) -> Result<NsPlan> {
    let mut plan = NsPlan::default();
    let mut seen = CloneFlags::empty();
    for ns in spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()).into_iter().flatten() {
        let flag = flag_of(ns.typ())?;
        if seen.contains(flag) {
            return Err(AgentError::InvalidArgument(format!("namespace {:?} is listed twice", ns.typ())));
        }
        seen |= flag;
        match (ns.path().is_some(), pod) {
            (true, Some(pod)) => {
                if flag == CloneFlags::CLONE_NEWNS {
                    return Err(AgentError::InvalidArgument("a mount namespace given by path cannot be joined: every container has its own".into()));
                }
                let fd = pod.namespace(flag)?;
                if flag == CloneFlags::CLONE_NEWPID {
                    plan.join_pid = Some(fd);
                } else {
                    plan.join.push((fd, flag));
                }
            }
            (_, Some(_)) => plan.new |= flag,
            (_, None) => match ahead.as_mut().and_then(|a| a.take(flag)) {
                Some(fd) => {
                    plan.join.push((fd, flag));
                    plan.ahead |= flag;
                }
                None => plan.new |= flag,
            },
        }
    }
    if !seen.contains(CloneFlags::CLONE_NEWNS) {
        return Err(AgentError::InvalidArgument("linux.namespaces must contain a new mount namespace".into()));
    }
    Ok(plan)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(ns: &str) -> Spec {
        serde_json::from_str(&format!(r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":{ns}}}}}"#)).unwrap()
    }

    #[test]
    fn sandbox_creates_every_namespace_even_with_paths() {
        let s = spec(r#"[{"type":"mount"},{"type":"network","path":"/var/run/netns/cni-1"},{"type":"pid"},{"type":"ipc"}]"#);
        let p = namespace_plan(&s, None, None).unwrap();
        assert_eq!(p.new, CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC);
        assert!(p.join.is_empty() && p.join_pid.is_none());
        assert_eq!(p.own(), p.new);
    }

    #[test]
    fn a_sandbox_joins_the_namespaces_made_ahead_and_creates_the_others() {
        let s = spec(r#"[{"type":"mount"},{"type":"network"},{"type":"pid"},{"type":"ipc"}]"#);
        let own = |n: &str| OwnedFd::from(std::fs::File::open(format!("/proc/self/ns/{n}")).unwrap());
        let ahead = NamespaceSet::from_fds(vec![(CloneFlags::CLONE_NEWNET, own("net")), (CloneFlags::CLONE_NEWUTS, own("uts"))]);
        let p = namespace_plan(&s, None, Some(ahead)).unwrap();
        assert_eq!(p.new, CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC);
        let joined: Vec<CloneFlags> = p.join.iter().map(|(_, f)| *f).collect();
        assert_eq!(joined, vec![CloneFlags::CLONE_NEWNET], "UTS was not asked for");
        assert_eq!(p.ahead, CloneFlags::CLONE_NEWNET);
        assert_eq!(p.fresh(), CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET);
        assert_eq!(p.own(), CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET);
    }

    #[test]
    fn bad_namespace_lists_are_named() {
        for (ns, needle) in [
            (r#"[{"type":"pid"}]"#, "new mount namespace"),
            (r#"[{"type":"mount"},{"type":"user"}]"#, "user namespaces are not supported"),
            (r#"[{"type":"mount"},{"type":"ipc"},{"type":"ipc"}]"#, "listed twice"),
        ] {
            let e = namespace_plan(&spec(ns), None, None).unwrap_err().to_string();
            assert!(e.contains(needle), "{ns}: {e}");
        }
    }
}
