//! Mounting a container's root filesystem and extra disks in the agent's mount namespace:
//! disks are found by their virtio-blk serial; read-only roots get an overlay with a tmpfs upper.
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::agent::{Disk, Rootfs};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{AgentError, Result};

const FSTYPES: [&str; 2] = ["ext4", "erofs"];

/// How long a disk attached to the running VM may take to show its size.
const DISK_SIZE_WAIT: Duration = Duration::from_secs(10);

mod ioctl {
    #![allow(missing_docs)]
    // BLKFLSBUF = _IO(0x12, 97), linux/fs.h.
    nix::ioctl_none!(blk_flush_buffers, 0x12, 97);
}
use ioctl::blk_flush_buffers;

/// Drops the cached blocks of block device `dev` (BLKFLSBUF): a disk slot of the VM can carry
/// another image later, and the guest must not serve the old one's blocks from its cache.
pub fn flush_buffers(dev: &Path) -> Result<()> {
    let f = std::fs::File::open(dev).map_err(|e| AgentError::io(format!("opening {}", dev.display()), e))?;
    // SAFETY: BLKFLSBUF takes no argument; the fd is a block device open for the whole call.
    unsafe { blk_flush_buffers(f.as_raw_fd()) }.map(drop).map_err(|e| AgentError::sys(format!("dropping the cached blocks of {}", dev.display()), e))
}

/// Mount points made for a container, unmounted in reverse order; block devices whose cached
/// blocks are dropped once they are unmounted.
#[derive(Debug, Default)]
pub struct Mounts(Vec<PathBuf>, Vec<PathBuf>);

