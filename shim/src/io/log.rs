//! Where a process's output goes, from the stdio containerd passes: FIFO paths (`ctr run`,
//! CRI), or a log URI (`ctr run --log-uri`, nerdctl -d), handled as containerd's runc shim
//! does:
//!
//! * `fifo://PATH` or a plain path: the FIFO of each stream;
//! * `file:///PATH`: stdout and stderr appended to one file (its directory is created);
//! * `binary:///PATH?k1=v1&k2=v2`: a logging binary started as `PATH k1 v1 k2 v2` with
//!   `CONTAINER_ID` and `CONTAINER_NAMESPACE` as its only environment, stdout's and stderr's
//!   read ends as descriptors 3 and 4, and descriptor 5 that it closes (or writes to) once it
//!   is ready. After the output ended it gets its end-of-file, then SIGTERM, then SIGKILL.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use percent_encoding::percent_decode_str;

/// How long a logging binary may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a logging binary gets to exit after its input ended, and after SIGTERM.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Errors of a log URI.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The URI is not one husk handles.
    #[error("stdio {uri:?}: {reason}")]
    Invalid {
        /// The URI.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// The log file or the logging binary could not be set up.
    #[error("stdio {uri:?}: cannot {op}")]
    Io {
        /// The URI.
        uri: String,
        /// What was attempted.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where output goes, parsed from the stdout (and stderr) containerd passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Each stream to its FIFO ("" = discarded).
    Fifo {
        /// stdout's FIFO.
        stdout: PathBuf,
        /// stderr's FIFO.
        stderr: PathBuf,
    },
    /// Both streams appended to this file.
    File(PathBuf),
    /// A logging binary and its arguments.
    Binary {
        /// The binary.
        path: PathBuf,
        /// Its arguments (the query's keys and values, in order).
        args: Vec<String>,
    },
}

fn invalid(uri: &str, reason: impl Into<String>) -> LogError {
    LogError::Invalid { uri: uri.into(), reason: reason.into() }
}

fn decode(uri: &str, s: &str) -> Result<String, LogError> {
    percent_decode_str(s).decode_utf8().map(|c| c.into_owned()).map_err(|_| invalid(uri, "not UTF-8 once percent-decoded"))
}

impl Target {
    /// Parses containerd's stdout and stderr.
    pub fn parse(stdout: &str, stderr: &str) -> Result<Target, LogError> {
        let Some((scheme, rest)) = stdout.split_once("://") else {
            return Ok(Target::Fifo { stdout: stdout.into(), stderr: stderr.into() });
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path = PathBuf::from(decode(stdout, path)?);
        match scheme {
            "fifo" => Ok(Target::Fifo { stdout: path, stderr: stderr.strip_prefix("fifo://").unwrap_or(stderr).into() }),
            "file" | "binary" if !path.is_absolute() => Err(invalid(stdout, "the path must be absolute (scheme:///path)")),
            "file" => Ok(Target::File(path)),
            "binary" => {
                let mut args = Vec::new();
                for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    args.push(decode(stdout, k)?);
                    if !v.is_empty() {
                        args.push(decode(stdout, v)?);
                    }
                }
                Ok(Target::Binary { path, args })
            }
            other => Err(invalid(stdout, format!("unknown scheme {other:?} (husk handles fifo, file and binary)"))),
        }
    }

    /// Checks what can be checked before the container exists: a log file can be created, a
    /// logging binary is executable.
    pub fn check(&self, uri: &str) -> Result<(), LogError> {
        match self {
            Target::Fifo { .. } => Ok(()),
            Target::File(p) => open_log(uri, p).map(drop),
            Target::Binary { path, .. } => {
                let md = std::fs::metadata(path).map_err(|source| LogError::Io { uri: uri.into(), op: "find the logging binary", source })?;
                if !md.is_file() || std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o111 == 0 {
                    return Err(invalid(uri, format!("{} is not an executable file", path.display())));
                }
                Ok(())
            }
        }
    }
}

fn open_log(uri: &str, p: &Path) -> Result<File, LogError> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(|source| LogError::Io { uri: uri.into(), op: "create the log file's directory", source })?;
    }
    OpenOptions::new().create(true).append(true).open(p).map_err(|source| LogError::Io { uri: uri.into(), op: "open the log file", source })
}

