//! The fake VMM + scripted agent used by `fake_vm.rs`.
//!
//! Processes are scripted by their args: `out N CODE` writes N pattern bytes to stdout and
//! `err-line\n` to stderr, then exits with CODE; `cat` copies stdin to stdout until stdin is
//! closed; `sleep` runs until signalled (exit 128+signal); `hang` acknowledges signals and
//! never exits; an exec of `missing` fails to start; `crash` makes the VMM exit (status 3) shortly
//! after the start, as a guest crash would; `oom-flood` runs until signalled and, while it runs,
//! GetOomEvent answers at once, forever, naming its container (a hostile agent flooding the shim).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::{create_agent, Agent};
use ttrpc::TtrpcContext;

/// The stdout content of `out N`.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

#[derive(Default)]
struct Proc {
    args: Vec<String>,
    pid: u32,
    out: Vec<u8>,
    out_pos: usize,
    err: Vec<u8>,
    err_pos: usize,
    exit: Option<u32>,
}

#[derive(Default)]
struct Fake {
    procs: Mutex<HashMap<String, Proc>>,
    cond: Condvar,
    /// Where the network the VM got is written down (`<vsock uds>.net`).
    net_log: Option<std::path::PathBuf>,
}

impl Fake {
    fn note_net(&self, line: String) {
        if let Some(p) = &self.net_log {
            std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap().write_all(format!("{line}\n").as_bytes()).unwrap();
        }
    }
}

fn status(code: ttrpc::Code, msg: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

impl Fake {
    fn start(&self, key: &str) -> ttrpc::Result<u32> {
        let mut ps = self.procs.lock().unwrap();
        let p = ps.get_mut(key).ok_or_else(|| status(ttrpc::Code::NOT_FOUND, key))?;
        match p.args.first().map(String::as_str) {
            Some("out") => {
                p.out = pattern(p.args[1].parse().unwrap());
                p.err = b"err-line\n".to_vec();
                p.exit = Some(p.args[2].parse().unwrap());
            }
            Some("crash") => {
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_millis(300));
                    std::process::exit(3);
                });
            }
            _ => {}
        }
        self.cond.notify_all();
        Ok(p.pid)
    }

    fn read(&self, key: &str, stderr: bool, max: u32) -> ttrpc::Result<ReadStreamResponse> {
        let max = if max == 0 { 65536 } else { max as usize };
        let mut ps = self.procs.lock().unwrap();
        loop {
            let p = ps.get_mut(key).ok_or_else(|| status(ttrpc::Code::NOT_FOUND, key))?;
            let (buf, pos) = if stderr { (&p.err, &mut p.err_pos) } else { (&p.out, &mut p.out_pos) };
            if *pos < buf.len() {
                let end = (*pos + max).min(buf.len());
                let data = buf[*pos..end].to_vec();
                *pos = end;
                return Ok(ReadStreamResponse { data, ..Default::default() });
            }
            if p.exit.is_some() {
                return Ok(ReadStreamResponse { eof: true, ..Default::default() });
            }
            ps = self.cond.wait(ps).unwrap();
        }
    }
}

fn key(cid: &str, eid: &str) -> String {
    format!("{cid}/{eid}")
}

