//! Creating a tap in the calling thread's network namespace. The tap is not persistent: it
//! lives exactly as long as a descriptor of it is open, so once the shim hands its descriptor
//! to husk-vmm and closes its own, a VMM that dies takes its tap with it.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::NetworkError;

const TUN_DEVICE: &str = "/dev/net/tun";
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// Every frame carries a virtio-net header (husk-vmm's virtio-net expects it).
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Creates tap `name` (which must not exist: the caller checked) and returns its descriptor
/// (close-on-exec; the VMM spawn makes it inheritable for husk-vmm only).
pub fn create(name: &str) -> Result<File, NetworkError> {
    let err = |source| NetworkError::Tap { name: name.into(), source };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(err(std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(TUN_DEVICE).map_err(err)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a valid, exclusively
    // borrowed ifreq that outlives the call, and the descriptor is ours.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut libc::ifreq) };
    if r < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(file)
}
