//! Guest side of the vsock end-to-end tests.
//!
//! ```text
//! vsock-tool serve PORT               accept connections forever; per connection read to EOF,
//!                                     then reply "<bytes> <checksum>\n" and close
//! vsock-tool source PORT              accept connections forever; per connection read a line
//!                                     "<bytes>\n", send that many pattern bytes, close
//! vsock-tool send CID PORT BYTES      connect, send BYTES pattern bytes, half-close, print the
//!                                     reply line (the host's "<bytes> <checksum>")
//! vsock-tool connect CID PORT         connect and print "connected" or the errno name
//! vsock-tool sum BYTES                print "<bytes> <checksum>" of the pattern
//! vsock-tool wait PORT                accept one connection, then exit 0
//! vsock-tool now                      print CLOCK_MONOTONIC in seconds, to the microsecond
//!                                     (benchmarks: busybox date has no %N)
//! vsock-tool sink PORT                (benchmarks) accept connections forever; per connection
//!                                     read to EOF without checking, reply "<bytes>\n"
//! vsock-tool tcp-sink PORT            the same over TCP (IPv4, any address)
//! vsock-tool spout PORT               (benchmarks) accept connections forever; per connection
//!                                     read a line "<bytes>\n", send that many unchecked bytes
//!                                     in 256 KiB writes, half-close, wait for the peer's EOF
//! vsock-tool tcp-send IP PORT BYTES   (benchmarks) connect over TCP, send BYTES bytes in 256 KiB
//!                                     writes, half-close, print the reply line
//! vsock-tool tcp-serve PORT COUNT     like serve, over TCP (IPv4, any address), for COUNT
//!                                     connections one after another, then exit
//! vsock-tool tcp-put IP PORT BYTES    like send, over TCP: BYTES pattern bytes, half-close,
//!                                     print "sent <checksum> reply <the peer's reply>"
//! ```
//! VSOCK_BUF=<bytes> in the environment sets SO_VM_SOCKETS_BUFFER_SIZE on every vsock socket.
//! The pattern is byte i = T[i mod 65521] with T[k] = ((k*k*31 + k*7 + 13) >> 3) mod 256; the
//! checksum is CRC-32 (zlib's), so the host side can check with Python's zlib quickly.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

const PERIOD: u64 = 65521;

fn pattern(i: u64) -> u8 {
    let k = i % PERIOD;
    (((k * k * 31 + k * 7 + 13) >> 3) & 0xff) as u8
}

/// CRC-32 (IEEE, reflected, as zlib.crc32).
struct Fnv(u32, [u32; 256]);

impl Fnv {
    fn new() -> Self {
        let mut t = [0u32; 256];
        for (n, e) in t.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        Fnv(0xffff_ffff, t)
    }
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = self.1[((self.0 ^ u32::from(b)) & 0xff) as usize] ^ (self.0 >> 8);
        }
    }
    fn value(&self) -> u32 {
        self.0 ^ 0xffff_ffff
    }
}

fn sockaddr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

/// `SO_VM_SOCKETS_BUFFER_SIZE` (linux/vm_sockets.h; not in the libc crate), level AF_VSOCK.
const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let s = unsafe { OwnedFd::from_raw_fd(fd) };
    // VSOCK_BUF: the socket's buffer size (accepted sockets inherit the listener's).
    if let Some(size) = std::env::var("VSOCK_BUF").ok().and_then(|v| v.parse::<u64>().ok()) {
        use std::os::fd::AsRawFd;
        // SAFETY: setsockopt with a pointer to a live u64 and its size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::AF_VSOCK,
                SO_VM_SOCKETS_BUFFER_SIZE,
                &size as *const u64 as *const libc::c_void,
                std::mem::size_of::<u64>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(s)
}

fn connect(cid: u32, port: u32) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let s = vsock_socket()?;
    let a = sockaddr(cid, port);
    // SAFETY: `a` is a valid sockaddr_vm of the given size.
    let r = unsafe {
        libc::connect(
            s.as_raw_fd(),
            &a as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::fs::File::from(s))
}

