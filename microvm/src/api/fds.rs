//! Reading a request together with the descriptors it carries: every read of an API
//! connection is a `recvmsg` with room for [`MAX_FDS`] descriptors, so an SCM_RIGHTS message
//! is never dropped by a plain read. Descriptors arrive close-on-exec and are owned here; the
//! ones a request does not use are closed with it.

use std::io::{self, IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Most descriptors one request may carry (an attach carries its image).
pub const MAX_FDS: usize = 1;

/// A reader of one API connection that keeps the descriptors passed with the bytes.
pub struct FdReader<'a> {
    stream: &'a UnixStream,
    fds: Vec<OwnedFd>,
    /// More descriptors came than [`MAX_FDS`] (the extra ones were closed).
    pub too_many: bool,
}

impl<'a> FdReader<'a> {
    /// Reads from `stream`.
    pub fn new(stream: &'a UnixStream) -> Self {
        FdReader { stream, fds: Vec::new(), too_many: false }
    }

    /// The descriptors received so far.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

impl Read for FdReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(self.stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
        // A truncated control message closed the descriptors that did not fit.
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            self.too_many = true;
        }
        let bytes = msg.bytes;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel just installed this descriptor for us; nothing else
                    // owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if self.fds.len() < MAX_FDS {
                        self.fds.push(owned);
                    } else {
                        self.too_many = true;
                    }
                }
            }
        }
        Ok(bytes)
    }
}
