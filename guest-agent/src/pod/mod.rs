//! The pod: what the containers of one Kubernetes pod (or one `ctr run` container) share inside
//! the VM. Its sandbox container defines it: the agent keeps that container's network, IPC, UTS,
//! PID and cgroup namespaces open, so other containers of the pod can join them (a namespace
//! given by `path` in their spec) even if the sandbox's processes are gone, and mounts the
//! pod's /dev/shm tmpfs, which the shim points CRI's sandbox-shm bind mounts at.
pub mod namespaces;
pub mod spare;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::error::{AgentError, Result};

pub use namespaces::{namespace_plan, NsPlan};
pub use spare::{NamespaceSet, Spare};

/// Size of the pod's /dev/shm (what containerd's CRI plugin and Docker give by default).
pub const SHM_SIZE: &str = "size=65536k";

/// The namespaces a pod keeps, by the flag that names them and their /proc/<pid>/ns entry.
pub const POD_NAMESPACES: [(CloneFlags, &str); 5] = [
    (CloneFlags::CLONE_NEWNET, "net"),
    (CloneFlags::CLONE_NEWIPC, "ipc"),
    (CloneFlags::CLONE_NEWUTS, "uts"),
    (CloneFlags::CLONE_NEWPID, "pid"),
    (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
];

/// A pod's shared state.
#[derive(Debug)]
pub struct Pod {
    /// The sandbox container's id.
    pub id: String,
    dir: PathBuf,
    namespaces: Vec<(CloneFlags, OwnedFd)>,
    shm_mounted: bool,
    shared_mounted: bool,
}

/// Longest virtio-fs tag (the device's config space holds 36 bytes).
const MAX_TAG: usize = 36;

/// Read-ahead of the shared virtio-fs mount, KiB: virtiofsd accepts 1 MiB requests
/// (`max_pages` 256 in FUSE_INIT), but the kernel's default read-ahead (128 KiB) cuts
/// sequential reads into 128 KiB requests, each a round trip to virtiofsd. With 1 MiB,
/// tests/virtio/bench-fs.sh read a 16 MiB file cold at 2.54x the host's speed where the
/// default gave 0.60x, and again (the page cache is dropped at each open with
/// `--cache=auto`) at 1.30x instead of 0.56x (medians of 3 rounds, one testbed run).
const SHARED_READ_AHEAD_KB: u32 = 1024;

impl Pod {
    /// Prepares the pod directory `<run_dir>/pod`, its /dev/shm tmpfs and, with a virtio-fs
    /// `shared_tag`, the host's shared files at `pod/shared`, before the sandbox container is
    /// created (its spec may bind them).
    pub fn prepare(run_dir: &Path, id: &str, shared_tag: &str) -> Result<Pod> {
        if shared_tag.len() > MAX_TAG || shared_tag.bytes().any(|b| !b.is_ascii_graphic() || b == b',') {
            return Err(AgentError::InvalidArgument(format!("shared_fs_tag {shared_tag:?} is not a virtio-fs tag")));
        }
        let dir = run_dir.join("pod");
        if dir.exists() {
            return Err(AgentError::AlreadyExists(format!("{} exists: this VM already has a pod", dir.display())));
        }
        let shm = dir.join("shm");
        std::fs::create_dir_all(&shm).map_err(|e| AgentError::io(format!("creating {}", shm.display()), e))?;
        let mut pod = Pod { id: id.to_string(), dir, namespaces: Vec::new(), shm_mounted: false, shared_mounted: false };
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let data = format!("mode=1777,{SHM_SIZE}");
        if let Err(e) = mount(Some("shm"), &shm, Some("tmpfs"), flags, Some(data.as_str())) {
            pod.release();
            return Err(AgentError::sys(format!("mounting the pod's shm tmpfs on {}", shm.display()), e));
        }
        pod.shm_mounted = true;
        if !shared_tag.is_empty() {
            let shared = pod.dir.join("shared");
            let made = std::fs::create_dir(&shared).map_err(|e| AgentError::io(format!("creating {}", shared.display()), e));
            let mounted = made.and_then(|()| {
                mount(Some(shared_tag), &shared, Some("virtiofs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, None::<&str>)
                    .map_err(|e| AgentError::sys(format!("mounting the pod's shared files (virtio-fs tag {shared_tag:?}) on {}", shared.display()), e))
            });
            if let Err(e) = mounted {
                pod.release();
                return Err(e);
            }
            pod.shared_mounted = true;
            if let Err(e) = set_read_ahead(&shared, SHARED_READ_AHEAD_KB) {
                log::warn!("{}; large files on the shared mount are read in smaller requests", crate::error::chain(&e));
            }
        }
        Ok(pod)
    }

    /// Keeps the namespaces of the sandbox container's init process `pid`.
    pub fn adopt_namespaces(&mut self, pid: i32) -> Result<()> {
        for (flag, name) in POD_NAMESPACES {
            let path = format!("/proc/{pid}/ns/{name}");
            let f = std::fs::File::open(&path).map_err(|e| AgentError::io(format!("opening {path}"), e))?;
            self.namespaces.push((flag, OwnedFd::from(f)));
        }
        Ok(())
    }

    /// The pod's namespace of kind `flag` (a copy of its descriptor).
    pub fn namespace(&self, flag: CloneFlags) -> Result<OwnedFd> {
        let (_, fd) = self
            .namespaces
            .iter()
            .find(|(f, _)| *f == flag)
            .ok_or_else(|| AgentError::FailedPrecondition(format!("the pod {} has no {flag:?} namespace", self.id)))?;
        fd.try_clone().map_err(|e| AgentError::io(format!("duplicating the pod's {flag:?} namespace"), e))
    }

    /// The pod's directory (`<run_dir>/pod`): bind sources below it are the pod's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes the namespaces, unmounts /dev/shm and removes the directory.
    pub fn release(&mut self) {
        self.namespaces.clear();
        let shared = self.dir.join("shared");
        if self.shared_mounted {
            if let Err(e) = umount2(&shared, MntFlags::MNT_DETACH) {
                log::warn!("unmounting the pod's shared files {}: {e}", shared.display());
            }
            self.shared_mounted = false;
        }
        let shm = self.dir.join("shm");
        if self.shm_mounted {
            if let Err(e) = umount2(&shm, MntFlags::MNT_DETACH) {
                log::warn!("unmounting the pod's shm {}: {e}", shm.display());
            }
            self.shm_mounted = false;
        }
        // The pod's emptyDir volumes live in guest memory, with no mount inside.
        let empty = self.dir.join("emptydir");
        if let Err(e) = std::fs::remove_dir_all(&empty) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("removing {}: {e}", empty.display());
            }
        }
        // Never recursively: a mount point whose unmount failed would take the host's shared
        // files with it. The directory holds only the two mount points now.
        for d in [shared, shm, self.dir.clone()] {
            if let Err(e) = std::fs::remove_dir(&d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("removing {}: {e}", d.display());
                }
            }
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.release();
    }
}

/// Sets the read-ahead of the file system mounted at `mountpoint` to `kb` KiB, through its
/// backing device's `/sys/class/bdi/MAJ:MIN/read_ahead_kb` (for FUSE the bdi is named after
/// the mount's anonymous device).
fn set_read_ahead(mountpoint: &Path, kb: u32) -> Result<()> {
    let st = nix::sys::stat::stat(mountpoint).map_err(|e| AgentError::sys(format!("reading the device of {}", mountpoint.display()), e))?;
    let (major, minor) = (nix::sys::stat::major(st.st_dev), nix::sys::stat::minor(st.st_dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    std::fs::write(&knob, kb.to_string()).map_err(|e| AgentError::io(format!("setting the read-ahead of {} to {kb} KiB in {knob}", mountpoint.display()), e))
}