fn listen(port: u32) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let s = vsock_socket()?;
    let a = sockaddr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm of the given size.
    let r = unsafe {
        libc::bind(
            s.as_raw_fd(),
            &a as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as u32,
        )
    };
    // SAFETY: listen on our own socket.
    if r < 0 || unsafe { libc::listen(s.as_raw_fd(), 64) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

fn accept(l: &OwnedFd) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    // SAFETY: accept on our listening socket without peer address.
    let fd = unsafe { libc::accept4(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor from accept.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn shutdown_write(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown on a socket we own.
    unsafe { libc::shutdown(f.as_raw_fd(), libc::SHUT_WR) };
}

fn send_pattern<W: Write>(f: &mut W, bytes: u64) -> io::Result<Fnv> {
    let mut h = Fnv::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < bytes {
        let n = (bytes - off).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(off + i as u64);
        }
        f.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h)
}

fn drain<R: Read>(f: &mut R) -> io::Result<(u64, Fnv)> {
    let mut h = Fnv::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((total, h));
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// Reads `r` to EOF in 256 KiB reads; returns the byte count (benchmarks: no checksum, so
/// the guest's CPU does not limit the figure).
fn discard<R: Read>(r: &mut R) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes `bytes` unchecked bytes to `w` in 256 KiB writes (benchmarks).
fn fill<W: Write>(w: &mut W, bytes: u64) -> io::Result<()> {
    let buf = vec![0x5au8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..k])?;
        left -= k as u64;
    }
    Ok(())
}

/// Serves every connection `accept` returns on its own thread; exits the process if accept fails.
fn serve_forever<S: Send + 'static>(
    mut accept: impl FnMut() -> io::Result<S>,
    each: impl Fn(S) + Send + Copy + 'static,
) -> ! {
    loop {
        match accept() {
            Ok(c) => {
                std::thread::spawn(move || each(c));
            }
            Err(e) => die("accept", e),
        }
    }
}

