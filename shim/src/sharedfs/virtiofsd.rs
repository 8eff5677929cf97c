//! One upstream virtiofsd per sandbox: spawned sandboxed, watched until its socket appears,
//! stopped and reaped.
//!
//! Sandboxing, as virtiofsd's documentation recommends and as works for root without user
//! namespaces: `--sandbox namespace` (its own mount, pid and net namespaces, `pivot_root` into
//! the shared directory, so no symlink in the share can lead out of it), `--seccomp kill`,
//! and virtiofsd's own capability dropping. With the namespace sandbox the process we start
//! forks the server into the new namespaces and waits for it; the server gets SIGTERM when
//! that parent dies, and the parent gets SIGKILL when the shim dies (`PR_SET_PDEATHSIG`,
//! set in the child before exec; the child is spawned and waited for by one thread that
//! lives as long as it does, since the signal follows the death of the spawning thread).
//! `--thread-pool-size=0` keeps each queue's requests in order, which husk-vmm relies on to
//! answer the request in flight when virtiofsd dies.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{Result, SharedFsError};

/// Where `make deps` installs virtiofsd.
pub const DEFAULT_VIRTIOFSD: &str = "/usr/local/libexec/husk/virtiofsd";
/// How long virtiofsd may take to create its socket by default.
pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped virtiofsd gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often the socket and the processes are looked at while waiting.
const POLL: Duration = Duration::from_millis(10);

/// virtiofsd's `--cache`: how long the guest may keep what it read.
///
/// The default is `auto`. Measured with tests/virtio/bench-fs.sh (one guest, every setting
/// and an ext4 virtio-blk disk side by side; three testbed runs of 3, 3 and 5 rounds; figures
/// are medians as ratios to virtio-blk in the same run) and read from virtiofsd's source:
/// - `always` is out whatever its speed: the guest may never see host-side changes
///   (ConfigMap and Secret updates, a rewritten /etc/hosts).
/// - `never` was far slower than `auto` on metadata: stat of cold entries 0.02-0.04x
///   (auto 0.66-2.1x, 25-70 times faster), unlink 0.02-0.05x (auto 0.19-0.29x).
/// - `metadata` read large files faster (cold 0.96-2.8x, auto 0.50-1.1x) and left virtiofsd
///   smaller (RSS 9.4-9.7 MiB, auto 25.5-26.8 MiB), small-file figures went either way
///   between runs; but virtiofsd opens files with FUSE direct I/O in this mode, and the
///   guest kernel then refuses shared mmap of volume files (6.1's `fuse_file_mmap`: ENODEV
///   for MAP_SHARED; virtiofsd's `--allow-mmap` is only safe when nothing else changes the
///   files), which databases and many runtimes need.
/// - `auto` keeps shared mmap working and revalidates within 1 s: tests/virtio/test-fs.sh saw
///   a host rewrite and a ConfigMap `..data` swap at the guest's next look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Nothing is cached: every access asks virtiofsd.
    Never,
    /// Metadata only (attributes and directory entries), for 1 s.
    Metadata,
    /// Metadata for 1 s, file data while the file is unchanged (revalidated on open).
    #[default]
    Auto,
    /// Everything, without revalidation: host-side changes may never be seen.
    Always,
}

impl CacheMode {
    /// The `--cache` value.
    pub fn as_arg(self) -> &'static str {
        match self {
            CacheMode::Never => "never",
            CacheMode::Metadata => "metadata",
            CacheMode::Auto => "auto",
            CacheMode::Always => "always",
        }
    }
}

/// How virtiofsd is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtiofsdConfig {
    /// The binary.
    pub binary: PathBuf,
    /// Cache mode.
    pub cache: CacheMode,
    /// Extended attributes (`--xattr`). Off by default: with it, creating small files ran
    /// 2.6-4.8 times slower in two of three bench-fs.sh runs (14.3 and 15.2 against 68.6 and
    /// 39.3 files/s with `auto`; the third run was within its noise), and only SELinux
    /// labels, file capabilities or user xattrs in volumes need it.
    pub xattr: bool,
    /// How long to wait for the socket.
    pub socket_timeout: Duration,
}

