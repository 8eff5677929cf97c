//! Bridges containerd's stdio to the agent's stdio streams of one guest process.
//!
//! Each stream gets a thread: stdout and stderr long-poll `ReadStdout`/`ReadStderr` and write
//! to containerd's FIFO, or to the log file or logging binary of a log URI ([`log`]), until
//! EOF (they always drain, even without a sink, so the guest process never blocks on a full
//! buffer); stdin reads containerd's FIFO and calls `WriteStdin`, then `CloseStdin` at EOF.

pub mod log;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use husk_protocol::agent;
use husk_protocol::agent_ttrpc::AgentClient;

use crate::agent::{long, short};

/// The stdio of one process as containerd passed it (empty path = not connected).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// stdin FIFO.
    pub stdin: String,
    /// stdout FIFO.
    pub stdout: String,
    /// stderr FIFO.
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

/// Which output stream.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Counts running output pumps so the exit can wait until they drained.
#[derive(Debug, Default)]
struct Running {
    count: Mutex<usize>,
    cond: Condvar,
}

/// The pumps of one process.
#[derive(Debug, Clone)]
pub struct Pumps {
    running: Arc<Running>,
    stdin_done: Arc<Mutex<bool>>,
}

/// Checks the stdout/stderr containerd passed (a known scheme; a log file that can be
/// created, a logging binary that exists), before the container is made.
pub fn check(paths: &StdioPaths) -> Result<(), log::LogError> {
    log::Target::parse(&paths.stdout, &paths.stderr)?.check(&paths.stdout)
}

/// The sinks of a process's output; a failure is logged and the output discarded.
fn outputs(paths: &StdioPaths, namespace: &str, cid: &str) -> log::Outputs {
    let opened = log::Target::parse(&paths.stdout, &paths.stderr).and_then(|t| log::open(&t, &paths.stdout, namespace, cid));
    opened.unwrap_or_else(|e| {
        ::log::error!("{cid}: {}; discarding its output", crate::error::chain(&e));
        log::Outputs { stdout: log::Sink::None, stderr: log::Sink::None, logger: None }
    })
}

/// Starts the pumps of process (`cid`, `eid`) of containerd namespace `namespace`.
pub fn start(agent: &AgentClient, namespace: &str, cid: &str, eid: &str, paths: &StdioPaths) -> Pumps {
    let running = Arc::new(Running::default());
    let stdin_done = Arc::new(Mutex::new(paths.stdin.is_empty()));
    let log::Outputs { stdout, stderr, logger } = outputs(paths, namespace, cid);
    for (stream, sink) in [(Stream::Stdout, stdout), (Stream::Stderr, stderr)] {
        *running.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let (agent, cid, eid, counter) = (agent.clone(), cid.to_string(), eid.to_string(), running.clone());
        let spawned = std::thread::Builder::new().name(format!("io-{stream:?}")).spawn(move || {
            pump_out(&agent, &cid, &eid, stream, sink);
            let mut n = counter.count.lock().unwrap_or_else(|p| p.into_inner());
            *n = n.saturating_sub(1);
            counter.cond.notify_all();
        });
        if let Err(e) = spawned {
            ::log::error!("cannot start {stream:?} pump: {e}");
            let mut n = running.count.lock().unwrap_or_else(|p| p.into_inner());
            *n = n.saturating_sub(1);
        }
    }
    if let Some(logger) = logger {
        // Once both streams ended (their pipes closed), the logging binary is waited for.
        let counter = running.clone();
        let spawned = std::thread::Builder::new().name("io-logger".into()).spawn(move || {
            let mut n = counter.count.lock().unwrap_or_else(|p| p.into_inner());
            while *n > 0 {
                n = counter.cond.wait(n).unwrap_or_else(|p| p.into_inner());
            }
            drop(n);
            logger.finish();
        });
        if let Err(e) = spawned {
            ::log::error!("cannot start the logging binary's reaper: {e}");
        }
    }
    if !paths.stdin.is_empty() {
        let (agent, cid, eid, path, done) = (agent.clone(), cid.to_string(), eid.to_string(), PathBuf::from(&paths.stdin), stdin_done.clone());
        if let Err(e) = std::thread::Builder::new().name("io-stdin".into()).spawn(move || {
            pump_in(&agent, &cid, &eid, &path);
            *done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        }) {
            ::log::error!("cannot start stdin pump: {e}");
        }
    }
    Pumps { running, stdin_done }
}

