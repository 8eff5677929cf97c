//! Opening and configuring a tap device, optionally inside another network namespace, or
//! taking over one the parent opened and passed as a descriptor.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::VNET_HDR_SIZE;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// Offload flag: checksum offload.
pub const TUN_F_CSUM: u32 = 0x01;
/// Offload flag: TSOv4.
pub const TUN_F_TSO4: u32 = 0x02;
/// Offload flag: TSOv6.
pub const TUN_F_TSO6: u32 = 0x04;

/// Why a tap could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name does not fit `IFNAMSIZ` or has a NUL byte.
    #[error("invalid tap name {0:?}: 1 to 15 bytes without NUL")]
    InvalidName(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun for tap {name}")]
    OpenTun {
        /// Tap name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An ioctl failed.
    #[error("{op} failed on tap {name}")]
    Ioctl {
        /// Tap name.
        name: String,
        /// Which ioctl.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An inherited descriptor is not a tap of the expected kind.
    #[error("descriptor {fd} given for tap {name} is {what}")]
    BadFd {
        /// The descriptor number.
        fd: RawFd,
        /// The tap name the configuration expects.
        name: String,
        /// What is wrong with it.
        what: String,
    },
    /// The network namespace could not be entered.
    #[error("cannot enter network namespace {path} to open tap {name}")]
    Netns {
        /// Namespace path.
        path: PathBuf,
        /// Tap name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// An open tap with a virtio-net header on every frame.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (creating if needed) tap `name`, in network namespace `netns` if given: the
    /// tap is opened on a short-lived helper thread that enters the namespace, so the VMM's
    /// own threads stay where they are.
    pub fn open(name: &str, netns: Option<&Path>) -> Result<Self, TapError> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(TapError::InvalidName(name.to_string()));
        }
        let Some(ns) = netns else {
            return Self::open_here(name);
        };
        let ns = ns.to_path_buf();
        let owned = name.to_string();
        let joined = crate::thread_builder("tap-netns")
            .spawn(move || {
                let nsfile = File::open(&ns).map_err(|source| TapError::Netns { path: ns.clone(), name: owned.clone(), source })?;
                // SAFETY: setns on a valid fd we own; it only changes this helper thread's
                // network namespace, and the thread ends right after opening the tap.
                let r = unsafe { libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) };
                if r != 0 {
                    return Err(TapError::Netns { path: ns, name: owned, source: io::Error::last_os_error() });
                }
                Self::open_here(&owned)
            })
            .map_err(|source| TapError::OpenTun { name: name.to_string(), source })?
            .join();
        joined.unwrap_or_else(|_| Err(TapError::OpenTun { name: name.to_string(), source: io::Error::other("tap helper thread panicked") }))
    }

    /// Takes over tap `name`, open in the parent and inherited as descriptor `fd`. The
    /// descriptor must be a tap opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` whose
    /// interface is called `name`; it becomes close-on-exec and non-blocking.
    pub fn from_fd(fd: RawFd, name: &str) -> Result<Self, TapError> {
        let bad = |what: String| TapError::BadFd { fd, name: name.to_string(), what };
        if fd < 3 {
            return Err(bad("stdio".into()));
        }
        let mut req = IfReq { name: [0; 16], flags: 0, _pad: [0; 22] };
        // SAFETY: TUNGETIFF writes one `struct ifreq` into `req` (valid, 40 bytes, outlives the
        // call); on a descriptor that is not open, or not a tun device, it fails without
        // touching anything.
        let r = unsafe { libc::ioctl(fd, TUNGETIFF, &mut req as *mut IfReq) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(bad(match e.raw_os_error() {
                Some(libc::EBADF) => "not open (was it inherited?)".into(),
                _ => format!("not a tap ({e})"),
            }));
        }
        let end = req.name.iter().position(|b| *b == 0).unwrap_or(req.name.len());
        let got = String::from_utf8_lossy(&req.name[..end]).into_owned();
        if got != name {
            return Err(bad(format!("tap {got:?}, not {name:?}")));
        }
        let want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if req.flags & want != want {
            return Err(bad(format!("opened with flags {:#x}; IFF_TAP, IFF_NO_PI and IFF_VNET_HDR are needed", req.flags)));
        }
        // SAFETY: `fd` is an open tun descriptor (TUNGETIFF succeeded) that nothing else in
        // this process owns: the configuration gives each descriptor and each tap name to one
        // device only, so no tap the VMM opened itself has this name.
        let file = unsafe { File::from_raw_fd(fd) };
        let tap = Self { file, name: name.to_string() };
        // SAFETY: fcntl on a descriptor we own; F_SETFD/F_SETFL take an int argument.
        let r = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        tap.check(r, "F_SETFD")?;
        // SAFETY: as above.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        tap.check(flags, "F_GETFL")?;
        // SAFETY: as above.
        let r = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
        tap.check(r, "F_SETFL")?;
        tap.set_vnet_hdr_size()?;
        Ok(tap)
    }

    fn set_vnet_hdr_size(&self) -> Result<(), TapError> {
        let hdr: libc::c_int = VNET_HDR_SIZE as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
        let r = unsafe { libc::ioctl(self.fd(), TUNSETVNETHDRSZ, &hdr as *const libc::c_int) };
        self.check(r, "TUNSETVNETHDRSZ")
    }

    fn open_here(name: &str) -> Result<Self, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun { name: name.to_string(), source })?;
        let mut req = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let tap = Self { file, name: name.to_string() };
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a valid, properly
        // sized (40 bytes) and aligned ifreq that outlives the call.
        let r = unsafe { libc::ioctl(tap.fd(), TUNSETIFF, &mut req as *mut IfReq) };
        tap.check(r, "TUNSETIFF")?;
        tap.set_vnet_hdr_size()?;
        Ok(tap)
    }

    /// Enables the given `TUN_F_*` offloads (what the guest can receive).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let r = unsafe { libc::ioctl(self.fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
        self.check(r, "TUNSETOFFLOAD")
    }

    fn check(&self, r: libc::c_int, op: &'static str) -> Result<(), TapError> {
        if r < 0 {
            return Err(TapError::Ioctl { name: self.name.clone(), op, source: io::Error::last_os_error() });
        }
        Ok(())
    }

    /// The tap's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap file (frames are read and written whole, header first).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
