//! The container's root: OCI mounts parsed before the fork (`RootPlan::from_spec`), and applied
//! in the child's new mount namespace (`setup_root`), ending with pivot_root.
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use crate::error::{AgentError, Result};
use crate::process::child::{ChildError, ChildResult};

const MAX_MOUNTS: usize = 1024;
const MAX_SYMLINKS: usize = 40;

/// One mount of the spec, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct MountPlan {
    /// Absolute destination inside the container.
    pub destination: String,
    /// Filesystem type ("bind" for bind mounts).
    pub fstype: String,
    /// Source.
    pub source: String,
    /// Flags for the mount itself.
    pub flags: MsFlags,
    /// Filesystem data options.
    pub data: String,
    /// Bind mount (MS_BIND, MS_REC for rbind).
    pub bind: bool,
    /// Propagation flags applied after mounting.
    pub propagation: MsFlags,
}

/// Everything the child needs to build the container's root.
#[derive(Debug, Clone)]
pub struct RootPlan {
    /// The mounted rootfs in the agent's mount namespace.
    pub rootfs: PathBuf,
    /// The spec's mounts in order.
    pub mounts: Vec<MountPlan>,
    /// Hostname to set (the container has its own UTS namespace).
    pub hostname: Option<String>,
    /// linux.maskedPaths.
    pub masked: Vec<String>,
    /// linux.readonlyPaths.
    pub readonly_paths: Vec<String>,
    /// root.readonly.
    pub readonly_root: bool,
    /// linux.sysctl.
    pub sysctl: Vec<(String, String)>,
}

fn parse_options(options: &[String]) -> (MsFlags, MsFlags, bool, bool, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let (mut bind, mut rec) = (false, false);
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                bind = true;
                continue;
            }
            "rbind" => {
                bind = true;
                rec = true;
                continue;
            }
            p @ ("private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
            | "unbindable" | "runbindable") => {
                propagation = match p.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                if p.starts_with('r') {
                    propagation |= MsFlags::MS_REC;
                }
                continue;
            }
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        flags |= set;
        flags &= !clear;
    }
    (flags, propagation, bind, rec, data.join(","))
}

/// Checks an absolute in-container path: absolute, no "..", no NUL, bounded.
fn check_container_path(what: &str, p: &str) -> Result<()> {
    let ok = p.starts_with('/')
        && p.len() <= 4096
        && !p.contains('\0')
        && !Path::new(p).components().any(|c| c == Component::ParentDir);
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "{what} {p:?} must be an absolute path without \"..\""
        )))
    }
}

impl RootPlan {
    /// Parses the mount-related parts of `spec` for a rootfs mounted at `rootfs`.
    pub fn from_spec(spec: &Spec, rootfs: PathBuf, new_uts: bool) -> Result<RootPlan> {
        let spec_mounts = spec.mounts().as_deref().unwrap_or_default();
        if spec_mounts.len() > MAX_MOUNTS {
            return Err(AgentError::InvalidArgument(format!(
                "{} mounts, more than {MAX_MOUNTS}",
                spec_mounts.len()
            )));
        }
        let mut mounts = Vec::with_capacity(spec_mounts.len());
        for m in spec_mounts {
            let destination = m.destination().to_string_lossy().into_owned();
            check_container_path("mount destination", &destination)?;
            let (flags, propagation, bind, rec, data) =
                parse_options(m.options().as_deref().unwrap_or_default());
            let fstype = m.typ().clone().unwrap_or_default();
            let bind = bind || fstype == "bind";
            let source = m
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| fstype.clone());
            if bind && !source.starts_with('/') {
                return Err(AgentError::InvalidArgument(format!(
                    "bind mount source {source:?} for {destination} is not an absolute path"
                )));
            }
            if !bind && fstype.is_empty() {
                return Err(AgentError::InvalidArgument(format!(
                    "mount on {destination} has no type"
                )));
            }
            let flags = if rec { flags | MsFlags::MS_REC } else { flags };
            mounts.push(MountPlan { destination, fstype, source, flags, data, bind, propagation });
        }
        let linux = spec.linux().as_ref();
        let paths = |v: Option<&Vec<String>>, what: &str| -> Result<Vec<String>> {
            let v = v.cloned().unwrap_or_default();
            for p in &v {
                check_container_path(what, p)?;
            }
            Ok(v)
        };
        let mut sysctl: Vec<(String, String)> = linux
            .and_then(|l| l.sysctl().clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        sysctl.sort();
        for (k, _) in &sysctl {
            if k.is_empty() || k.contains('/') || k.contains("..") {
                return Err(AgentError::InvalidArgument(format!("sysctl key {k:?} is not valid")));
            }
        }
        let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
        if let Some(h) = &hostname {
            if h.len() > 64 {
                return Err(AgentError::InvalidArgument(format!("hostname {h:?} is too long")));
            }
        }
        Ok(RootPlan {
            rootfs,
            mounts,
            hostname: if new_uts { hostname } else { None },
            masked: paths(linux.and_then(|l| l.masked_paths().as_ref()), "masked path")?,
            readonly_paths: paths(linux.and_then(|l| l.readonly_paths().as_ref()), "readonly path")?,
            readonly_root: spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false),
            sysctl,
        })
    }
}