impl Agent for Fake {
    fn check(&self, _: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<CheckResponse> {
        Ok(CheckResponse::new())
    }
    fn create_container(&self, _: &TtrpcContext, r: CreateContainerRequest) -> ttrpc::Result<CreateContainerResponse> {
        let spec: serde_json::Value = serde_json::from_slice(&r.oci_spec_json).map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, &e.to_string()))?;
        // The sandbox container's root is the boot disk; another container's is a slot.
        let sandbox = r.sandbox_id == r.container_id;
        if sandbox != (r.rootfs.disk_serial == "rootfs") {
            return Err(status(
                ttrpc::Code::INVALID_ARGUMENT,
                &format!("container {} of sandbox {} has root disk {}", r.container_id, r.sandbox_id, r.rootfs.disk_serial),
            ));
        }
        let args = spec["process"]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        let mut ps = self.procs.lock().unwrap();
        let pid = if sandbox { 1 } else { 100 + ps.len() as u32 };
        ps.insert(key(&r.container_id, ""), Proc { args, pid, ..Default::default() });
        Ok(CreateContainerResponse { pid, ..Default::default() })
    }
    fn start_container(&self, _: &TtrpcContext, r: StartContainerRequest) -> ttrpc::Result<StartContainerResponse> {
        self.note_net(format!("start {}", r.container_id));
        Ok(StartContainerResponse { pid: self.start(&key(&r.container_id, ""))?, ..Default::default() })
    }
    fn exec_process(&self, _: &TtrpcContext, r: ExecProcessRequest) -> ttrpc::Result<ExecProcessResponse> {
        let p: serde_json::Value = serde_json::from_slice(&r.process_json).unwrap();
        let args: Vec<String> = p["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        if args.first().map(String::as_str) == Some("missing") {
            return Err(status(ttrpc::Code::INVALID_ARGUMENT, "executable \"missing\" not found"));
        }
        let k = key(&r.container_id, &r.exec_id);
        self.procs.lock().unwrap().insert(k.clone(), Proc { args, pid: 20, ..Default::default() });
        Ok(ExecProcessResponse { pid: self.start(&k)?, ..Default::default() })
    }
    fn signal_process(&self, _: &TtrpcContext, r: SignalProcessRequest) -> ttrpc::Result<Empty> {
        let mut ps = self.procs.lock().unwrap();
        let p = ps.get_mut(&key(&r.container_id, &r.exec_id)).ok_or_else(|| status(ttrpc::Code::NOT_FOUND, "no process"))?;
        // `hang`: a guest that acknowledges the signal and never reports the exit.
        if p.exit.is_none() && p.args.first().map(String::as_str) != Some("hang") {
            p.exit = Some(128 + r.signal);
        }
        self.cond.notify_all();
        Ok(Empty::new())
    }
    fn wait_process(&self, _: &TtrpcContext, r: WaitProcessRequest) -> ttrpc::Result<WaitProcessResponse> {
        let k = key(&r.container_id, &r.exec_id);
        let mut ps = self.procs.lock().unwrap();
        loop {
            let p = ps.get(&k).ok_or_else(|| status(ttrpc::Code::NOT_FOUND, &k))?;
            if let Some(code) = p.exit {
                return Ok(WaitProcessResponse { pid: p.pid, exit_status: code, ..Default::default() });
            }
            ps = self.cond.wait(ps).unwrap();
        }
    }
    fn write_stdin(&self, _: &TtrpcContext, r: WriteStdinRequest) -> ttrpc::Result<WriteStdinResponse> {
        let mut ps = self.procs.lock().unwrap();
        let p = ps.get_mut(&key(&r.container_id, &r.exec_id)).ok_or_else(|| status(ttrpc::Code::NOT_FOUND, "no process"))?;
        p.out.extend_from_slice(&r.data);
        self.cond.notify_all();
        Ok(WriteStdinResponse { written: r.data.len() as u32, ..Default::default() })
    }
    fn close_stdin(&self, _: &TtrpcContext, r: CloseStdinRequest) -> ttrpc::Result<Empty> {
        let mut ps = self.procs.lock().unwrap();
        let p = ps.get_mut(&key(&r.container_id, &r.exec_id)).ok_or_else(|| status(ttrpc::Code::NOT_FOUND, "no process"))?;
        if p.args.first().map(String::as_str) == Some("cat") && p.exit.is_none() {
            p.exit = Some(0);
        }
        self.cond.notify_all();
        Ok(Empty::new())
    }
    fn read_stdout(&self, _: &TtrpcContext, r: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        self.read(&key(&r.container_id, &r.exec_id), false, r.max_bytes)
    }
    fn read_stderr(&self, _: &TtrpcContext, r: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        self.read(&key(&r.container_id, &r.exec_id), true, r.max_bytes)
    }
    fn get_oom_event(&self, _: &TtrpcContext, _: GetOomEventRequest) -> ttrpc::Result<OomEvent> {
        loop {
            let flooding = self.procs.lock().unwrap().iter().find_map(|(k, p)| {
                (p.args.first().map(String::as_str) == Some("oom-flood") && p.exit.is_none()).then(|| k.split('/').next().unwrap_or("").to_string())
            });
            if let Some(container_id) = flooding {
                return Ok(OomEvent { container_id, ..Default::default() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn update_interfaces(&self, _: &TtrpcContext, r: UpdateInterfacesRequest) -> ttrpc::Result<Empty> {
        for i in &r.interfaces {
            let addrs: Vec<String> = i.addresses.iter().map(|a| format!("{}/{}", a.address, a.prefix_len)).collect();
            let new_mac = if i.new_hw_addr.is_empty() { String::new() } else { format!(" mac->{}", i.new_hw_addr) };
            self.note_net(format!("iface {}{new_mac} {} {} {}", i.hw_addr, i.name, i.mtu, addrs.join(",")));
        }
        Ok(Empty::new())
    }
    fn update_routes(&self, _: &TtrpcContext, r: UpdateRoutesRequest) -> ttrpc::Result<Empty> {
        for x in &r.routes {
            self.note_net(format!("route {} via {:?} dev {}", x.destination, x.gateway, x.device));
        }
        Ok(Empty::new())
    }
    fn remove_container(&self, _: &TtrpcContext, _: RemoveContainerRequest) -> ttrpc::Result<Empty> {
        Ok(Empty::new())
    }
    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            std::process::exit(0);
        });
        Ok(Empty::new())
    }
}

/// Entry point of the fake VMM: `--vsock cid=N,uds=PATH` is all it uses.
/// Whether this process was started as the VMM (`husk-vmm --config FILE`).
pub fn is_fake_vmm() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.len() == 3 && args[1] == "--config"
}

