//! The container's root: OCI mounts parsed before the fork (`RootPlan::from_spec`), and applied
//! in the child's new mount namespace (`setup_root`), ending with pivot_root.
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use oci_spec::runtime::Spec;

use crate::error::{AgentError, Result};
use crate::pod::NsPlan;
use crate::process::child::{ChildError, ChildResult};

const MAX_MOUNTS: usize = 1024;
const MAX_SYMLINKS: usize = 40;

/// One mount of the spec, parsed.
#[derive(Debug, Clone)]
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
    /// A bind source resolved and checked before the fork by [`RootPlan::open_bind_sources`].
    pub checked_source: Option<BindSource>,
}

/// A bind source that was checked to lie below what the host shared with the pod. The child
/// (in its new mount namespace, a copy of the agent's) opens `path` again and mounts it only
/// if it is still the same inode, through /proc/self/fd: a path changed after the check cannot
/// redirect the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSource {
    /// The resolved path.
    pub path: PathBuf,
    /// Device and inode seen at the check.
    pub dev_ino: (u64, u64),
    /// A file, not a directory (the mount point is made to match).
    pub is_file: bool,
}

impl BindSource {
    /// Opens the source again (O_PATH) and checks that it is the inode that was checked.
    fn reopen(&self) -> nix::Result<OwnedFd> {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::open(&self.path, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
        let st = nix::sys::stat::fstat(&fd)?;
        if (st.st_dev, st.st_ino) != self.dev_ino {
            return Err(nix::Error::ESTALE);
        }
        Ok(fd)
    }
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
    /// linux.sysctl, checked to be namespaced keys of namespaces the container has.
    pub sysctl: Vec<(String, String)>,
    /// linux.devices: nodes made in the root before pivot_root.
    pub devices: Vec<crate::container::devices::nodes::DeviceNode>,
}

/// Checks that sysctl `key` belongs to a namespace the container does not share with the agent
/// (`own`: its new namespaces and the pod's), as runc does: anything else would change the whole
/// VM.
pub fn check_sysctl(key: &str, own: CloneFlags) -> Result<()> {
    if key.is_empty() || key.len() > 256 || key.contains('/') || key.contains("..") || key.contains('\0') {
        return Err(AgentError::InvalidArgument(format!("sysctl key {key:?} is not valid")));
    }
    let ipc = key.starts_with("kernel.shm") || key.starts_with("kernel.msg") || key == "kernel.sem" || key.starts_with("fs.mqueue.");
    let (needs, name) = if ipc {
        (CloneFlags::CLONE_NEWIPC, "IPC")
    } else if key.starts_with("net.") {
        (CloneFlags::CLONE_NEWNET, "network")
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        (CloneFlags::CLONE_NEWUTS, "UTS")
    } else {
        return Err(AgentError::InvalidArgument(format!("sysctl {key:?} is not in a separate kernel namespace: it would change the whole VM")));
    };
    if !own.contains(needs) {
        return Err(AgentError::InvalidArgument(format!("sysctl {key:?} needs the container to have its own or the pod's {name} namespace")));
    }
    Ok(())
}

/// Whether `p` lies strictly below one of `roots` (component-wise; `p` has no `..`).
fn below_any(p: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|r| p != r.as_path() && p.starts_with(r))
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
            p @ ("private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable") => {
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
    let ok = p.starts_with('/') && p.len() <= 4096 && !p.contains('\0') && !Path::new(p).components().any(|c| c == Component::ParentDir);
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!("{what} {p:?} must be an absolute path without \"..\"")))
    }
}

