//! The spec's OCI hooks that run on the host, as runc runs them: createRuntime, createContainer
//! (the container's namespaces are the VM's, so it runs in the runtime's like createRuntime),
//! prestart (deprecated; run before createRuntime, as runc does), poststart and poststop. Each gets the OCI
//! state on stdin, its own argv and environment, the bundle as working directory and its
//! timeout; stdout and stderr are kept (bounded) for the error. startContainer hooks run in
//! the container: they are the guest's business.
//!
//! The state's `pid` is a host process in the container's network namespace (the namespace
//! holder of [`crate::network::holder`], else the shim): nerdctl's createRuntime hook runs CNI
//! in `/proc/<pid>/ns/net`. The order on the host: holder, prestart, createRuntime,
//! createContainer, then the scan of the network namespace and the VM's boot; poststart after
//! the container's process started; poststop once the VM is gone.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use oci_spec::runtime::{ContainerState, Hook, Spec, StateBuilder};

/// Most bytes of a hook's stdout and stderr kept for the error message.
const KEEP: usize = 16 << 10;

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// During Create, after the runtime's environment (the namespace holder) exists.
    CreateRuntime,
    /// During Create, after createRuntime.
    CreateContainer,
    /// During Create, with createRuntime (deprecated by the spec).
    Prestart,
    /// After the container's process started.
    Poststart,
    /// After the container was deleted.
    Poststop,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::CreateRuntime => "createRuntime",
            Phase::CreateContainer => "createContainer",
            Phase::Prestart => "prestart",
            Phase::Poststart => "poststart",
            Phase::Poststop => "poststop",
        }
    }

    fn status(self) -> ContainerState {
        match self {
            Phase::CreateRuntime | Phase::CreateContainer | Phase::Prestart => ContainerState::Creating,
            Phase::Poststart => ContainerState::Running,
            Phase::Poststop => ContainerState::Stopped,
        }
    }
}

/// Errors running a hook.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook could not be started.
    #[error("{phase} hook {path:?} could not be started")]
    Spawn {
        /// The phase's name.
        phase: &'static str,
        /// The hook binary.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The hook failed.
    #[error("{phase} hook {path:?} failed ({status}): {stderr}")]
    Failed {
        /// The phase's name.
        phase: &'static str,
        /// The hook binary.
        path: PathBuf,
        /// How it ended.
        status: String,
        /// Its stderr (or stdout, if stderr is empty), trimmed and bounded.
        stderr: String,
    },
    /// The hook did not finish within its timeout (it was killed).
    #[error("{phase} hook {path:?} did not finish within its timeout of {secs} s (killed)")]
    Timeout {
        /// The phase's name.
        phase: &'static str,
        /// The hook binary.
        path: PathBuf,
        /// The timeout.
        secs: i64,
    },
    /// The hook's entry in the spec is unusable.
    #[error("{phase} hook {path:?}: {reason}")]
    Invalid {
        /// The phase's name.
        phase: &'static str,
        /// The hook binary.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The hooks of `spec` for `phase`.
pub fn of(spec: &Spec, phase: Phase) -> Vec<Hook> {
    let Some(h) = spec.hooks().as_ref() else { return Vec::new() };
    #[allow(deprecated)]
    let list = match phase {
        Phase::CreateRuntime => h.create_runtime(),
        Phase::CreateContainer => h.create_container(),
        Phase::Prestart => h.prestart(),
        Phase::Poststart => h.poststart(),
        Phase::Poststop => h.poststop(),
    };
    list.clone().unwrap_or_default()
}

/// Whether `spec` has hooks that run on the host during Create.
pub fn any_at_create(spec: &Spec) -> bool {
    [Phase::CreateRuntime, Phase::CreateContainer, Phase::Prestart].into_iter().any(|p| !of(spec, p).is_empty())
}

/// The OCI state a hook gets on stdin.
fn state_json(spec: &Spec, id: &str, bundle: &Path, pid: u32, phase: Phase) -> Vec<u8> {
    let annotations: HashMap<String, String> = spec.annotations().clone().unwrap_or_default();
    let state = StateBuilder::default()
        .version(spec.version().clone())
        .id(id.to_string())
        .status(phase.status())
        .pid(i32::try_from(pid).unwrap_or(0))
        .bundle(bundle.to_path_buf())
        .annotations(annotations)
        .build();
    // Every field is plain data: building and encoding cannot fail.
    state.ok().and_then(|s| serde_json::to_vec(&s).ok()).unwrap_or_default()
}

/// Reads `r` to its end in a thread, keeping the last `KEEP` bytes.
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * KEEP {
                kept.drain(..kept.len() - KEEP);
            }
        }
        let cut = kept.len().saturating_sub(KEEP);
        kept.split_off(cut)
    })
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => st.to_string(),
    }
}