/// A minimal control API: disk slot attach/detach, each request appended to `<sock>.log`.
fn serve_api(sock: std::path::PathBuf) {
    let listener = UnixListener::bind(&sock).unwrap();
    let log = sock.with_extension("log");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut head = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if head.is_empty() {
                head = line.trim().to_string();
            }
        }
        let mut body = vec![0u8; len];
        std::io::Read::read_exact(&mut r, &mut body).unwrap();
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let slot = path.rsplit('/').next().unwrap_or("");
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(format!("{method} {slot} {}\n", req["id"].as_str().unwrap_or("")).as_bytes())
            .unwrap();
        let attached = method == "PUT";
        let info = serde_json::json!({"slot": slot, "kind": "slot", "attached": attached, "id": req["id"].as_str().unwrap_or(""),
            "path": req["path"], "read_only": req["read_only"].as_bool().unwrap_or(false), "sectors": if attached { 8 } else { 0 }})
        .to_string();
        let _ = (&conn).write_all(
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{info}", info.len()).as_bytes(),
        );
    }
}

pub fn run_fake_vmm() {
    let args: Vec<String> = std::env::args().collect();
    let config = husk_config::VmConfig::from_toml_file(std::path::Path::new(&args[2])).expect("--config FILE");
    let uds = config.vsock.as_ref().expect("vsock").uds.display().to_string();
    if let Some(api) = config.api_sock.clone() {
        std::thread::spawn(move || serve_api(api));
    }
    let fake = Fake { net_log: Some(format!("{uds}.net").into()), ..Default::default() };
    // The taps the shim passed: open here, and really taps of the configured names.
    for n in &config.net {
        let fd = n.fd.expect("the shim passes taps as descriptors");
        let mut ifr = [0u8; 40];
        // SAFETY: TUNGETIFF writes one 40-byte struct ifreq into `ifr`, valid for the call.
        let r = unsafe { libc::ioctl(fd, 0x8004_54d2, ifr.as_mut_ptr()) };
        let name = String::from_utf8_lossy(&ifr[..16]).trim_end_matches('\0').to_string();
        fake.note_net(format!(
            "net {} fd {} mac {} tap {}",
            n.tap,
            if r == 0 { "open" } else { "bad" },
            n.mac.map(|m| m.to_string()).unwrap_or_default(),
            name
        ));
    }
    let agent_path = format!("{uds}.agent");
    let agent_listener = UnixListener::bind(&agent_path).unwrap();
    let service = create_agent(Arc::new(fake));
    let mut server = ttrpc::Server::new().add_listener(agent_listener.into_raw_fd()).unwrap().register_service(service);
    server.start().unwrap();
    let listener = UnixListener::bind(&uds).unwrap();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let agent_path = agent_path.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            if r.read_line(&mut line).is_err() || line.trim() != "CONNECT 1024" {
                let _ = (&conn).write_all(b"ERR bad port\n");
                return;
            }
            (&conn).write_all(b"OK 1073741824\n").unwrap();
            let agent = UnixStream::connect(&agent_path).unwrap();
            let (mut a_r, mut a_w) = (agent.try_clone().unwrap(), agent);
            let mut c_w = conn;
            let t = std::thread::spawn(move || {
                let _ = std::io::copy(&mut a_r, &mut c_w);
                let _ = c_w.shutdown(std::net::Shutdown::Both);
            });
            let _ = std::io::copy(&mut r, &mut a_w);
            let _ = a_w.shutdown(std::net::Shutdown::Both);
            let _ = t.join();
        });
    }
}