impl RootPlan {
    /// Parses the mount-related parts of `spec` for a rootfs mounted at `rootfs`.
    /// `ns` are the container's namespaces; bind sources must lie below one of `allowed`.
    pub fn from_spec(spec: &Spec, rootfs: PathBuf, ns: &NsPlan, allowed: &[PathBuf]) -> Result<RootPlan> {
        let spec_mounts = spec.mounts().as_deref().unwrap_or_default();
        if spec_mounts.len() > MAX_MOUNTS {
            return Err(AgentError::InvalidArgument(format!("{} mounts, more than {MAX_MOUNTS}", spec_mounts.len())));
        }
        let mut mounts = Vec::with_capacity(spec_mounts.len());
        for m in spec_mounts {
            let destination = m.destination().to_string_lossy().into_owned();
            check_container_path("mount destination", &destination)?;
            let (flags, propagation, bind, rec, data) = parse_options(m.options().as_deref().unwrap_or_default());
            let fstype = m.typ().clone().unwrap_or_default();
            let bind = bind || fstype == "bind";
            let source = m.source().as_ref().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| fstype.clone());
            if bind {
                check_container_path(&format!("bind mount source for {destination}"), &source)?;
                if !below_any(Path::new(&source), allowed) {
                    return Err(AgentError::InvalidArgument(format!(
                        "bind mount source {source:?} for {destination} is not a file the host shared with the pod"
                    )));
                }
            }
            if !bind && fstype.is_empty() {
                return Err(AgentError::InvalidArgument(format!("mount on {destination} has no type")));
            }
            let flags = if rec { flags | MsFlags::MS_REC } else { flags };
            mounts.push(MountPlan { destination, fstype, source, flags, data, bind, propagation, checked_source: None });
        }
        let linux = spec.linux().as_ref();
        let paths = |v: Option<&Vec<String>>, what: &str| -> Result<Vec<String>> {
            let v = v.cloned().unwrap_or_default();
            for p in &v {
                check_container_path(what, p)?;
            }
            Ok(v)
        };
        let mut sysctl: Vec<(String, String)> = linux.and_then(|l| l.sysctl().clone()).unwrap_or_default().into_iter().collect();
        sysctl.sort();
        for (k, _) in &sysctl {
            check_sysctl(k, ns.own())?;
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
            hostname: if ns.fresh().contains(CloneFlags::CLONE_NEWUTS) { hostname } else { None },
            masked: paths(linux.and_then(|l| l.masked_paths().as_ref()), "masked path")?,
            readonly_paths: paths(linux.and_then(|l| l.readonly_paths().as_ref()), "readonly path")?,
            readonly_root: spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false),
            sysctl,
            devices: crate::container::devices::nodes::plan(linux.and_then(|l| l.devices().as_deref()).unwrap_or_default())
                .map_err(|e| AgentError::InvalidArgument(e.to_string()))?,
        })
    }
}

impl RootPlan {
    /// Opens every bind source (O_PATH) after resolving it, and checks that what was opened
    /// still lies below one of `allowed`: a symlink in a shared directory cannot point a mount
    /// at the agent's files, and the path cannot be swapped between the check and the mount.
    pub fn open_bind_sources(&mut self, allowed: &[PathBuf]) -> Result<()> {
        let roots: Vec<PathBuf> = allowed.iter().filter_map(|r| std::fs::canonicalize(r).ok()).collect();
        for m in self.mounts.iter_mut().filter(|m| m.bind) {
            let bad = |why: String| AgentError::InvalidArgument(format!("bind mount source {} for {}: {why}", m.source, m.destination));
            let real = std::fs::canonicalize(&m.source).map_err(|e| bad(format!("{e}")))?;
            if !below_any(&real, &roots) {
                return Err(bad(format!("resolves to {}, outside what the host shared with the pod", real.display())));
            }
            let fd = nix::fcntl::open(
                &real,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| bad(format!("opening {}: {}", real.display(), e.desc())))?;
            let opened = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| bad(format!("{e}")))?;
            if opened != real {
                return Err(bad(format!("changed while it was opened ({} became {})", real.display(), opened.display())));
            }
            let st = nix::sys::stat::fstat(&fd).map_err(|e| bad(e.desc().to_string()))?;
            let is_file = st.st_mode & libc::S_IFMT != libc::S_IFDIR;
            m.checked_source = Some(BindSource { path: real, dev_ino: (st.st_dev, st.st_ino), is_file });
        }
        Ok(())
    }
}

