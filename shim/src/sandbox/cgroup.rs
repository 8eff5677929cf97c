//! The pod's cgroup on the host: husk-vmm runs in the sandbox spec's `linux.cgroupsPath`, so the
//! VM's memory and CPU are charged to the pod (kubelet's limits on the pod's cgroup apply to
//! it). The cgroup is created without limits of its own (the sandbox spec's resources are the
//! pause container's, not the VM's) and removed with the sandbox.
//!
//! Both layouts runc supports: cgroupfs paths (`/kubepods/besteffort/pod<uid>/<id>`) and the
//! systemd driver's `slice:prefix:name`, expanded as systemd would name the scope. The unified
//! (v2) hierarchy is used when mounted; otherwise each v1 controller that charges resources.

use std::path::{Component, Path, PathBuf};

use crate::error::{Result, ShimError};

/// v1 controllers husk-vmm joins when there is no unified hierarchy.
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu,cpuacct", "cpu", "pids", "blkio"];

/// A cgroup created for a sandbox: one directory (v2) or one per v1 controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCgroup {
    dirs: Vec<PathBuf>,
}

/// The relative cgroup path of `cgroups_path` (cgroupfs or systemd `slice:prefix:name` form).
pub fn relative_path(cgroups_path: &str) -> Result<PathBuf> {
    let bad = |why: &str| ShimError::invalid("linux.cgroupsPath", format!("{cgroups_path:?}: {why}"));
    let rel = match cgroups_path.split(':').collect::<Vec<_>>().as_slice() {
        [slice, prefix, name] => {
            let mut p = PathBuf::new();
            let slice = if slice.is_empty() { "system.slice" } else { slice };
            let stem = slice.strip_suffix(".slice").ok_or_else(|| bad("the systemd slice does not end in .slice"))?;
            // a-b-c.slice lives in a.slice/a-b.slice/a-b-c.slice.
            let mut acc = String::new();
            for part in stem.split('-') {
                if part.is_empty() {
                    return Err(bad("empty part in the slice name"));
                }
                if !acc.is_empty() {
                    acc.push('-');
                }
                acc.push_str(part);
                p.push(format!("{acc}.slice"));
            }
            if name.is_empty() {
                return Err(bad("empty unit name"));
            }
            p.push(if prefix.is_empty() { format!("{name}.scope") } else { format!("{prefix}-{name}.scope") });
            p
        }
        [path] => PathBuf::from(path.trim_start_matches('/')),
        _ => return Err(bad("expected a path or slice:prefix:name")),
    };
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad("must name a cgroup below the root, without . or .."));
    }
    Ok(rel)
}

impl HostCgroup {
    /// Creates the cgroup `cgroups_path` under the cgroup mount `root` (normally
    /// /sys/fs/cgroup). With a unified hierarchy, the controllers each parent has are enabled
    /// for its children on the way down (as runc does), so memory and CPU are accounted.
    pub fn create(root: &Path, cgroups_path: &str) -> Result<HostCgroup> {
        let rel = relative_path(cgroups_path)?;
        let mut dirs = Vec::new();
        if root.join("cgroup.controllers").exists() {
            let mut cur = root.to_path_buf();
            for c in rel.components() {
                enable_controllers(&cur);
                cur.push(c);
            }
            dirs.push(cur);
        } else {
            for ctl in V1_CONTROLLERS {
                let base = root.join(ctl);
                if base.join("cgroup.procs").exists() && !dirs.iter().any(|d: &PathBuf| d.starts_with(&base)) {
                    dirs.push(base.join(&rel));
                }
            }
        }
        if dirs.is_empty() {
            return Err(ShimError::invalid("linux.cgroupsPath", format!("{cgroups_path:?}: no cgroup hierarchy is mounted at {}", root.display())));
        }
        let cg = HostCgroup { dirs };
        for d in &cg.dirs {
            if let Err(e) = std::fs::create_dir_all(d) {
                cg.remove();
                return Err(ShimError::io("create cgroup", d, e));
            }
        }
        Ok(cg)
    }

    /// The `cgroup.procs` files a process writes to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Removes the cgroup (its processes must have exited). Errors are logged.
    pub fn remove(&self) {
        for d in &self.dirs {
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("removing cgroup {}: {e}", d.display()),
            }
        }
    }
}

/// Enables in `dir`'s children every controller `dir` has (errors ignored: a controller may
/// be unavailable or in use by a process in `dir`, and accounting is then best effort).
fn enable_controllers(dir: &Path) {
    let Ok(have) = std::fs::read_to_string(dir.join("cgroup.controllers")) else { return };
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in have.split_whitespace().filter(|c| !enabled.split_whitespace().any(|e| e == *c)) {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_and_systemd_paths() {
        assert_eq!(relative_path("/kubepods/besteffort/pod12/abc").unwrap(), Path::new("kubepods/besteffort/pod12/abc"));
        assert_eq!(
            relative_path("kubepods-burstable-pod1_2.slice:cri-containerd:abc").unwrap(),
            Path::new("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice/cri-containerd-abc.scope")
        );
        assert_eq!(relative_path(":husk:x").unwrap(), Path::new("system.slice/husk-x.scope"));
        for bad in ["", "/", "/a/../b", "a:b", "nope:p:n", "a--b.slice:p:n", "a.slice:p:"] {
            let e = relative_path(bad).unwrap_err().to_string();
            assert!(e.contains("cgroupsPath"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_v2_tree_is_created_with_controllers_enabled_and_removed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        let cg = HostCgroup::create(root.path(), "/kubepods/pod1/sb").unwrap();
        assert_eq!(cg.procs_files(), vec![root.path().join("kubepods/pod1/sb/cgroup.procs")]);
        assert!(root.path().join("kubepods/pod1/sb").is_dir());
        // A plain directory stands in for cgroupfs: the last write wins there.
        assert_eq!(std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(), "+pids");
        cg.remove();
        assert!(!root.path().join("kubepods/pod1/sb").exists());
        assert!(root.path().join("kubepods/pod1").exists(), "parents belong to kubelet");
    }

    #[test]
    fn v1_controllers_each_get_the_cgroup() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu,cpuacct", "pids", "devices"] {
            std::fs::create_dir_all(root.path().join(c)).unwrap();
            std::fs::write(root.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let cg = HostCgroup::create(root.path(), "/default/c1").unwrap();
        let files = cg.procs_files();
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(files.contains(&root.path().join("memory/default/c1/cgroup.procs")));
        assert!(!files.iter().any(|f| f.starts_with(root.path().join("devices"))));
        cg.remove();
    }
}