impl Default for VirtiofsdConfig {
    fn default() -> Self {
        Self { binary: PathBuf::from(DEFAULT_VIRTIOFSD), cache: CacheMode::default(), xattr: false, socket_timeout: DEFAULT_SOCKET_TIMEOUT }
    }
}

impl VirtiofsdConfig {
    /// The command line for serving `shared` on `socket`.
    ///
    /// Options left out, measured with tests/virtio/bench-fs.sh (one testbed run, 3 rounds,
    /// medians, each against `--cache=auto` in the same guest):
    /// - `--writeback`: creating small files ran 1.8x faster (35.8 against 20.2 files/s), but
    ///   sequential writes fell to 0.21x (2.8 against 13.2 MiB/s) and cold reads to 0.44x, and
    ///   the guest would keep writes that the host (kubelet reading the termination log, a
    ///   sidecar on the host) sees only later.
    /// - `--inode-file-handles=never` (O_PATH descriptors instead of the default file
    ///   handles): no gain beyond the noise (create 15.5 against 20.2 files/s, unlink 85
    ///   against 112, warm stat 1266 against 881).
    pub fn args(&self, shared: &Path, socket: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--shared-dir".into(),
            shared.into(),
            "--socket-path".into(),
            socket.into(),
            "--sandbox=namespace".into(),
            "--seccomp=kill".into(),
            format!("--cache={}", self.cache.as_arg()).into(),
            "--announce-submounts".into(),
            "--thread-pool-size=0".into(),
            "--log-level=warn".into(),
        ];
        if self.xattr {
            a.push("--xattr".into());
        }
        a
    }
}

/// The exit status once the process exited.
#[derive(Debug, Default)]
struct ExitWatch {
    status: Mutex<Option<ExitStatus>>,
    cond: Condvar,
}

impl ExitWatch {
    fn set(&self, st: ExitStatus) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(st);
        self.cond.notify_all();
    }

    fn get(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut g = self.status.lock().unwrap_or_else(|p| p.into_inner());
        while g.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = self.cond.wait_timeout(g, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        *g
    }
}

/// A running virtiofsd.
#[derive(Debug)]
pub struct Virtiofsd {
    pid: u32,
    socket: PathBuf,
    log: PathBuf,
    exit: Arc<ExitWatch>,
    stopped: bool,
}

impl Virtiofsd {
    /// Starts virtiofsd serving `shared` on `socket` (an existing file there is replaced),
    /// its stderr in `log`, and waits until the socket exists. If virtiofsd exits first or
    /// the socket does not appear within `cfg.socket_timeout`, it is stopped and the error
    /// carries the end of its log.
    pub fn start(cfg: &VirtiofsdConfig, shared: &Path, socket: &Path, log: &Path) -> Result<Self> {
        if !cfg.binary.is_file() {
            return Err(SharedFsError::MissingBinary(cfg.binary.clone()));
        }
        let spawn_err = |source| SharedFsError::Spawn { binary: cfg.binary.clone(), source };
        let out = File::create(log).map_err(|source| SharedFsError::Io { op: "create", path: log.to_path_buf(), source })?;
        let err = out.try_clone().map_err(spawn_err)?;
        let mut cmd = Command::new(&cfg.binary);
        cmd.args(cfg.args(shared, socket)).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let exit = Arc::new(ExitWatch::default());
        let watch = exit.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("virtiofsd-reaper".into())
            .spawn(move || match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id()));
                    match child.wait() {
                        Ok(st) => watch.set(st),
                        Err(e) => log::error!("sharedfs: waiting for virtiofsd failed: {e}"),
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(spawn_err)?;
        let pid = rx.recv().map_err(|_| spawn_err(std::io::Error::other("the spawning thread died")))?.map_err(spawn_err)?;
        let mut daemon = Virtiofsd { pid, socket: socket.to_path_buf(), log: log.to_path_buf(), exit, stopped: false };
        log::info!("sharedfs: started virtiofsd pid {pid} on {shared:?}, socket {socket:?}");
        match daemon.wait_for_socket(cfg.socket_timeout) {
            Ok(()) => Ok(daemon),
            Err(e) => {
                daemon.terminate();
                Err(e)
            }
        }
    }