/// Resolves `path` inside `root` following symlinks as if `root` were `/`, so that a symlink
/// in the image cannot point a mount outside the container's root. More than 40 links on the
/// way (a loop, or a chain) fail with ELOOP, as the kernel's own path walk does.
pub fn resolve_in_root(root: &Path, path: &str) -> ChildResult<PathBuf> {
    let mut resolved = PathBuf::from("/");
    let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).rev().map(str::to_string).collect();
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
            Ok(_) if links >= MAX_SYMLINKS => {
                return Err(ChildError {
                    invalid: true,
                    errno: Some(nix::Error::ELOOP),
                    msg: format!("resolving {path:?} in the container's root: more than {MAX_SYMLINKS} symbolic links (at {})", candidate.display()),
                });
            }
            Ok(target) => {
                links += 1;
                let t = target.to_string_lossy();
                if t.starts_with('/') {
                    resolved = PathBuf::from("/");
                }
                pending.extend(t.split('/').filter(|c| !c.is_empty()).rev().map(str::to_string));
            }
            Err(_) => resolved = candidate,
        }
    }
    Ok(root.join(resolved.strip_prefix("/").unwrap_or(&resolved)))
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
        std::fs::create_dir_all(parent).map_err(|e| ChildError::sys(format!("creating {}", parent.display()), errno(&e)))?;
    }
    let r = if source_is_file { std::fs::File::create(target).map(drop) } else { std::fs::create_dir(target) };
    r.map_err(|e| ChildError::sys(format!("creating mount point {}", target.display()), errno(&e)))
}