impl Pumps {
    /// Waits until stdout and stderr reached EOF, at most `timeout`. Returns whether they did.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = self.running.count.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            n = self.running.cond.wait_timeout(n, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    /// Whether the stdin pump finished (or there was none).
    pub fn stdin_finished(&self) -> bool {
        *self.stdin_done.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn pump_out(agent: &AgentClient, cid: &str, eid: &str, stream: Stream, sink: log::Sink) {
    let (path, mut sink): (String, Option<File>) = match sink {
        log::Sink::None => (String::new(), None),
        log::Sink::Writer(f) => ("the log".into(), Some(f)),
        log::Sink::Fifo(p) => match OpenOptions::new().write(true).open(&p) {
            Ok(f) => (p.display().to_string(), Some(f)),
            Err(e) => {
                ::log::warn!("cannot open {stream:?} FIFO {p:?} of {cid}/{eid}: {e}; discarding output");
                (String::new(), None)
            }
        },
    };
    let req = agent::ReadStreamRequest { container_id: cid.into(), exec_id: eid.into(), max_bytes: 0, ..Default::default() };
    loop {
        let res = match stream {
            Stream::Stdout => agent.read_stdout(long(), &req),
            Stream::Stderr => agent.read_stderr(long(), &req),
        };
        match res {
            Ok(r) if r.eof => break,
            Ok(r) => {
                if let Some(f) = sink.as_mut() {
                    if let Err(e) = f.write_all(&r.data) {
                        ::log::warn!("writing {stream:?} of {cid}/{eid} to {path}: {e}; discarding the rest");
                        sink = None;
                    }
                }
            }
            Err(e) => {
                ::log::debug!("{stream:?} of {cid}/{eid} ended: {e}");
                break;
            }
        }
    }
}

fn pump_in(agent: &AgentClient, cid: &str, eid: &str, path: &PathBuf) {
    match File::open(path) {
        Ok(mut f) => {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        ::log::warn!("reading stdin FIFO {path:?} of {cid}/{eid}: {e}");
                        break;
                    }
                };
                let req = agent::WriteStdinRequest { container_id: cid.into(), exec_id: eid.into(), data: buf[..n].to_vec(), ..Default::default() };
                if let Err(e) = agent.write_stdin(long(), &req) {
                    ::log::debug!("stdin of {cid}/{eid} closed by the guest: {e}");
                    return;
                }
            }
        }
        Err(e) => ::log::warn!("cannot open stdin FIFO {path:?} of {cid}/{eid}: {e}"),
    }
    close_stdin(agent, cid, eid);
}

/// Closes the guest process's stdin (errors only logged: it may be closed already).
pub fn close_stdin(agent: &AgentClient, cid: &str, eid: &str) {
    let req = agent::CloseStdinRequest { container_id: cid.into(), exec_id: eid.into(), ..Default::default() };
    if let Err(e) = agent.close_stdin(short(), &req) {
        ::log::debug!("CloseStdin {cid}/{eid}: {e}");
    }
}

/// Opens and closes the output FIFOs of a process that never started (its start failed), so
/// that containerd's readers see EOF instead of waiting for a writer that never comes (an
/// ExecSync of a missing binary hung 60 s that way). A FIFO without a reader is left alone.
pub fn release_outputs(paths: &StdioPaths) {
    use std::os::unix::fs::OpenOptionsExt;
    for path in [&paths.stdout, &paths.stderr] {
        if path.is_empty() {
            continue;
        }
        match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path) {
            Ok(f) => drop(f),
            Err(e) => ::log::debug!("releasing output FIFO {path:?}: {e}"),
        }
    }
}