/// Resolves `path` inside `root` following symlinks as if `root` were `/`, so that a symlink
/// in the image cannot point a mount outside the container's root.
pub fn resolve_in_root(root: &Path, path: &str) -> PathBuf {
    let mut resolved = PathBuf::from("/");
    let mut pending: Vec<String> =
        path.split('/').filter(|c| !c.is_empty()).rev().map(str::to_string).collect();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&c);
        let host = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        match std::fs::read_link(&host) {
            Ok(target) if links < MAX_SYMLINKS => {
                links += 1;
                let t = target.to_string_lossy();
                if t.starts_with('/') {
                    resolved = PathBuf::from("/");
                }
                pending.extend(t.split('/').filter(|c| !c.is_empty()).rev().map(str::to_string));
            }
            _ => resolved = candidate,
        }
    }
    root.join(resolved.strip_prefix("/").unwrap_or(&resolved))
}

fn sys(what: String) -> impl FnOnce(nix::Error) -> ChildError {
    move |e| ChildError::sys(what, e)
}

/// Creates the mount point: a file when the source is a file, else a directory.
fn make_target(target: &Path, source_is_file: bool) -> ChildResult<()> {
    if target.exists() {
        return Ok(());
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            ChildError::sys(format!("creating {}", parent.display()), errno(&e))
        })?;
    }
    let r = if source_is_file {
        std::fs::File::create(target).map(drop)
    } else {
        std::fs::create_dir(target)
    };
    r.map_err(|e| ChildError::sys(format!("creating mount point {}", target.display()), errno(&e)))
}