/// Where one stream is written.
#[derive(Debug)]
pub enum Sink {
    /// Discarded.
    None,
    /// A FIFO, opened by the pump (opening blocks until containerd reads it).
    Fifo(PathBuf),
    /// An open writer (log file, logging binary's pipe).
    Writer(File),
}

/// A running logging binary.
#[derive(Debug)]
pub struct Logger {
    child: Child,
}

impl Logger {
    /// Waits for the binary once its input ended: EXIT_GRACE, then SIGTERM, EXIT_GRACE, SIGKILL.
    pub fn finish(mut self) {
        for signal in [None, Some(nix::sys::signal::Signal::SIGTERM), Some(nix::sys::signal::Signal::SIGKILL)] {
            if let (Some(s), Ok(pid)) = (signal, i32::try_from(self.child.id())) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s);
            }
            let deadline = Instant::now() + EXIT_GRACE;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The sinks of one process and its logger, if any.
#[derive(Debug)]
pub struct Outputs {
    /// stdout's.
    pub stdout: Sink,
    /// stderr's.
    pub stderr: Sink,
    /// The logging binary.
    pub logger: Option<Logger>,
}

fn fifo(p: &Path) -> Sink {
    if p.as_os_str().is_empty() {
        Sink::None
    } else {
        Sink::Fifo(p.to_path_buf())
    }
}

/// Opens the outputs of process `id` of containerd namespace `namespace`; `uri` is the stdout
/// containerd passed (for messages).
pub fn open(target: &Target, uri: &str, namespace: &str, id: &str) -> Result<Outputs, LogError> {
    let io_err = |op| move |source| LogError::Io { uri: uri.into(), op, source };
    match target {
        Target::Fifo { stdout, stderr } => Ok(Outputs { stdout: fifo(stdout), stderr: fifo(stderr), logger: None }),
        Target::File(p) => {
            let f = open_log(uri, p)?;
            let f2 = f.try_clone().map_err(io_err("duplicate the log file"))?;
            Ok(Outputs { stdout: Sink::Writer(f), stderr: Sink::Writer(f2), logger: None })
        }
        Target::Binary { path, args } => {
            let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| LogError::Io { uri: uri.into(), op: "make a pipe", source: e.into() });
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let (ready_r, ready_w) = pipe()?;
            let child = spawn_logger(path, args, namespace, id, [out_r, err_r, ready_w]).map_err(io_err("start the logging binary"))?;
            let mut logger = Logger { child };
            // Ready once it wrote or closed descriptor 5 (every copy of which it holds now).
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                let _ = tx.send(File::from(ready_r).read(&mut b));
            });
            match rx.recv_timeout(READY_TIMEOUT) {
                // Ready, unless it ended instead (an exec failure closes descriptor 5 too).
                Ok(Ok(_)) => {
                    std::thread::sleep(Duration::from_millis(20));
                    if let Ok(Some(st)) = logger.child.try_wait() {
                        return Err(invalid(uri, format!("the logging binary exited at once ({st})")));
                    }
                }
                Ok(Err(e)) => {
                    let _ = logger.child.kill();
                    let _ = logger.child.wait();
                    return Err(LogError::Io { uri: uri.into(), op: "wait for the logging binary", source: e });
                }
                Err(_) => {
                    logger.finish();
                    return Err(invalid(uri, format!("the logging binary was not ready within {READY_TIMEOUT:?}")));
                }
            }
            Ok(Outputs { stdout: Sink::Writer(File::from(out_w)), stderr: Sink::Writer(File::from(err_w)), logger: Some(logger) })
        }
    }
}

/// Starts `path args` with `fds` as its descriptors 3, 4 and 5.
fn spawn_logger(path: &Path, args: &[String], namespace: &str, id: &str, fds: [OwnedFd; 3]) -> std::io::Result<Child> {
    let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
    let mut cmd = Command::new(path);
    cmd.args(args).env_clear().env("CONTAINER_ID", id).env("CONTAINER_NAMESPACE", namespace).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: runs in the forked child before exec: only dup2(2) and fcntl(2) on descriptors
    // opened before the fork (async-signal-safe). The sources are first moved above 5, so no
    // dup2 overwrites a source another one still needs.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0; 3];
            for (h, fd) in high.iter_mut().zip(raw) {
                *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, fd) in (3..).zip(high) {
                // dup2 clears close-on-exec on the target.
                if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    // Our copies of the read ends and of the ready pipe's write end go now: the binary's are
    // the only ones left.
    drop(fds);
    child
}
