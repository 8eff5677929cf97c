//! The guest kernel's random state. Every clone restored from one snapshot starts with the same
//! CRNG state, so the host's random bytes are mixed in and credited, and the CRNG is reseeded
//! from the pool at once rather than at its next periodic reseed.
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Once;

use husk_protocol::MAX_RESTORE_ENTROPY;
use nix::errno::Errno;

use crate::error::{AgentError, Result};

/// Where the ioctls go (any fd of the random driver takes them).
const URANDOM: &str = "/dev/urandom";

/// `RNDADDENTROPY`, `_IOW('R', 0x03, int[2])`: mixes a `rand_pool_info`'s bytes into the input
/// pool and credits its `entropy_count` bits (needs CAP_SYS_ADMIN).
const RNDADDENTROPY: libc::Ioctl = nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>());

/// `RNDRESEEDCRNG`, `_IO('R', 0x07)` (Linux 4.17 and later): reseeds the CRNG from the pool now.
const RNDRESEEDCRNG: libc::Ioctl = nix::request_code_none!(b'R', 0x07);

/// `struct rand_pool_info` of `<linux/random.h>` with room for the largest request: the kernel
/// reads the two ints, then `buf_size` bytes right after them.
#[repr(C)]
struct RandPoolInfo {
    /// Bits of entropy to credit.
    entropy_count: libc::c_int,
    /// Bytes of `buf` to mix in.
    buf_size: libc::c_int,
    /// The bytes (the kernel's `__u32 buf[]`, read as bytes).
    buf: [u8; MAX_RESTORE_ENTROPY],
}

// The kernel's layout: two ints, then the buffer.
const _: () = assert!(std::mem::offset_of!(RandPoolInfo, buf) == 2 * std::mem::size_of::<libc::c_int>());

impl RandPoolInfo {
    /// The pool info crediting every bit of `bytes` (at most [`MAX_RESTORE_ENTROPY`] bytes).
    fn new(bytes: &[u8]) -> Result<Self> {
        let too_long = || AgentError::InvalidArgument(format!("entropy of {} bytes: at most {MAX_RESTORE_ENTROPY} bytes expected", bytes.len()));
        if bytes.len() > MAX_RESTORE_ENTROPY {
            return Err(too_long());
        }
        let buf_size = libc::c_int::try_from(bytes.len()).map_err(|_| too_long())?;
        let entropy_count = buf_size.checked_mul(8).ok_or_else(too_long)?;
        let mut info = RandPoolInfo { entropy_count, buf_size, buf: [0; MAX_RESTORE_ENTROPY] };
        info.buf[..bytes.len()].copy_from_slice(bytes);
        Ok(info)
    }
}

/// Mixes `bytes` (checked by [`crate::server::checks::restore_entropy`]) into the kernel's
/// input pool crediting all their bits, then reseeds the CRNG. A kernel without RNDRESEEDCRNG
/// is logged once and otherwise left to reseed on its own.
pub fn credit(bytes: &[u8]) -> Result<()> {
    let info = RandPoolInfo::new(bytes)?;
    let urandom = OpenOptions::new().write(true).open(URANDOM).map_err(|e| AgentError::io(format!("opening {URANDOM}"), e))?;
    // SAFETY: `info` is a live, initialised `struct rand_pool_info` whose `buf_size` bytes all lie
    // inside its `buf`; the kernel only reads it during the call, and `urandom` stays open
    // for the whole call.
    let r = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, &info as *const RandPoolInfo) };
    Errno::result(r).map_err(|e| AgentError::sys(format!("crediting {} bytes of entropy (RNDADDENTROPY on {URANDOM})", bytes.len()), e))?;
    reseed(urandom.as_fd())
}

/// Reseeds the CRNG from the input pool (RNDRESEEDCRNG); EINVAL or ENOTTY (a kernel without
/// the ioctl) is logged once and taken as done.
fn reseed(random: BorrowedFd<'_>) -> Result<()> {
    static UNSUPPORTED: Once = Once::new();
    // SAFETY: RNDRESEEDCRNG takes no argument; `random` is an open fd for the whole call.
    let r = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) };
    match Errno::result(r) {
        Ok(_) => Ok(()),
        Err(e @ (Errno::EINVAL | Errno::ENOTTY)) => {
            UNSUPPORTED.call_once(|| log::warn!("the kernel has no RNDRESEEDCRNG ({e}); the credited entropy reaches the CRNG at its next reseed"));
            Ok(())
        }
        Err(e) => Err(AgentError::sys(format!("reseeding the kernel CRNG (RNDRESEEDCRNG on {URANDOM})"), e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        let (add, reseed): (libc::Ioctl, libc::Ioctl) = (0x4008_5203, 0x5207);
        assert_eq!((RNDADDENTROPY, RNDRESEEDCRNG), (add, reseed));
    }

    #[test]
    fn pool_info_credits_every_byte() {
        let bytes: Vec<u8> = (1..=64).collect();
        let info = RandPoolInfo::new(&bytes).unwrap();
        assert_eq!((info.entropy_count, info.buf_size), (512, 64));
        assert_eq!(&info.buf[..64], &bytes[..]);
        assert!(info.buf[64..].iter().all(|b| *b == 0));
        let full = RandPoolInfo::new(&[7; MAX_RESTORE_ENTROPY]).unwrap();
        assert_eq!(full.buf_size as usize, MAX_RESTORE_ENTROPY);
        let err = RandPoolInfo::new(&[0; MAX_RESTORE_ENTROPY + 1]).err().unwrap();
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
    }
}
