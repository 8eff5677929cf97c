//! Host-side unix socket helpers of the vsock backend.

use std::io;
use std::os::unix::net::UnixStream;

/// Connects to a unix socket without ever blocking: a listener whose backlog is full (a
/// guest can cause that by opening connections nobody accepts) refuses instead of stalling
/// the event loop. (std's `UnixStream::connect` blocks in that case.)
pub(super) fn connect_nonblocking(path: &str) -> io::Result<UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket(2); the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid, initialised sockaddr_un and the length is its size.
    let r = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r < 0 {
        // EAGAIN: backlog full. Unix sockets never return EINPROGRESS.
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// Parses `CONNECT <port>` (the newline already stripped).
pub(super) fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let port = s.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}