/// Reads to EOF, then replies with the byte count.
fn discard_and_count<S: Read + Write>(mut c: S) {
    if let Ok(n) = discard(&mut c) {
        let _ = writeln!(c, "{n}");
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    match args.get(i).and_then(|s| s.parse().ok()) {
        Some(v) => v,
        None => {
            eprintln!("vsock-tool: missing or invalid {what}");
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("");
    let r: io::Result<()> = match cmd {
        "serve" => {
            let l = listen(arg(&args, 2, "PORT")).unwrap_or_else(|e| die("listen", e));
            println!("listening");
            loop {
                let mut c = match accept(&l) {
                    Ok(c) => c,
                    Err(e) => die("accept", e),
                };
                std::thread::spawn(move || {
                    if let Ok((n, h)) = drain(&mut c) {
                        let _ = writeln!(c, "{n} {:08x}", h.value());
                    }
                });
            }
        }
        "source" => {
            let l = listen(arg(&args, 2, "PORT")).unwrap_or_else(|e| die("listen", e));
            println!("listening");
            loop {
                let c = match accept(&l) {
                    Ok(c) => c,
                    Err(e) => die("accept", e),
                };
                std::thread::spawn(move || {
                    let mut line = String::new();
                    let mut r = BufReader::new(c);
                    if r.read_line(&mut line).is_ok() {
                        if let Ok(n) = line.trim().parse::<u64>() {
                            let mut c = r.into_inner();
                            let _ = send_pattern(&mut c, n);
                        }
                    }
                });
            }
        }
        "send" => (|| {
            let mut c = connect(arg(&args, 2, "CID"), arg(&args, 3, "PORT"))?;
            let h = send_pattern(&mut c, arg(&args, 4, "BYTES"))?;
            shutdown_write(&c);
            let mut reply = String::new();
            c.read_to_string(&mut reply)?;
            println!("sent {:08x} reply {}", h.value(), reply.trim());
            Ok(())
        })(),
        "sink" => {
            let l = listen(arg(&args, 2, "PORT")).unwrap_or_else(|e| die("listen", e));
            serve_forever(move || accept(&l), discard_and_count)
        }
        "tcp-sink" => {
            let port: u16 = arg(&args, 2, "PORT");
            let l = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| die("listen", e));
            serve_forever(move || l.accept().map(|(c, _)| c), discard_and_count)
        }
        "spout" => {
            let l = listen(arg(&args, 2, "PORT")).unwrap_or_else(|e| die("listen", e));
            serve_forever(
                move || accept(&l),
                |c| {
                    let mut line = String::new();
                    let mut r = BufReader::new(c);
                    if r.read_line(&mut line).is_ok() {
                        if let Ok(n) = line.trim().parse::<u64>() {
                            let mut c = r.into_inner();
                            if fill(&mut c, n).is_ok() {
                                // A graceful close: the peer reads everything, then closes.
                                shutdown_write(&c);
                                let _ = discard(&mut c);
                            }
                        }
                    }
                },
            )
        }
        "tcp-serve" => (|| {
            let port: u16 = arg(&args, 2, "PORT");
            let count: u64 = arg(&args, 3, "COUNT");
            let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
            for _ in 0..count {
                let (mut c, _) = l.accept()?;
                let (n, h) = drain(&mut c)?;
                writeln!(c, "{n} {:08x}", h.value())?;
            }
            Ok(())
        })(),
        "tcp-put" => (|| {
            let ip: std::net::Ipv4Addr = arg(&args, 2, "IP");
            let port: u16 = arg(&args, 3, "PORT");
            let mut c = std::net::TcpStream::connect((ip, port))?;
            let h = send_pattern(&mut c, arg(&args, 4, "BYTES"))?;
            c.shutdown(std::net::Shutdown::Write)?;
            let mut reply = String::new();
            c.read_to_string(&mut reply)?;
            println!("sent {:08x} reply {}", h.value(), reply.trim());
            Ok(())
        })(),
        "tcp-send" => (|| {
            let ip: std::net::Ipv4Addr = arg(&args, 2, "IP");
            let port: u16 = arg(&args, 3, "PORT");
            let bytes: u64 = arg(&args, 4, "BYTES");
            let mut c = std::net::TcpStream::connect((ip, port))?;
            fill(&mut c, bytes)?;
            c.shutdown(std::net::Shutdown::Write)?;
            let mut reply = String::new();
            c.read_to_string(&mut reply)?;
            println!("tcp-send {bytes} reply {}", reply.trim());
            Ok(())
        })(),
        "wait" => {
            let l = listen(arg(&args, 2, "PORT")).unwrap_or_else(|e| die("listen", e));
            accept(&l).map(|_| ())
        }
        "connect" => {
            match connect(arg(&args, 2, "CID"), arg(&args, 3, "PORT")) {
                Ok(_) => println!("connected"),
                Err(e) => println!("error {}", e.raw_os_error().unwrap_or(0)),
            }
            Ok(())
        }
        "now" => {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: clock_gettime writes one timespec we own.
            if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
                die("clock_gettime", io::Error::last_os_error());
            }
            println!("{}.{:06}", ts.tv_sec, ts.tv_nsec / 1000);
            Ok(())
        }
        "sum" => {
            let n: u64 = arg(&args, 2, "BYTES");
            let mut h = Fnv::new();
            let mut off = 0;
            let mut buf = vec![0u8; 4096];
            while off < n {
                let k = (n - off).min(4096) as usize;
                for (i, b) in buf[..k].iter_mut().enumerate() {
                    *b = pattern(off + i as u64);
                }
                h.update(&buf[..k]);
                off += k as u64;
            }
            println!("{n} {:08x}", h.value());
            Ok(())
        }
        _ => {
            eprintln!("usage: vsock-tool serve PORT | source PORT | send CID PORT BYTES | connect CID PORT | sum BYTES | wait PORT | now | sink PORT | tcp-sink PORT | spout PORT | tcp-send IP PORT BYTES");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        die(cmd, e);
    }
}

fn die(what: &str, e: io::Error) -> ! {
    eprintln!("vsock-tool: {what}: {e}");
    std::process::exit(1);
}
