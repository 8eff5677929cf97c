//! Test harness: a husk-agent serving on a unix socket inside new PID, mount, UTS and IPC
//! namespaces (so it is PID 1 there and every mount and process dies with it), a busybox rootfs
//! and helpers around the generated client.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentClient;
use serde_json::{json, Value};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A running agent; dropping it shuts the agent down and removes its files.
pub struct Agent {
    pub client: AgentClient,
    pub dir: PathBuf,
    pub cgroup_root: PathBuf,
    child: Child,
}

/// ttrpc context without a deadline (for long polls).
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

fn build_rootfs(root: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/user"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is needed");
    // List applets with the host's copy: executing the fresh copy can race with other test
    // threads' forks holding its write fd (ETXTBSY).
    let status = Command::new("/bin/busybox").args(["--list"]).output().unwrap();
    for applet in String::from_utf8(status.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    std::fs::set_permissions(root.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
}

impl Agent {
    /// Starts an agent in fresh namespaces with a busybox rootfs at `self.rootfs()`.
    pub fn start() -> Agent {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("husk-agent-test-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Removes the directory if start() panics before the Agent (and its Drop) exists.
        struct DirGuard(PathBuf);
        impl Drop for DirGuard {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let guard = DirGuard(dir.clone());
        build_rootfs(&dir.join("rootfs"));
        let cgroup_root = PathBuf::from("/sys/fs/cgroup/unified").join(&tag);
        let sock = dir.join("agent.sock");
        let child = Command::new("unshare")
            .args(["--pid", "--mount", "--uts", "--ipc", "--net", "--kill-child", "--mount-proc", "--propagation", "private"])
            // A sysfs of the new network namespace (the agent finds NICs there), and the
            // cgroup2 hierarchy again below it.
            .args([
                "sh",
                "-c",
                "mount -t sysfs sysfs /sys && mount -t tmpfs tmpfs /sys/fs/cgroup && \
                    mkdir /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified && \
                    exec \"$0\" \"$@\"",
            ])
            .arg(env!("CARGO_BIN_EXE_husk-agent"))
            .arg("--listen")
            .arg(format!("unix://{}", sock.display()))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--cgroup-root")
            .arg(&cgroup_root)
            .args(["--log-level", "debug"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) is needed");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut child = child;
        let client = loop {
            if let Ok(c) = ttrpc::Client::connect(&format!("unix://{}", sock.display())) {
                let client = AgentClient::new(c);
                if client.check(ctx(), &CheckRequest::new()).is_ok() {
                    break client;
                }
            }
            if Instant::now() >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
                remove_cgroup_tree(&cgroup_root);
                panic!("agent did not come up");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        std::mem::forget(guard);
        Agent { client, dir, cgroup_root, child }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// A rootfs message for the test rootfs directory.
    pub fn rootfs_msg(&self, read_only: bool) -> Rootfs {
        let mut r = Rootfs::new();
        r.host_path = self.rootfs().display().to_string();
        r.read_only = read_only;
        r
    }

    /// Creates a container from `spec`.
    pub fn create(&self, id: &str, spec: &Value, stdin: bool) -> ttrpc::Result<u32> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.oci_spec_json = serde_json::to_vec(spec).unwrap();
        req.rootfs = Some(self.rootfs_msg(false)).into();
        req.stdin = stdin;
        self.client.create_container(ctx(), &req).map(|r| r.pid)
    }

    /// Creates and starts.
    pub fn run(&self, id: &str, spec: &Value, stdin: bool) -> u32 {
        let pid = self.create(id, spec, stdin).unwrap();
        let mut req = StartContainerRequest::new();
        req.container_id = id.into();
        self.client.start_container(ctx(), &req).unwrap();
        pid
    }

    pub fn exec(&self, id: &str, exec_id: &str, process: &Value, stdin: bool) -> ttrpc::Result<u32> {
        let mut req = ExecProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.process_json = serde_json::to_vec(process).unwrap();
        req.stdin = stdin;
        self.client.exec_process(ctx(), &req).map(|r| r.pid)
    }

    pub fn wait(&self, id: &str, exec_id: &str) -> WaitProcessResponse {
        let mut req = WaitProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        self.client.wait_process(ctx(), &req).unwrap()
    }

    pub fn read_chunk(&self, id: &str, exec_id: &str, stderr: bool, max: u32) -> ttrpc::Result<ReadStreamResponse> {
        let mut req = ReadStreamRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.max_bytes = max;
        if stderr {
            self.client.read_stderr(ctx(), &req)
        } else {
            self.client.read_stdout(ctx(), &req)
        }
    }

    /// Reads a stream to EOF.
    pub fn read_all(&self, id: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let r = self.read_chunk(id, exec_id, stderr, 0).unwrap();
            if r.eof {
                assert!(r.data.is_empty());
                return out;
            }
            assert!(!r.data.is_empty(), "a read returned neither data nor EOF");
            out.extend_from_slice(&r.data);
        }
    }

    pub fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> ttrpc::Result<u32> {
        let mut req = WriteStdinRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.data = data.to_vec();
        self.client.write_stdin(ctx(), &req).map(|r| r.written)
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) {
        let mut req = CloseStdinRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        self.client.close_stdin(ctx(), &req).unwrap();
    }

    pub fn signal(&self, id: &str, exec_id: &str, sig: i32, all: bool) -> ttrpc::Result<Empty> {
        let mut req = SignalProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.signal = sig as u32;
        req.all = all;
        self.client.signal_process(ctx(), &req)
    }

    pub fn remove(&self, id: &str) -> ttrpc::Result<Empty> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = id.into();
        self.client.remove_container(ctx(), &req)
    }

    /// Mount points under this test's directory, as seen by the agent.
    pub fn agent_mounts(&self) -> Vec<String> {
        let pid = self.agent_pid();
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        let dir = self.dir.display().to_string();
        mounts.lines().filter_map(|l| l.split_whitespace().nth(4).map(str::to_string)).filter(|m| m.starts_with(&dir)).collect()
    }

    /// Waits for the agent (its unshare wrapper) to exit.
    pub fn wait_agent_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Host pid of the agent (the child of unshare).
    pub fn agent_pid(&self) -> u32 {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id())).unwrap_or_default();
        children.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.client.shutdown(ttrpc::context::with_timeout(2_000_000_000), &ShutdownRequest::new());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        // Namespaces are gone with the agent: only the cgroup and the directory remain.
        remove_cgroup_tree(&self.cgroup_root);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn remove_cgroup_tree(p: &Path) {
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

/// An OCI process running `args`.
pub fn process(args: &[&str]) -> Value {
    json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin", "HOME=/root"],
        "cwd": "/",
        "capabilities": {
            "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"],
            "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"]
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true
    })
}

/// A typical containerd-style spec running `args`.
pub fn spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": process(args),
        "root": {"path": "rootfs"},
        "hostname": "box",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                           {"type": "network"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys"],
            "readonlyPaths": ["/proc/sys", "/proc/bus"]
        }
    })
}

/// The gRPC code and message of a failed call.
pub fn status(r: ttrpc::Result<impl std::fmt::Debug>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC status error, got {other:?}"),
    }
}