fn errno(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn apply_mount(root: &Path, m: &MountPlan) -> ChildResult<()> {
    let target = resolve_in_root(root, &m.destination)?;
    let what = format!("mounting {} ({}) on {}", m.source, m.fstype, m.destination);
    let data = (!m.data.is_empty()).then_some(m.data.as_str());
    if m.bind {
        let Some(checked) = &m.checked_source else {
            return Err(ChildError::invalid(format!("bind mount source {} for {} was not checked before the container was created", m.source, m.destination)));
        };
        make_target(&target, checked.is_file)?;
        let fd =
            checked.reopen().map_err(|e| ChildError::sys(format!("bind mount source {} for {} changed after it was checked", m.source, m.destination), e))?;
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let rec = m.flags & MsFlags::MS_REC;
        mount(Some(source.as_str()), &target, None::<&str>, MsFlags::MS_BIND | rec, None::<&str>).map_err(sys(what.clone()))?;
        let extra = m.flags - MsFlags::MS_REC;
        if !extra.is_empty() {
            mount(None::<&str>, &target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra, None::<&str>)
                .map_err(sys(format!("{what} (remount with {extra:?})")))?;
        }
    } else {
        make_target(&target, false)?;
        // The guest has only the unified hierarchy: a (v1-style) "cgroup" mount is cgroup2,
        // as runc does on a cgroup v2 host.
        let fstype = if m.fstype == "cgroup" { "cgroup2" } else { m.fstype.as_str() };
        let data = if fstype == "cgroup2" { None } else { data };
        let r = mount(Some(m.source.as_str()), &target, Some(fstype), m.flags, data);
        match (r, fstype) {
            (Ok(()), _) => {}
            // Without a new network namespace sysfs cannot be mounted: bind the guest's.
            (Err(nix::Error::EPERM), "sysfs") => {
                mount(Some("/sys"), &target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(sys(what.clone()))?;
            }
            // No cgroup namespace of its own (or a busy superblock): bind the hierarchy, as
            // runc falls back to, keeping the mount's read-only flag.
            (Err(nix::Error::EPERM | nix::Error::EBUSY), "cgroup2") => {
                mount(Some("/sys/fs/cgroup"), &target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(sys(what.clone()))?;
                let ro = m.flags & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
                if !ro.is_empty() {
                    mount(None::<&str>, &target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro, None::<&str>)
                        .map_err(sys(format!("{what} (remount with {ro:?})")))?;
                }
            }
            (Err(e), _) => return Err(ChildError::sys(what, e)),
        }
    }
    if !m.propagation.is_empty() {
        mount(None::<&str>, &target, None::<&str>, m.propagation, None::<&str>).map_err(sys(format!("setting propagation of {}", m.destination)))?;
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
        mount(Some(source.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(sys(format!("binding {source} into the container")))?;
    }
    for (link, to) in
        [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")]
    {
        let _ = std::os::unix::fs::symlink(to, dev.join(link));
    }
    Ok(())
}

/// Builds the root in the child's new mount namespace and pivots into it.
pub fn setup_root(plan: &RootPlan) -> ChildResult<()> {
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).map_err(sys("making / private".into()))?;
    for m in &plan.mounts {
        apply_mount(&plan.rootfs, m)?;
    }
    crate::container::devices::nodes::create(&plan.rootfs, &plan.devices)?;
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
            mount(Some("."), "/", none, MsFlags::MS_MOVE, none).map_err(sys(format!("moving {} to /", plan.rootfs.display())))?;
            nix::unistd::chroot(".").map_err(sys("chroot into the container root".into()))?;
        }
        Err(e) => return Err(ChildError::sys(format!("pivot_root into {}", plan.rootfs.display()), e)),
    }
    nix::unistd::chdir("/").map_err(sys("chdir /".into()))?;
    // As runc: sysctls through the container's own /proc, before /proc/sys turns read-only.
    for (k, v) in &plan.sysctl {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&path, v).map_err(|e| ChildError {
            invalid: true,
            errno: Some(errno(&e)),
            msg: format!("sysctl {k}={v} (through the container's /proc)"),
        })?;
    }
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
        mount(Some(p.as_str()), p.as_str(), none, MsFlags::MS_BIND | MsFlags::MS_REC, none).map_err(sys(format!("binding readonly path {p}")))?;
        mount(
            none,
            p.as_str(),
            none,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            none,
        )
        .map_err(sys(format!("making {p} read-only")))?;
    }
    if plan.readonly_root {
        mount(none, "/", none, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, none).map_err(sys("making the root read-only".into()))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn options_become_flags_and_data() {
        let opts: Vec<String> = ["nosuid", "ro", "rbind", "mode=755", "rprivate", "size=1m"].iter().map(|s| s.to_string()).collect();
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
        assert_eq!(resolve_in_root(&root, "/a/evil/passwd").unwrap(), root.join("etc/passwd"));
        assert_eq!(resolve_in_root(&root, "/a/self/x").unwrap(), root.join("a/x"));
        assert_eq!(resolve_in_root(&root, "/../../x").unwrap(), root.join("x"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn symlink_loops_fail_with_eloop_naming_the_path() {
        let root = std::env::temp_dir().join(format!("husk-eloop-{}", std::process::id()));
        std::fs::create_dir_all(root.join("d")).unwrap();
        // A loop, and a chain of exactly 40 links (the most the kernel follows) that still works.
        std::os::unix::fs::symlink("loop2", root.join("d/loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", root.join("d/loop2")).unwrap();
        for i in 0..40 {
            std::os::unix::fs::symlink(format!("c{}", i + 1), root.join(format!("d/c{i}"))).unwrap();
        }
        std::fs::create_dir(root.join("d/c40")).unwrap();
        assert_eq!(resolve_in_root(&root, "/d/c0/x").unwrap(), root.join("d/c40/x"));
        let err = resolve_in_root(&root, "/d/loop1/x").unwrap_err();
        assert_eq!(err.errno, Some(nix::Error::ELOOP));
        assert!(err.invalid);
        assert!(err.msg.contains("\"/d/loop1/x\"") && err.msg.contains("more than 40"), "{}", err.msg);
        std::os::unix::fs::symlink("c0", root.join("d/c41")).unwrap();
        assert_eq!(resolve_in_root(&root, "/d/c41").unwrap_err().errno, Some(nix::Error::ELOOP), "41 links");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn bad_mounts_are_rejected() {
        let spec: Spec = serde_json::from_str(r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/x/../../y","type":"tmpfs"}]}"#).unwrap();
        let ns = NsPlan { new: CloneFlags::CLONE_NEWNS, ..Default::default() };
        let allowed = [PathBuf::from("/run/husk/pod")];
        let err = RootPlan::from_spec(&spec, "/r".into(), &ns, &allowed).unwrap_err();
        assert!(err.to_string().contains("/x/../../y"), "{err}");
        let spec: Spec = serde_json::from_str(r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/d","type":"bind","source":"rel"}]}"#).unwrap();
        assert!(RootPlan::from_spec(&spec, "/r".into(), &ns, &allowed).is_err());
        // The agent's own files are never a bind source.
        for src in ["/", "/run/husk/pod", "/run/husk/containers/c/rootfs", "/run/husk/pod/../agent"] {
            let spec: Spec =
                serde_json::from_str(&format!(r#"{{"ociVersion":"1.0.2","mounts":[{{"destination":"/d","type":"bind","source":"{src}"}}]}}"#)).unwrap();
            let err = RootPlan::from_spec(&spec, "/r".into(), &ns, &allowed).unwrap_err().to_string();
            assert!(err.contains(src), "{src}: {err}");
        }
        let spec: Spec =
            serde_json::from_str(r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/dev/shm","type":"bind","source":"/run/husk/pod/shm"}]}"#).unwrap();
        assert!(RootPlan::from_spec(&spec, "/r".into(), &ns, &allowed).is_ok());
    }

    #[test]
    fn only_namespaced_sysctls_of_own_namespaces_pass() {
        let own = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC;
        for k in ["net.ipv4.ip_forward", "kernel.shmmax", "kernel.msgmax", "kernel.sem", "fs.mqueue.msg_max"] {
            check_sysctl(k, own).unwrap();
        }
        let e = check_sysctl("kernel.hostname", own).unwrap_err().to_string();
        assert!(e.contains("UTS"), "{e}");
        let e = check_sysctl("vm.overcommit_memory", own).unwrap_err().to_string();
        assert!(e.contains("not in a separate kernel namespace"), "{e}");
        let e = check_sysctl("net.core.somaxconn", CloneFlags::CLONE_NEWNS).unwrap_err().to_string();
        assert!(e.contains("network namespace"), "{e}");
        assert!(check_sysctl("net/../x", own).is_err());
    }

    #[test]
    fn bind_sources_that_resolve_outside_are_refused() {
        let base = std::env::temp_dir().join(format!("husk-bindsrc-{}", std::process::id()));
        let pod = base.join("pod");
        std::fs::create_dir_all(pod.join("shared")).unwrap();
        std::fs::write(base.join("secret"), b"agent").unwrap();
        std::fs::write(pod.join("shared/hosts"), b"127.0.0.1 localhost").unwrap();
        std::os::unix::fs::symlink(base.join("secret"), pod.join("shared/evil")).unwrap();
        let mk = |src: &Path| -> RootPlan {
            let spec: Spec = serde_json::from_str(&format!(
                r#"{{"ociVersion":"1.0.2","mounts":[{{"destination":"/etc/hosts","type":"bind","source":"{}"}}]}}"#,
                src.display()
            ))
            .unwrap();
            let ns = NsPlan { new: CloneFlags::CLONE_NEWNS, ..Default::default() };
            RootPlan::from_spec(&spec, "/r".into(), &ns, std::slice::from_ref(&pod)).unwrap()
        };
        let mut good = mk(&pod.join("shared/hosts"));
        good.open_bind_sources(std::slice::from_ref(&pod)).unwrap();
        assert!(good.mounts[0].checked_source.as_ref().is_some_and(|c| c.is_file && c.reopen().is_ok()));
        let mut evil = mk(&pod.join("shared/evil"));
        let e = evil.open_bind_sources(std::slice::from_ref(&pod)).unwrap_err().to_string();
        assert!(e.contains("outside what the host shared"), "{e}");
        let mut missing = mk(&pod.join("shared/nope"));
        assert!(missing.open_bind_sources(std::slice::from_ref(&pod)).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