impl Mounts {
    fn mount(&mut self, source: &str, target: &Path, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> Result<()> {
        std::fs::create_dir_all(target).map_err(|e| AgentError::io(format!("creating {}", target.display()), e))?;
        mount(Some(source), target, fstype, flags, data)
            .map_err(|e| AgentError::sys(format!("mounting {source} ({}) on {}", fstype.unwrap_or("bind"), target.display()), e))?;
        self.0.push(target.to_path_buf());
        Ok(())
    }

    /// Unmounts everything (lazily, so a busy mount cannot block removal).
    pub fn unmount_all(&mut self) {
        while let Some(p) = self.0.pop() {
            if let Err(e) = umount2(&p, MntFlags::MNT_DETACH) {
                log::warn!("unmounting {}: {e}", p.display());
            }
        }
        while let Some(dev) = self.1.pop() {
            if let Err(e) = flush_buffers(&dev) {
                log::warn!("{}", crate::error::chain(&e));
            }
        }
    }
}

/// The block device whose virtio-blk serial is `serial` (/sys/block/*/serial).
///
/// Each read of a virtio-blk disk's `serial` is a request to the device (GET_ID), a round trip
/// to the VMM, and most of the VM's disk slots are empty. So the disks that have a capacity
/// (`size`, kept by the guest, no request) are asked first; the empty ones only if none of those
/// matched, since a disk the host has just attached may not show its capacity yet.
pub fn find_disk(serial: &str) -> Result<PathBuf> {
    let entries = std::fs::read_dir("/sys/block").map_err(|e| AgentError::io("listing /sys/block", e))?;
    let has_serial = |dir: &Path| std::fs::read_to_string(dir.join("serial")).is_ok_and(|found| found.trim_end_matches(['\n', '\0']) == serial);
    let mut empty = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        if sectors(&dir) == 0 {
            empty.push(entry);
        } else if has_serial(&dir) {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    empty
        .into_iter()
        .find(|e| has_serial(&e.path()))
        .map(|e| Path::new("/dev").join(e.file_name()))
        .ok_or_else(|| AgentError::InvalidArgument(format!("no virtio-blk disk with serial {serial:?}")))
}

/// The capacity in sectors of the block device whose /sys/block directory is `dir` (0 when
/// unreadable).
fn sectors(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("size")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Waits until block device `dev` (/dev/vdX) has a non-zero size: a disk the host attached to
/// the running VM gets its capacity through a config-change interrupt the guest handles
/// asynchronously.
fn wait_for_size(dev: &Path) -> Result<()> {
    let name = dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = Path::new("/sys/block").join(&name);
    let deadline = Instant::now() + DISK_SIZE_WAIT;
    loop {
        if sectors(&dir) > 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(AgentError::InvalidArgument(format!("disk {} has no capacity after {DISK_SIZE_WAIT:?} (nothing attached to it?)", dev.display())));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Where a disk or directory comes from.
struct Source<'a> {
    serial: &'a str,
    fstype: &'a str,
    host_path: &'a str,
}

fn check_source(what: &str, s: &Source<'_>) -> Result<()> {
    match (s.serial.is_empty(), s.host_path.is_empty()) {
        (false, true) => {
            if s.serial.len() > 20 || s.serial.contains('/') {
                return Err(AgentError::InvalidArgument(format!("{what}: disk serial {:?} is not valid (at most 20 bytes, no '/')", s.serial)));
            }
            if !FSTYPES.contains(&s.fstype) {
                return Err(AgentError::InvalidArgument(format!("{what}: fstype {:?} is not supported (ext4 or erofs)", s.fstype)));
            }
            Ok(())
        }
        (true, false) => {
            if !s.host_path.starts_with('/') || !Path::new(s.host_path).is_dir() {
                return Err(AgentError::InvalidArgument(format!("{what}: host_path {:?} is not an existing absolute directory", s.host_path)));
            }
            Ok(())
        }
        _ => Err(AgentError::InvalidArgument(format!("{what}: exactly one of disk_serial and host_path must be set"))),
    }
}

fn mount_source(mounts: &mut Mounts, s: &Source<'_>, target: &Path, ro: bool) -> Result<()> {
    let ro_flag = if ro { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    if s.host_path.is_empty() {
        let dev = find_disk(s.serial)?;
        wait_for_size(&dev)?;
        flush_buffers(&dev)?;
        mounts.mount(&dev.to_string_lossy(), target, Some(s.fstype), ro_flag, None)?;
        mounts.1.push(dev);
        Ok(())
    } else {
        mounts.mount(s.host_path, target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        if ro {
            mount(None::<&str>, target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>)
                .map_err(|e| AgentError::sys(format!("making {} read-only", target.display()), e))?;
        }
        Ok(())
    }
}

/// Checks a CreateContainer rootfs (before anything is mounted).
pub fn check_rootfs(r: &Rootfs) -> Result<()> {
    check_source("rootfs", &Source { serial: &r.disk_serial, fstype: &r.fstype, host_path: &r.host_path })
}

/// Mounts the rootfs under `dir`; returns the root path. Read-only roots get an overlay.
pub fn mount_rootfs(mounts: &mut Mounts, dir: &Path, r: &Rootfs) -> Result<PathBuf> {
    let s = Source { serial: &r.disk_serial, fstype: &r.fstype, host_path: &r.host_path };
    check_rootfs(r)?;
    let root = dir.join("rootfs");
    if !r.read_only {
        mount_source(mounts, &s, &root, false)?;
        return Ok(root);
    }
    let lower = dir.join("lower");
    mount_source(mounts, &s, &lower, true)?;
    let scratch = dir.join("scratch");
    mounts.mount("tmpfs", &scratch, Some("tmpfs"), MsFlags::MS_NOSUID, Some("mode=0755"))?;
    for d in ["upper", "work"] {
        std::fs::create_dir(scratch.join(d)).map_err(|e| AgentError::io(format!("creating overlay {d} dir"), e))?;
    }
    let data = format!("lowerdir={},upperdir={},workdir={}", lower.display(), scratch.join("upper").display(), scratch.join("work").display());
    mounts.mount("overlay", &root, Some("overlay"), MsFlags::empty(), Some(&data))?;
    Ok(root)
}

/// Checks a disk name: `[A-Za-z0-9_.-]`, 1..=64 chars, not "." or "..".
fn check_disk_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!("disk name {name:?} is not valid")))
    }
}

/// Most extra disks of one container.
const MAX_DISKS: usize = 64;

/// Checks every extra disk of a CreateContainer request (before any is mounted).
pub fn check_disks(disks: &[Disk]) -> Result<()> {
    if disks.len() > MAX_DISKS {
        return Err(AgentError::InvalidArgument(format!("{} disks, more than {MAX_DISKS}", disks.len())));
    }
    let mut seen = std::collections::HashSet::new();
    for d in disks {
        check_disk_name(&d.name)?;
        if !seen.insert(d.name.as_str()) {
            return Err(AgentError::InvalidArgument(format!("disk name {:?} given twice", d.name)));
        }
        check_source(&format!("disk {:?}", d.name), &Source { serial: &d.disk_serial, fstype: &d.fstype, host_path: &d.host_path })?;
    }
    Ok(())
}

/// Mounts extra disks at `<disks_dir>/<name>` (all are checked first).
pub fn mount_disks(mounts: &mut Mounts, disks_dir: &Path, disks: &[Disk]) -> Result<()> {
    check_disks(disks)?;
    for d in disks {
        let s = Source { serial: &d.disk_serial, fstype: &d.fstype, host_path: &d.host_path };
        mount_source(mounts, &s, &disks_dir.join(&d.name), d.read_only)?;
    }
    Ok(())
}
