//! The API thread and its request handlers.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::http::{read_request, write_response, HttpError, Request};
use super::ApiError;
use crate::device_manager::CounterSource;
use crate::devices::legacy::i8042::I8042;
use crate::exit::{ExitReason, VmExit};
use crate::vcpu::Vcpus;
use crate::vmm::Vm;

/// How long a pause may take before the API reports failure.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What `GET /vm` describes, captured when the VM starts, and the keyboard used for the
/// graceful shutdown.
#[derive(Clone)]
pub struct VmInfo {
    config: Value,
    cmdline: String,
    i8042: Arc<I8042>,
}

impl VmInfo {
    /// Captures the description of `vm`.
    pub fn new(vm: &Vm) -> Self {
        VmInfo { config: serde_json::to_value(&vm.config).unwrap_or(Value::Null), cmdline: vm.cmdline.clone(), i8042: vm.i8042.clone() }
    }
}

struct State {
    info: VmInfo,
    i8042: Arc<I8042>,
    vcpus: Arc<Vcpus>,
    exit: Arc<VmExit>,
    counters: Vec<(String, Arc<dyn CounterSource>)>,
}

/// The running API server; removes its socket when dropped.
pub struct ApiServer {
    path: PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ApiServer {
    /// Binds `path` (replacing a stale socket, never another kind of file) and serves it on
    /// thread `vmm-api`.
    pub fn start(
        path: &Path,
        info: VmInfo,
        vcpus: Arc<Vcpus>,
        exit: Arc<VmExit>,
        counters: Vec<(String, Arc<dyn CounterSource>)>,
        filter: Option<Arc<seccompiler::BpfProgram>>,
    ) -> Result<Self, ApiError> {
        if let Ok(md) = std::fs::symlink_metadata(path) {
            if md.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path).map_err(|e| ApiError::Bind(path.into(), e))?;
        let state = State { i8042: info.i8042.clone(), info, vcpus, exit, counters };
        std::thread::Builder::new()
            .name("vmm-api".into())
            .spawn(move || {
                if let Some(f) = filter {
                    if let Err(e) = seccompiler::apply_filter(&f) {
                        state.exit.request(ExitReason::Error(format!("vmm-api: cannot install seccomp filter: {e}")));
                        return;
                    }
                }
                for conn in listener.incoming() {
                    match conn {
                        Ok(s) => serve(&state, s),
                        Err(e) => log::warn!("API accept failed: {e}"),
                    }
                }
            })
            .map_err(ApiError::Spawn)?;
        Ok(ApiServer { path: path.into() })
    }
}

fn serve(state: &State, mut s: UnixStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let (status, body, after) = match read_request(&mut s) {
        Ok(req) => handle(state, &req),
        Err(HttpError::TooLarge) => (413, error("request too large"), None),
        Err(HttpError::Bad(m)) => (400, error(&m), None),
        Err(HttpError::Io(_)) => return,
    };
    if let Err(e) = write_response(&mut s, status, &body.to_string()) {
        log::debug!("API response not delivered: {e}");
    }
    drop(s);
    if let Some(reason) = after {
        state.exit.request(reason);
    }
}

fn error(msg: &str) -> Value {
    json!({ "error": msg })
}

fn run_state(state: &State) -> &'static str {
    if state.vcpus.is_paused() {
        "paused"
    } else {
        "running"
    }
}

fn handle(state: &State, req: &Request) -> (u16, Value, Option<ExitReason>) {
    let write = matches!(req.method.as_str(), "PUT" | "POST");
    match (req.path.as_str(), req.method.as_str()) {
        ("/vm", "GET") => (200, json!({ "state": run_state(state), "config": state.info.config, "cmdline": state.info.cmdline }), None),
        ("/vm/counters", "GET") => {
            let mut m = serde_json::Map::new();
            for (name, src) in &state.counters {
                let c: serde_json::Map<String, Value> = src.counters().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                m.insert(name.clone(), Value::Object(c));
            }
            (200, Value::Object(m), None)
        }
        ("/vm/pause", _) if write => {
            if state.vcpus.pause(PAUSE_TIMEOUT) {
                (200, json!({ "state": "paused" }), None)
            } else {
                (500, error("vCPUs did not stop within 5 s"), None)
            }
        }
        ("/vm/resume", _) if write => {
            state.vcpus.resume();
            (200, json!({ "state": "running" }), None)
        }
        ("/vm/shutdown", _) if write => {
            if state.vcpus.is_paused() {
                (409, error("the VM is paused; resume it first"), None)
            } else if state.i8042.ctrl_alt_del() {
                (200, json!({ "state": "shutting-down", "sent": "ctrl-alt-del" }), None)
            } else {
                (409, error("the guest has disabled its keyboard; it cannot be asked to shut down"), None)
            }
        }
        ("/vm/kill", _) if write => (200, json!({ "state": "stopped" }), Some(ExitReason::Killed)),
        ("/vm" | "/vm/counters", _) | ("/vm/pause" | "/vm/resume" | "/vm/shutdown" | "/vm/kill", _) => (405, error(&format!("{} not allowed on {}", req.method, req.path)), None),
        _ => (404, error(&format!("no such resource {}", req.path)), None),
    }
}
