//! The host side of husk-vmm's hybrid vsock (Firecracker convention): connect to the unix
//! socket, send `CONNECT <port>\n`, read `OK <hostport>\n`; the stream is then the guest
//! connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::VmError;

/// Longest acknowledgement line accepted (`OK 4294967295\n` is 14 bytes).
const MAX_ACK: usize = 32;

/// Opens a stream to guest vsock `port` through the VMM socket `uds`. `timeout` bounds the
/// handshake; the returned stream is blocking without timeouts.
pub fn connect_hybrid_vsock(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VmError> {
    let io = |op| move |source| VmError::VsockIo { op, uds: uds.to_path_buf(), source };
    let mut stream = UnixStream::connect(uds).map_err(io("connect"))?;
    stream.set_read_timeout(Some(timeout)).map_err(io("set timeout"))?;
    stream.set_write_timeout(Some(timeout)).map_err(io("set timeout"))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).map_err(io("write CONNECT"))?;
    // Read byte by byte: anything after the newline already belongs to the guest stream.
    let mut line = Vec::with_capacity(MAX_ACK);
    let mut byte = [0u8; 1];
    loop {
        let n = stream.read(&mut byte).map_err(io("read acknowledgement"))?;
        if n == 0 {
            return Err(handshake(uds, port, format!("connection closed after {:?}", String::from_utf8_lossy(&line))));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_ACK {
            return Err(handshake(uds, port, format!("acknowledgement too long: {:?}", String::from_utf8_lossy(&line))));
        }
    }
    let text = String::from_utf8_lossy(&line);
    let ok = text.strip_prefix("OK ").map(|p| p.trim().parse::<u32>().is_ok()).unwrap_or(false);
    if !ok {
        return Err(handshake(uds, port, format!("unexpected reply {text:?}")));
    }
    stream.set_read_timeout(None).map_err(io("clear timeout"))?;
    stream.set_write_timeout(None).map_err(io("clear timeout"))?;
    Ok(stream)
}

fn handshake(uds: &Path, port: u32, reason: String) -> VmError {
    VmError::Handshake { uds: uds.to_path_buf(), port, reason }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    fn serve(reply: &'static [u8]) -> (tempfile::TempDir, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            (&s).write_all(reply).unwrap();
            (&s).write_all(b"payload").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            line
        });
        (dir, h)
    }

    #[test]
    fn handshake_succeeds_and_keeps_following_bytes() {
        let (dir, h) = serve(b"OK 1073741824\n");
        let mut s = connect_hybrid_vsock(&dir.path().join("v.sock"), 1024, Duration::from_secs(5)).unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"payload");
        assert_eq!(h.join().unwrap(), "CONNECT 1024\n");
    }

    #[test]
    fn bad_reply_is_rejected_with_the_reply() {
        let (dir, _h) = serve(b"NO such port\n");
        let e = connect_hybrid_vsock(&dir.path().join("v.sock"), 7, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("NO such port") && e.to_string().contains("port 7"), "{e}");
    }

    #[test]
    fn missing_socket_names_the_path() {
        let e = connect_hybrid_vsock(Path::new("/nonexistent/v.sock"), 1024, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/v.sock"), "{e}");
    }
}