    fn wait_for_socket(&self, timeout: Duration) -> Result<()> {
        use std::os::unix::fs::FileTypeExt;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exit.get() {
                return Err(SharedFsError::Exited { status: st.to_string(), socket: self.socket.clone(), log: log_tail(&self.log) });
            }
            if std::fs::symlink_metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SharedFsError::SocketTimeout { socket: self.socket.clone(), timeout_ms: timeout.as_millis(), log: log_tail(&self.log) });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The pid of the process started (the sandboxed server is its child).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the process started has exited.
    pub fn has_exited(&self) -> bool {
        self.exit.get().is_some()
    }

    /// Stops virtiofsd: SIGTERM, SIGKILL after a grace period, reaped; waits until its
    /// sandboxed server is gone too; removes the socket file (virtiofsd's server unlinks it
    /// only inside its own mount namespace) and virtiofsd's `<socket>.pid` lock file.
    pub fn stop(mut self) -> Result<()> {
        self.terminate();
        Ok(())
    }

    fn terminate(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let pid = i32::try_from(self.pid).ok().map(Pid::from_raw);
        // The server in the sandbox: same command line, another pid. Found before the parent
        // goes (afterwards nothing else would tell which server was ours).
        let servers = pids_serving(&self.socket, self.pid);
        if self.exit.get().is_none() {
            if let Some(p) = pid {
                let _ = kill(p, Signal::SIGTERM);
            }
            if self.exit.wait(STOP_GRACE).is_none() {
                if let Some(p) = pid {
                    let _ = kill(p, Signal::SIGKILL);
                }
                if self.exit.wait(STOP_GRACE).is_none() {
                    log::error!("sharedfs: virtiofsd pid {} did not exit after SIGKILL", self.pid);
                }
            }
        }
        // The server got SIGTERM from its parent's death; make sure it is gone.
        let deadline = Instant::now() + STOP_GRACE;
        let mut killed = false;
        loop {
            let alive: Vec<u32> = servers.iter().copied().filter(|&p| serves(p, &self.socket)).collect();
            if alive.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                if killed {
                    log::error!("sharedfs: virtiofsd server(s) {alive:?} still running after SIGKILL");
                    break;
                }
                for p in &alive {
                    if let Ok(p) = i32::try_from(*p) {
                        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                    }
                }
                killed = true;
            }
            std::thread::sleep(POLL);
        }
        for file in [self.socket.clone(), pid_file(&self.socket)] {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::error!("sharedfs: cannot remove {file:?}: {e}"),
            }
        }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The pid file virtiofsd keeps (locked) beside its socket.
fn pid_file(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_os_string();
    s.push(".pid");
    PathBuf::from(s)
}

/// Pids other than `except` whose command line serves `socket` (`--socket-path <socket>`).
pub(super) fn pids_serving(socket: &Path, except: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).filter(|&p| p != except && serves(p, socket)).collect()
}

/// Whether process `pid` is a virtiofsd serving `socket` (a zombie's empty command line
/// does not count).
pub(super) fn serves(pid: u32, socket: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|&b| b == 0);
    let want = socket.as_os_str().as_bytes();
    while let Some(a) = args.next() {
        if a == b"--socket-path" && args.next() == Some(want) {
            return true;
        }
    }
    false
}

/// The last lines of virtiofsd's log, for error messages.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b[b.len().saturating_sub(2048)..]).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        "nothing".into()
    } else {
        tail
    }
}