fn errno(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn apply_mount(root: &Path, m: &MountPlan) -> ChildResult<()> {
    let target = resolve_in_root(root, &m.destination);
    let source_is_file = m.bind && Path::new(&m.source).is_file();
    make_target(&target, source_is_file)?;
    let what = format!("mounting {} ({}) on {}", m.source, m.fstype, m.destination);
    let data = (!m.data.is_empty()).then_some(m.data.as_str());
    if m.bind {
        if !Path::new(&m.source).exists() {
            return Err(ChildError::invalid(format!(
                "bind mount source {} for {} does not exist",
                m.source, m.destination
            )));
        }
        let rec = m.flags & MsFlags::MS_REC;
        mount(Some(m.source.as_str()), &target, None::<&str>, MsFlags::MS_BIND | rec, None::<&str>)
            .map_err(sys(what.clone()))?;
        let extra = m.flags - MsFlags::MS_REC;
        if !extra.is_empty() {
            mount(None::<&str>, &target, None::<&str>,
                  MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra, None::<&str>)
                .map_err(sys(format!("{what} (remount with {extra:?})")))?;
        }
    } else {
        let r = mount(Some(m.source.as_str()), &target, Some(m.fstype.as_str()), m.flags, data);
        match (r, m.fstype.as_str()) {
            (Ok(()), _) => {}
            // Without a new network namespace sysfs cannot be mounted: bind the guest's.
            (Err(nix::Error::EPERM), "sysfs") => {
                mount(Some("/sys"), &target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                    .map_err(sys(what.clone()))?;
            }
            (Err(e), _) => return Err(ChildError::sys(what, e)),
        }
    }
    if !m.propagation.is_empty() {
        mount(None::<&str>, &target, None::<&str>, m.propagation, None::<&str>)
            .map_err(sys(format!("setting propagation of {}", m.destination)))?;
    }
    if m.fstype == "tmpfs" && m.destination == "/dev" {
        populate_dev(&target)?;
    }
    Ok(())
}

/// Default device nodes of a container /dev, bind-mounted from the guest's /dev.
fn populate_dev(dev: &Path) -> ChildResult<()> {
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(name);
        make_target(&target, true)?;
        let source = format!("/dev/{name}");
        mount(Some(source.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(sys(format!("binding {source} into the container")))?;
    }
    for (link, to) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                       ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                       ("ptmx", "pts/ptmx")] {
        let _ = std::os::unix::fs::symlink(to, dev.join(link));
    }
    Ok(())
}

/// Builds the root in the child's new mount namespace and pivots into it.
pub fn setup_root(plan: &RootPlan) -> ChildResult<()> {
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(sys("making / private".into()))?;
    for m in &plan.mounts {
        apply_mount(&plan.rootfs, m)?;
    }
    for (k, v) in &plan.sysctl {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&path, v)
            .map_err(|e| ChildError { invalid: true, errno: Some(errno(&e)), msg: format!("sysctl {k}={v}") })?;
    }
    if let Some(h) = &plan.hostname {
        nix::unistd::sethostname(h).map_err(sys(format!("setting hostname {h:?}")))?;
    }
    nix::unistd::chdir(&plan.rootfs).map_err(sys(format!("chdir {}", plan.rootfs.display())))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root".into()))?;
        }
        // The agent's root is still the initramfs (rootfs), where pivot_root is refused:
        // move the container's root over / and chroot (runc's --no-pivot).
        Err(nix::Error::EINVAL) => {
            mount(Some("."), "/", none, MsFlags::MS_MOVE, none)
                .map_err(sys(format!("moving {} to /", plan.rootfs.display())))?;
            nix::unistd::chroot(".").map_err(sys("chroot into the container root".into()))?;
        }
        Err(e) => return Err(ChildError::sys(format!("pivot_root into {}", plan.rootfs.display()), e)),
    }
    nix::unistd::chdir("/").map_err(sys("chdir /".into()))?;
    for p in &plan.masked {
        let path = Path::new(p);
        let r = if path.is_dir() {
            mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, none)
        } else if path.exists() {
            mount(Some("/dev/null"), path, none, MsFlags::MS_BIND, none)
        } else {
            Ok(())
        };
        r.map_err(sys(format!("masking {p}")))?;
    }
    for p in &plan.readonly_paths {
        if !Path::new(p).exists() {
            continue;
        }
        mount(Some(p.as_str()), p.as_str(), none, MsFlags::MS_BIND | MsFlags::MS_REC, none)
            .map_err(sys(format!("binding readonly path {p}")))?;
        mount(none, p.as_str(), none,
              MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
              | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, none)
            .map_err(sys(format!("making {p} read-only")))?;
    }
    if plan.readonly_root {
        mount(none, "/", none, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, none)
            .map_err(sys("making the root read-only".into()))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn options_become_flags_and_data() {
        let opts: Vec<String> = ["nosuid", "ro", "rbind", "mode=755", "rprivate", "size=1m"]
            .iter().map(|s| s.to_string()).collect();
        let (flags, prop, bind, rec, data) = parse_options(&opts);
        assert_eq!(flags, MsFlags::MS_NOSUID | MsFlags::MS_RDONLY);
        assert_eq!(prop, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert!(bind && rec);
        assert_eq!(data, "mode=755,size=1m");
    }

    #[test]
    fn symlinks_cannot_escape_the_root() {
        let root = std::env::temp_dir().join(format!("husk-resolve-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::os::unix::fs::symlink("/../../etc", root.join("a/evil")).unwrap();
        std::os::unix::fs::symlink("../a", root.join("a/self")).unwrap();
        assert_eq!(resolve_in_root(&root, "/a/evil/passwd"), root.join("etc/passwd"));
        assert_eq!(resolve_in_root(&root, "/a/self/x"), root.join("a/x"));
        assert_eq!(resolve_in_root(&root, "/../../x"), root.join("x"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn bad_mounts_are_rejected() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/x/../../y","type":"tmpfs"}]}"#,
        ).unwrap();
        let err = RootPlan::from_spec(&spec, "/r".into(), true).unwrap_err();
        assert!(err.to_string().contains("/x/../../y"), "{err}");
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/d","type":"bind","source":"rel"}]}"#,
        ).unwrap();
        assert!(RootPlan::from_spec(&spec, "/r".into(), true).is_err());
    }
}