/// Runs one hook with `state` on stdin.
fn run_one(phase: Phase, hook: &Hook, state: &[u8], cwd: &Path) -> Result<(), HookError> {
    let name = phase.name();
    let path = hook.path().clone();
    if !path.is_absolute() {
        return Err(HookError::Invalid { phase: name, path, reason: "the path must be absolute" });
    }
    let timeout = hook.timeout();
    if timeout.is_some_and(|t| t <= 0) {
        return Err(HookError::Invalid { phase: name, path, reason: "a timeout must be greater than zero" });
    }
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(&path);
    if let Some(arg0) = args.first() {
        cmd.arg0(arg0);
    }
    cmd.args(args.iter().skip(1)).env_clear().current_dir(cwd).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn { phase: name, path: path.clone(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state may close stdin early: not an error.
        let _ = stdin.write_all(state);
    }
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let waited = match timeout {
        Some(secs) => rx.recv_timeout(Duration::from_secs(secs.unsigned_abs())).ok(),
        None => rx.recv().ok(),
    };
    let Some(result) = waited else {
        // Kill the hook and whatever it started (its own process group).
        if let Ok(pgid) = i32::try_from(pid) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = waiter.join();
        return Err(HookError::Timeout { phase: name, path, secs: timeout.unwrap_or_default() });
    };
    let _ = waiter.join();
    let st = result.map_err(|source| HookError::Spawn { phase: name, path: path.clone(), source })?;
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    if st.success() {
        return Ok(());
    }
    let text = if stderr.iter().all(u8::is_ascii_whitespace) { stdout } else { stderr };
    Err(HookError::Failed { phase: name, path, status: describe(st), stderr: String::from_utf8_lossy(&text).trim().to_string() })
}

/// Runs the hooks of `phase` in `spec` in order, for container `id` of `bundle` whose host
/// process is `pid`; the first failure stops them.
pub fn run(spec: &Spec, phase: Phase, id: &str, bundle: &Path, pid: u32) -> Result<(), HookError> {
    let hooks = of(spec, phase);
    if hooks.is_empty() {
        return Ok(());
    }
    let state = state_json(spec, id, bundle, pid, phase);
    for h in &hooks {
        log::info!("{id}: running {} hook {:?}", phase.name(), h.path());
        run_one(phase, h, &state, bundle)?;
    }
    Ok(())
}

/// Runs the hooks of `phase` whose failure the spec says to log, not to act on (poststart,
/// poststop): every one runs; failures are logged.
pub fn run_logged(spec: &Spec, phase: Phase, id: &str, bundle: &Path, pid: u32) {
    let state = state_json(spec, id, bundle, pid, phase);
    for h in &of(spec, phase) {
        log::info!("{id}: running {} hook {:?}", phase.name(), h.path());
        if let Err(e) = run_one(phase, h, &state, bundle) {
            log::warn!("{id}: {}", crate::error::chain(&e));
        }
    }
}

/// Runs the Create-time hooks in runc's order: prestart, createRuntime, createContainer.
pub fn run_at_create(spec: &Spec, id: &str, bundle: &Path, pid: u32) -> Result<(), HookError> {
    for phase in [Phase::Prestart, Phase::CreateRuntime, Phase::CreateContainer] {
        run(spec, phase, id, bundle, pid)?;
    }
    Ok(())
}

/// Runs the poststop hooks of the spec in `bundle` (logged; a bundle whose spec is gone has
/// none left to run).
pub fn run_poststop(bundle: &Path, id: &str, pid: u32) {
    match Spec::load(bundle.join("config.json")) {
        Ok(spec) => run_logged(&spec, Phase::Poststop, id, bundle, pid),
        Err(e) => log::debug!("{id}: no spec for poststop hooks in {}: {e}", bundle.display()),
    }
}

/// Runs the poststart hooks of the spec in `bundle` (logged).
pub fn run_poststart(bundle: &Path, id: &str, pid: u32) {
    match Spec::load(bundle.join("config.json")) {
        Ok(spec) => run_logged(&spec, Phase::Poststart, id, bundle, pid),
        Err(e) => log::warn!("{id}: cannot read the spec for poststart hooks in {}: {e}", bundle.display()),
    }
}
