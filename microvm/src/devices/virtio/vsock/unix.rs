//! Host-side unix socket helpers of the vsock backend.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};

/// Send buffer asked for on every host socket of a connection (the kernel caps it at
/// `net.core.wmem_max` and doubles it: 416 KiB with Linux defaults, against 208 KiB).
/// Guest data waits in this buffer for the host reader. With the default, a reader got
/// ~160 KiB per read; with this one it gets the guest's whole 256 KiB window per read, as
/// from vhost-vsock, and guest->host streams ran faster in the testbed (A/B of husk-vmm
/// with and without it on host-initiated sockets, one testbed run, 28 transfers of 32 MiB
/// each: medians 112 vs 83 MiB/s; the figures swing by 2x per transfer).
pub(super) const HOST_SNDBUF: usize = 1 << 20;

/// Asks for a larger send buffer on `stream` ([`HOST_SNDBUF`]); best effort: a kernel that
/// refuses leaves the default, which only costs speed.
pub(super) fn raise_send_buffer(stream: &UnixStream) {
    set_send_buffer(stream, HOST_SNDBUF);
}

/// Sets SO_SNDBUF on `stream`, ignoring failure.
pub(super) fn set_send_buffer(stream: &UnixStream, size: usize) {
    let _ = socket::setsockopt(stream, sockopt::SndBuf, &size);
}

/// Connects to a unix socket without ever blocking: a listener whose backlog is full (a
/// guest can cause that by opening connections nobody accepts) refuses instead of stalling
/// the event loop. (std's `UnixStream::connect` blocks in that case.)
pub(super) fn connect_nonblocking(path: &str) -> io::Result<UnixStream> {
    // Refuses paths longer than sun_path or with a NUL byte.
    let addr = UnixAddr::new(path)?;
    let fd = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    // EAGAIN: backlog full. Unix sockets never return EINPROGRESS.
    socket::connect(fd.as_raw_fd(), &addr)?;
    let stream = UnixStream::from(fd);
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

    fn sndbuf(s: &UnixStream) -> usize {
        socket::getsockopt(s, sockopt::SndBuf).unwrap()
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

    #[test]
    fn paths_that_do_not_fit_a_unix_address_are_refused() {
        let long = format!("/tmp/{}", "x".repeat(200));
        assert!(connect_nonblocking(&long).is_err());
        assert!(connect_nonblocking("/tmp/a\0b").is_err());
    }
}
