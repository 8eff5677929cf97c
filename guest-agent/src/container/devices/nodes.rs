//! The device nodes of `linux.devices`, made in the container's root (as runc makes them:
//! mknod with the spec's type, numbers, mode (0666 when absent), owner and group; a path that
//! already exists, such as the default /dev/null, is left as it is). Access to them is still
//! decided by the device filter: a spec grants a node with a rule in
//! `linux.resources.devices`, as containerd's `--device` does.
use std::path::Path;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::DeviceError;
use crate::container::mounts::resolve_in_root;
use crate::process::child::{ChildError, ChildResult};

/// Most device nodes a spec may have.
pub const MAX_NODES: usize = 256;

/// One node to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Absolute path in the container.
    pub path: String,
    /// S_IFCHR, S_IFBLK or S_IFIFO.
    pub kind: SFlag,
    /// Device number.
    pub dev: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Checks `linux.devices` (before the fork).
pub fn plan(devices: &[LinuxDevice]) -> Result<Vec<DeviceNode>, DeviceError> {
    if devices.len() > MAX_NODES {
        return Err(DeviceError::Node { index: MAX_NODES, path: String::new(), reason: format!("{} devices, more than {MAX_NODES}", devices.len()) });
    }
    devices
        .iter()
        .enumerate()
        .map(|(index, d)| {
            let path = d.path().to_string_lossy().into_owned();
            let bad = |reason: String| DeviceError::Node { index, path: path.clone(), reason };
            if !path.starts_with('/') || path.len() > 4096 || Path::new(&path).components().any(|c| c == std::path::Component::ParentDir) {
                return Err(bad("the path must be absolute, without ..".into()));
            }
            let kind = match d.typ() {
                LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
                LinuxDeviceType::B => SFlag::S_IFBLK,
                LinuxDeviceType::P => SFlag::S_IFIFO,
                LinuxDeviceType::A => return Err(bad("type \"a\" is not a device node type (c, b, u or p)".into())),
            };
            let num = |what: &str, v: i64, max: i64| -> Result<u64, DeviceError> {
                if (0..=max).contains(&v) {
                    Ok(v as u64)
                } else {
                    Err(bad(format!("{what} {v} is out of range 0..={max}")))
                }
            };
            let (major, minor) = (num("major", d.major(), 0xfff)?, num("minor", d.minor(), 0xf_ffff)?);
            let mode = d.file_mode().unwrap_or(0o666);
            if mode & !0o7777 != 0 && mode & !0o7777 != kind.bits() {
                return Err(bad(format!("fileMode {mode:#o} has file type bits that differ from the type")));
            }
            Ok(DeviceNode { path: path.clone(), kind, dev: makedev(major, minor), mode: mode & 0o7777, uid: d.uid().unwrap_or(0), gid: d.gid().unwrap_or(0) })
        })
        .collect()
}

fn sys(what: String) -> impl FnOnce(nix::Error) -> ChildError {
    move |e| ChildError::sys(what, e)
}

/// Makes the nodes below `rootfs` (in the child, after the spec's mounts, before pivot_root).
pub fn create(rootfs: &Path, nodes: &[DeviceNode]) -> ChildResult<()> {
    for n in nodes {
        let target = resolve_in_root(rootfs, &n.path)?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ChildError::sys(format!("creating the directory of device {}", n.path), io_errno(&e)))?;
        }
        match mknod(&target, n.kind, Mode::from_bits_truncate(n.mode), n.dev) {
            Ok(()) => {}
            Err(nix::Error::EEXIST) => continue,
            Err(e) => return Err(sys(format!("mknod {} (linux.devices)", n.path))(e)),
        }
        // mknod applied the umask; the spec's mode is exact.
        nix::sys::stat::fchmodat(nix::fcntl::AT_FDCWD, &target, Mode::from_bits_truncate(n.mode), nix::sys::stat::FchmodatFlags::FollowSymlink)
            .map_err(sys(format!("chmod {:o} {}", n.mode, n.path)))?;
        nix::unistd::chown(&target, Some(nix::unistd::Uid::from_raw(n.uid)), Some(nix::unistd::Gid::from_raw(n.gid)))
            .map_err(sys(format!("chown {}:{} {}", n.uid, n.gid, n.path)))?;
    }
    Ok(())
}

fn io_errno(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}
