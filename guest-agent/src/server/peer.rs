//! Who may talk to the agent. On vsock only the host may: a connection whose peer is not
//! CID 2 (VMADDR_CID_HOST) is closed before ttrpc reads a byte of it. The guest kernel has no
//! vsock loopback and containers cannot open vsock sockets ([`crate::container::vsock`]); this
//! check holds even if one of those layers fails.
use std::os::fd::RawFd;

use nix::sys::socket::{getpeername, SockaddrLike, SockaddrStorage};
use ttrpc::{AcceptHook, HookError, HookOutput};

/// The host's vsock CID.
pub const HOST_CID: u32 = libc::VMADDR_CID_HOST;

/// Accepts only vsock connections from the host.
#[derive(Debug, Default)]
pub struct HostOnly;

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// getpeername failed.
    #[error("reading the peer address of an accepted connection")]
    PeerName(#[source] nix::Error),
    /// The connection is not a vsock connection.
    #[error("the peer is not a vsock socket (address family {0})")]
    NotVsock(i32),
    /// A vsock peer other than the host.
    #[error("vsock peer CID {cid} (port {port}) is not the host (CID {HOST_CID})")]
    NotHost {
        /// The peer's CID.
        cid: u32,
        /// The peer's port.
        port: u32,
    },
}

/// Checks the peer of the connected socket `fd`: the host's vsock CID, or an error naming it.
pub fn check_peer(fd: RawFd) -> Result<(), PeerError> {
    let addr: SockaddrStorage = getpeername(fd).map_err(PeerError::PeerName)?;
    let Some(vsock) = addr.as_vsock_addr() else {
        return Err(PeerError::NotVsock(addr.family().map_or(-1, |f| f as i32)));
    };
    if vsock.cid() != HOST_CID {
        return Err(PeerError::NotHost { cid: vsock.cid(), port: vsock.port() });
    }
    Ok(())
}

impl AcceptHook for HostOnly {
    fn on_accept(&self, fd: RawFd) -> Result<HookOutput, HookError> {
        match check_peer(fd) {
            Ok(()) => Ok(HookOutput { data: Default::default(), payload_transform: None }),
            Err(e) => {
                let msg = crate::error::chain(&e);
                log::warn!("refused a connection: {msg}");
                Err(HookError::Rejected(msg))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_unix_peer_is_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = check_peer(a.as_raw_fd()).unwrap_err();
        assert!(matches!(err, PeerError::NotVsock(f) if f == libc::AF_UNIX), "{err:?}");
        assert!(HostOnly.on_accept(a.as_raw_fd()).is_err());
    }

    #[test]
    fn an_unconnected_socket_is_refused() {
        let l = std::os::unix::net::UnixListener::bind(std::env::temp_dir().join(format!("husk-peer-{}.sock", std::process::id()))).unwrap();
        let err = check_peer(l.as_raw_fd()).unwrap_err();
        assert!(matches!(err, PeerError::PeerName(nix::Error::ENOTCONN)), "{err:?}");
        let _ = std::fs::remove_file(l.local_addr().unwrap().as_pathname().unwrap());
    }
}
