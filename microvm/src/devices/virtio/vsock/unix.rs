//! Host-side unix socket helpers of the vsock backend.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// Send buffer asked for on every host socket of a connection (the kernel caps it at
/// `net.core.wmem_max` and doubles it: 416 KiB with Linux defaults, against 208 KiB).
/// Guest data waits in this buffer for the host reader. With the default, a reader got
/// ~160 KiB per read; with this one it gets the guest's whole 256 KiB window per read, as
/// from vhost-vsock, and guest->host streams ran faster in the testbed (A/B of husk-vmm
/// with and without it on host-initiated sockets, one testbed run, 28 transfers of 32 MiB
/// each: medians 112 vs 83 MiB/s; the figures swing by 2x per transfer).
pub(super) const HOST_SNDBUF: libc::c_int = 1 << 20;

/// Asks for a larger send buffer on `stream` ([`HOST_SNDBUF`]); best effort: a kernel that
/// refuses leaves the default, which only costs speed.
pub(super) fn raise_send_buffer(stream: &UnixStream) {
    set_send_buffer(stream, HOST_SNDBUF);
}

/// Sets SO_SNDBUF on `stream`, ignoring failure.
pub(super) fn set_send_buffer(stream: &UnixStream, size: libc::c_int) {
    // SAFETY: setsockopt(2) on a socket we own, reading one c_int of the given size.
    let _ = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

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
    let stream = UnixStream::from(owned);
    raise_send_buffer(&stream);
    Ok(stream)
}

/// Parses `CONNECT <port>` (the newline already stripped).
pub(super) fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let port = s.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sndbuf(s: &UnixStream) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt(2) writing one c_int into `v`, whose size `len` gives.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0);
        v
    }

    #[test]
    fn host_sockets_get_a_larger_send_buffer() {
        let dir = std::env::temp_dir().join(format!("husk-vsock-unix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (plain, _) = UnixStream::pair().unwrap();
        let ours = connect_nonblocking(path.to_str().unwrap()).unwrap();
        assert!(sndbuf(&ours) > sndbuf(&plain), "{} vs default {}", sndbuf(&ours), sndbuf(&plain));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
