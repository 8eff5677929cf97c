//! The client against a fake server on a unix socket: what it sends, how it reads answers
//! (whole, in pieces, without Content-Length), errors, timeouts.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::api::{DiskKind, VmState};

/// A socket path in a fresh directory, removed on drop.
struct Sock(PathBuf);

impl Sock {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!("husk-api-client-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        std::fs::create_dir_all(&dir).unwrap();
        Sock(dir.join("api.sock"))
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        if let Some(d) = self.0.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Reads one request (head and Content-Length body) as text.
fn read_request(s: &mut std::os::unix::net::UnixStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map(|v| v.trim().parse().unwrap()).unwrap_or(0);
            if body.len() >= len || n == 0 {
                return text;
            }
        }
        assert!(n > 0, "client closed mid-request: {text:?}");
    }
}

/// Serves one connection: records the request, writes `pieces` with a short pause between
/// them, then closes. Returns the request text.
fn serve_once(sock: &Sock, pieces: Vec<Vec<u8>>) -> JoinHandle<String> {
    let l = UnixListener::bind(&sock.0).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let req = read_request(&mut s);
        for p in pieces {
            s.write_all(&p).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        req
    })
}

fn answer(status: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
}

#[test]
fn attach_sends_the_typed_body_and_decodes_the_slot() {
    let sock = Sock::new();
    let info = r#"{"slot":"slot1","kind":"slot","attached":true,"id":"ctr-2","path":"/img/2.ext4","read_only":true,"sectors":2048}"#;
    let server = serve_once(&sock, vec![answer("200 OK", info)]);
    let c = Client::new(&sock.0);
    let req = AttachDisk { path: "/img/2.ext4".into(), id: "ctr-2".into(), read_only: true };
    let got = c.attach_disk("slot1", &req).unwrap();
    assert_eq!(got.slot, "slot1");
    assert_eq!((got.kind, got.attached, got.sectors, got.read_only), (DiskKind::Slot, true, 2048, true));
    let sent = server.join().unwrap();
    assert!(sent.starts_with("PUT /vm/disks/slot1 HTTP/1.1\r\n"), "{sent}");
    let body = sent.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(serde_json::from_str::<AttachDisk>(body).unwrap(), req);
    assert!(sent.contains(&format!("Content-Length: {}\r\n", body.len())), "{sent}");
}

#[test]
fn an_attach_with_a_descriptor_carries_the_open_image() {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    let sock = Sock::new();
    let image = sock.0.with_file_name("image.raw");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let file = std::fs::File::open(&image).unwrap();
    let l = UnixListener::bind(&sock.0).unwrap();
    let info = r#"{"slot":"slot0","kind":"slot","attached":true,"id":"c","path":"/img/c.ext4","read_only":true,"sectors":8}"#;
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC).unwrap();
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: descriptors just received, owned by nobody else.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let n = msg.bytes;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        s.write_all(&answer("200 OK", info)).unwrap();
        (text, fds)
    });
    let req = AttachDisk { path: "/img/c.ext4".into(), id: "c".into(), read_only: true };
    let got = Client::new(&sock.0).attach_disk_fd("slot0", &req, file.as_fd()).unwrap();
    assert_eq!(got.sectors, 8);
    let (text, fds) = server.join().unwrap();
    assert!(text.starts_with("PUT /vm/disks/slot0 HTTP/1.1\r\n"), "{text}");
    assert_eq!(fds.len(), 1, "one descriptor with the request's first bytes");
    let passed = std::fs::File::from(fds.into_iter().next().unwrap()).metadata().unwrap();
    let ours = std::fs::metadata(&image).unwrap();
    assert_eq!((passed.dev(), passed.ino()), (ours.dev(), ours.ino()), "the descriptor is the image");
}

