//! A blocking client of the husk-vmm control API: HTTP/1.1 over a `UnixStream`, one request
//! per connection, every write and read of one request bounded by one timeout; an attach can
//! carry the image as a descriptor (SCM_RIGHTS, through nix's `sendmsg`: std cannot send
//! ancillary data on stable).
//!
//! Written by hand because the protocol is the small subset microvm/API.md fixes (bodies with
//! `Content-Length`, `Connection: close`, JSON): HTTP client crates are built around TCP and,
//! most of them, an async runtime the shim's callers would not otherwise need here.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::{disk_path, is_plain_name, AttachDisk, Counters, DiskInfo, ErrorBody, StateChange, VmDescription, COUNTERS_PATH, DISKS_PATH, VM_PATH};

/// Timeout of one request unless [`Client::with_timeout`] sets another.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer accepted (`GET /vm` with a large configuration stays far below).
const MAX_RESPONSE: usize = 1 << 20;
/// Longest answer head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A request to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (the VMM is not running, or the path is wrong).
    #[error("cannot connect to the husk-vmm API socket {sock:?}")]
    Connect {
        /// The socket.
        sock: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Writing the request or reading the answer failed.
    #[error("{method} {path}: I/O on the API socket failed")]
    Io {
        /// Request method.
        method: &'static str,
        /// Request path.
        path: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// No complete answer within the timeout.
    #[error("{method} {path}: no complete answer within {timeout:?}")]
    Timeout {
        /// Request method.
        method: &'static str,
        /// Request path.
        path: String,
        /// The client's timeout.
        timeout: Duration,
    },
    /// The answer is not the HTTP the server sends.
    #[error("{method} {path}: malformed answer: {reason}")]
    BadResponse {
        /// Request method.
        method: &'static str,
        /// Request path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The VMM refused the request (4xx) or failed it (5xx); `message` is its explanation.
    #[error("{method} {path}: HTTP {status}: {message}")]
    Api {
        /// Request method.
        method: &'static str,
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The `error` of the answer's body (or the body itself if it is not an error body).
        message: String,
    },
    /// A success answer whose body does not match the expected type.
    #[error("{method} {path}: cannot decode the answer")]
    Decode {
        /// Request method.
        method: &'static str,
        /// Request path.
        path: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The request body cannot be written as JSON (a path that is not UTF-8).
    #[error("{method} {path}: cannot encode the request body")]
    Encode {
        /// Request method.
        method: &'static str,
        /// Request path.
        path: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A disk name that cannot be put into a request path as it is.
    #[error("disk name {0:?} cannot be used in a request path (letters, digits, '-', '_' and '.' only)")]
    BadName(String),
}

impl ClientError {
    /// The HTTP status of a refused request (404 no such slot, 409 occupied or empty, ...).
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one VMM's API socket. Cheap to clone; holds no connection.
#[derive(Clone, Debug)]
pub struct Client {
    sock: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the API socket at `sock` with [`DEFAULT_TIMEOUT`].
    pub fn new(sock: impl Into<PathBuf>) -> Self {
        Client { sock: sock.into(), timeout: DEFAULT_TIMEOUT }
    }

    /// The same client with another timeout per request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// `GET /vm`: state, configuration and kernel command line.
    pub fn describe(&self) -> Result<VmDescription, ClientError> {
        self.json("GET", VM_PATH, None)
    }

    /// `PUT /vm/pause`: returns once every vCPU is parked.
    pub fn pause(&self) -> Result<StateChange, ClientError> {
        self.json("PUT", "/vm/pause", None)
    }

    /// `PUT /vm/resume`.
    pub fn resume(&self) -> Result<StateChange, ClientError> {
        self.json("PUT", "/vm/resume", None)
    }

    /// `PUT /vm/shutdown`: Ctrl-Alt-Del to the guest; does not wait for it.
    pub fn shutdown(&self) -> Result<StateChange, ClientError> {
        self.json("PUT", "/vm/shutdown", None)
    }

    /// `PUT /vm/kill`: husk-vmm exits right after answering.
    pub fn kill(&self) -> Result<StateChange, ClientError> {
        self.json("PUT", "/vm/kill", None)
    }

    /// `PUT /vm/snapshot`: saves the paused VM into the existing directory `dir`.
    pub fn snapshot(&self, dir: &std::path::Path) -> Result<super::SnapshotDone, ClientError> {
        let path = super::SNAPSHOT_PATH.to_string();
        let req = super::SnapshotRequest { dir: dir.to_path_buf() };
        let body = serde_json::to_vec(&req).map_err(|source| ClientError::Encode { method: "PUT", path: path.clone(), source })?;
        self.json("PUT", &path, Some(&body))
    }

    /// `GET /vm/counters`.
    pub fn counters(&self) -> Result<Counters, ClientError> {
        self.json("GET", COUNTERS_PATH, None)
    }

    /// `GET /vm/disks`: every boot disk and slot, in the order the guest sees them.
    pub fn disks(&self) -> Result<Vec<DiskInfo>, ClientError> {
        self.json("GET", DISKS_PATH, None)
    }

    /// `GET /vm/disks/<name>`.
    pub fn disk(&self, name: &str) -> Result<DiskInfo, ClientError> {
        self.json("GET", &named(name)?, None)
    }

    /// `PUT /vm/disks/<slot>`: attaches an image to an empty slot; the guest learns of it
    /// through a config-change interrupt (asynchronously: poll its size to know it did).
    pub fn attach_disk(&self, slot: &str, req: &AttachDisk) -> Result<DiskInfo, ClientError> {
        let path = named(slot)?;
        let body = serde_json::to_vec(req).map_err(|source| ClientError::Encode { method: "PUT", path: path.clone(), source })?;
        self.json("PUT", &path, Some(&body))
    }

    /// `PUT /vm/disks/<slot>` with the image open in this process: `image` travels with the
    /// request (SCM_RIGHTS), so husk-vmm opens nothing (`req.path` only names the image). A
    /// read-write attachment needs `image` open for reading and writing.
    pub fn attach_disk_fd(&self, slot: &str, req: &AttachDisk, image: BorrowedFd<'_>) -> Result<DiskInfo, ClientError> {
        let path = named(slot)?;
        let body = serde_json::to_vec(req).map_err(|source| ClientError::Encode { method: "PUT", path: path.clone(), source })?;
        let (status, answer) = self.exchange_with("PUT", &path, Some(&body), Some(image))?;
        decode("PUT", &path, status, &answer)
    }

    /// `DELETE /vm/disks/<slot>`: detaches the slot's image (the guest must have stopped
    /// using it: later requests fail with an I/O error).
    pub fn detach_disk(&self, slot: &str) -> Result<DiskInfo, ClientError> {
        self.json("DELETE", &named(slot)?, None)
    }

    /// Sends one request and decodes a 2xx answer's JSON body as `T`.
    fn json<T: DeserializeOwned>(&self, method: &'static str, path: &str, body: Option<&[u8]>) -> Result<T, ClientError> {
        let (status, answer) = self.exchange(method, path, body)?;
        decode(method, path, status, &answer)
    }

    /// Sends one request; returns the status and body of the answer.
    pub fn exchange(&self, method: &'static str, path: &str, body: Option<&[u8]>) -> Result<(u16, Vec<u8>), ClientError> {
        self.exchange_with(method, path, body, None)
    }

    /// Sends one request, with `fd` attached to its first bytes (SCM_RIGHTS) if given.
    fn exchange_with(&self, method: &'static str, path: &str, body: Option<&[u8]>, fd: Option<BorrowedFd<'_>>) -> Result<(u16, Vec<u8>), ClientError> {
        let start = Instant::now();
        let io_err = |source: io::Error| {
            if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                ClientError::Timeout { method, path: path.to_string(), timeout: self.timeout }
            } else {
                ClientError::Io { method, path: path.to_string(), source }
            }
        };
        let bad = |reason: String| ClientError::BadResponse { method, path: path.to_string(), reason };
        let mut s = UnixStream::connect(&self.sock).map_err(|source| ClientError::Connect { sock: self.sock.clone(), source })?;
        s.set_write_timeout(Some(self.timeout)).map_err(io_err)?;
        let len = body.map_or(0, <[u8]>::len);
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {len}\r\n").into_bytes();
        if body.is_some() {
            req.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body.unwrap_or_default());
        let sent = match fd {
            Some(fd) => send_with_fd(&s, &req, fd).map_err(io_err)?,
            None => 0,
        };
        s.write_all(&req[sent..]).map_err(io_err)?;

        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(done) = parse_response(&buf, false).map_err(bad)? {
                return Ok(done);
            }
            let left = self.timeout.checked_sub(start.elapsed()).filter(|d| !d.is_zero());
            let Some(left) = left else {
                return Err(ClientError::Timeout { method, path: path.to_string(), timeout: self.timeout });
            };
            s.set_read_timeout(Some(left)).map_err(io_err)?;
            match s.read(&mut chunk) {
                Ok(0) => {
                    return parse_response(&buf, true).map_err(bad)?.ok_or_else(|| bad("connection closed before the end of the answer".into()));
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > MAX_RESPONSE {
                        return Err(bad(format!("longer than {MAX_RESPONSE} bytes")));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
    }
}

/// Decodes a 2xx answer's JSON body as `T`; any other status is the VMM's refusal.
fn decode<T: DeserializeOwned>(method: &'static str, path: &str, status: u16, answer: &[u8]) -> Result<T, ClientError> {
    if !(200..300).contains(&status) {
        let message = match serde_json::from_slice::<ErrorBody>(answer) {
            Ok(e) => e.error,
            Err(_) => String::from_utf8_lossy(answer).trim().to_string(),
        };
        return Err(ClientError::Api { method, path: path.to_string(), status, message });
    }
    serde_json::from_slice(answer).map_err(|source| ClientError::Decode { method, path: path.to_string(), source })
}

/// Sends the first bytes of `data` with `fd` as SCM_RIGHTS; returns how many were sent (the
/// rest goes as plain writes: the descriptor travels with the first segment only).
fn send_with_fd(s: &UnixStream, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    loop {
        match sendmsg::<()>(s.as_raw_fd(), &[io::IoSlice::new(data)], &[ControlMessage::ScmRights(&fds)], MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn named(name: &str) -> Result<String, ClientError> {
    if !is_plain_name(name) {
        return Err(ClientError::BadName(name.to_string()));
    }
    Ok(disk_path(name))
}

/// Parses an answer received so far: `Ok(None)` while it is incomplete (`eof`: the server
/// closed the connection, nothing more comes). A body without `Content-Length` ends at EOF.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(format!("header longer than {MAX_HEAD} bytes"));
        }
        return if eof { Err("connection closed before the end of the header".into()) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| "header is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let status = code.parse::<u16>().ok().filter(|c| (100..600).contains(c));
    let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
        return Err(format!("bad status line {status_line:?}"));
    };
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            let n = value.trim().parse::<usize>().map_err(|_| format!("bad Content-Length {:?}", value.trim()))?;
            if n > MAX_RESPONSE {
                return Err(format!("Content-Length {n} is more than {MAX_RESPONSE}"));
            }
            content_length = Some(n);
        }
    }
    let body = &buf[head_len + 4..];
    match content_length {
        Some(n) if body.len() >= n => Ok(Some((status, body[..n].to_vec()))),
        Some(n) if eof => Err(format!("body of {} bytes is shorter than Content-Length {n}", body.len())),
        Some(_) => Ok(None),
        None if eof || status == 204 => Ok(Some((status, body.to_vec()))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