#[test]
fn each_endpoint_uses_its_method_and_path() {
    let state = |s: &str| format!(r#"{{"state":"{s}"}}"#);
    type Check = Box<dyn Fn(&Client) -> bool>;
    let cases: Vec<(&str, String, Check)> = vec![
        ("GET /vm/counters ", r#"{"block.slot0":{"attaches":1}}"#.into(), Box::new(|c| c.counters().unwrap()["block.slot0"]["attaches"] == 1)),
        ("GET /vm/disks ", "[]".into(), Box::new(|c| c.disks().unwrap().is_empty())),
        ("PUT /vm/pause ", state("paused"), Box::new(|c| c.pause().unwrap().state == VmState::Paused)),
        ("PUT /vm/resume ", state("running"), Box::new(|c| c.resume().unwrap().state == VmState::Running)),
        ("PUT /vm/kill ", state("stopped"), Box::new(|c| c.kill().unwrap().state == VmState::Stopped)),
        (
            "PUT /vm/shutdown ",
            r#"{"state":"shutting-down","sent":"ctrl-alt-del"}"#.into(),
            Box::new(|c| c.shutdown().unwrap().sent.as_deref() == Some("ctrl-alt-del")),
        ),
        (
            "DELETE /vm/disks/slot0 ",
            r#"{"slot":"slot0","kind":"slot","attached":false,"id":"","path":null,"read_only":false,"sectors":0}"#.into(),
            Box::new(|c| !c.detach_disk("slot0").unwrap().attached),
        ),
        (
            "GET /vm ",
            serde_json::to_string(&VmDescription { state: VmState::Running, config: crate::VmConfig::default(), cmdline: "console=ttyS0".into() }).unwrap(),
            Box::new(|c| c.describe().unwrap().cmdline == "console=ttyS0"),
        ),
    ];
    for (line, body, call) in cases {
        let sock = Sock::new();
        let server = serve_once(&sock, vec![answer("200 OK", &body)]);
        assert!(call(&Client::new(&sock.0)), "{line}");
        let sent = server.join().unwrap();
        assert!(sent.starts_with(line), "expected {line:?}, sent {sent:?}");
    }
}

#[test]
fn refusals_carry_status_and_message() {
    let sock = Sock::new();
    let server = serve_once(&sock, vec![answer("409 Conflict", r#"{"error":"slot slot0 is occupied by /img/a.ext4"}"#)]);
    let e = Client::new(&sock.0).attach_disk("slot0", &AttachDisk { path: "/b".into(), id: String::new(), read_only: false }).unwrap_err();
    assert_eq!(e.status(), Some(409));
    let msg = e.to_string();
    assert!(msg.contains("PUT /vm/disks/slot0") && msg.contains("409") && msg.contains("occupied by /img/a.ext4"), "{msg}");
    server.join().unwrap();
}

#[test]
fn answers_in_pieces_and_without_content_length() {
    let sock = Sock::new();
    let whole = answer("200 OK", "[]");
    let pieces = whole.chunks(7).map(<[u8]>::to_vec).collect();
    let server = serve_once(&sock, pieces);
    assert!(Client::new(&sock.0).disks().unwrap().is_empty());
    server.join().unwrap();

    let sock = Sock::new();
    let server = serve_once(&sock, vec![b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"state\":\"paused\"}".to_vec()]);
    assert_eq!(Client::new(&sock.0).pause().unwrap().state, VmState::Paused);
    server.join().unwrap();
}

#[test]
fn malformed_answers_are_errors() {
    for (raw, want) in [
        (b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), "bad status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n[]".to_vec(), "shorter than Content-Length 50"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n[]".to_vec(), "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent".to_vec(), "before the end of the header"),
        (answer("200 OK", "{\"not\":\"a list\"}"), "cannot decode"),
    ] {
        let sock = Sock::new();
        let server = serve_once(&sock, vec![raw]);
        let e = Client::new(&sock.0).disks().unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("GET /vm/disks"), "want {want:?}: {e}");
        server.join().unwrap();
    }
}

#[test]
fn a_silent_server_times_out() {
    let sock = Sock::new();
    let l = UnixListener::bind(&sock.0).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        read_request(&mut s);
        std::thread::sleep(Duration::from_millis(1500));
    });
    let start = Instant::now();
    let e = Client::new(&sock.0).with_timeout(Duration::from_millis(300)).pause().unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert!(start.elapsed() < Duration::from_millis(1200), "took {:?}", start.elapsed());
    server.join().unwrap();
}

#[test]
fn no_server_and_bad_names() {
    let sock = Sock::new();
    let e = Client::new(&sock.0).describe().unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }) && e.to_string().contains("api.sock"), "{e}");
    let e = Client::new(&sock.0).detach_disk("../pause").unwrap_err();
    assert!(matches!(e, ClientError::BadName(ref n) if n == "../pause"), "{e}");
}
