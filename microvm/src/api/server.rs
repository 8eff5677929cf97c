//! The API thread and its request handlers.

use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use husk_config::api::{Counters, DiskInfo, ErrorBody, StateChange, VmDescription, VmState};
use husk_config::VmConfig;
use serde::Serialize;
use serde_json::Value;

use super::fds::{FdReader, MAX_FDS};
use super::http::{read_request, write_response, HttpError};
use super::routes::{error_chain, route, Route};
use super::ApiError;
use crate::device_manager::CounterSource;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::block::{DiskHandle, SlotError};
use crate::exit::{ExitReason, VmExit};
use crate::vcpu::Vcpus;
use crate::vmm::Vm;

/// How long a pause may take before the API reports failure.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What `GET /vm` describes, captured when the VM starts, and the keyboard used for the
/// graceful shutdown.
#[derive(Clone)]
pub struct VmInfo {
    config: VmConfig,
    cmdline: String,
    i8042: Arc<I8042>,
    kvm_vm: Arc<kvm_ioctls::VmFd>,
    mem: crate::memory::GuestMemoryMmap,
    serial: Arc<SerialDevice>,
}

impl VmInfo {
    /// Captures the description of `vm`.
    pub fn new(vm: &Vm) -> Self {
        VmInfo {
            config: vm.config.clone(),
            cmdline: vm.cmdline.clone(),
            i8042: vm.i8042.clone(),
            kvm_vm: vm.vm.clone(),
            mem: vm.mem.clone(),
            serial: vm.serial.clone(),
        }
    }
}

/// Saves the paused VM into `dir`: memory first, the state file last.
fn save_snapshot(state: &State, dir: &Path) -> (u16, Value, Option<ExitReason>) {
    use crate::snapshot;
    if !state.vcpus.is_paused() {
        return (409, error("the VM is running; pause it first (PUT /vm/pause)"), None);
    }
    if let Some(d) = snapshot::unsupported_device(&state.info.config) {
        return (409, error(error_chain(&snapshot::SnapshotError::Unsupported(d))), None);
    }
    for f in [snapshot::STATE_FILE, snapshot::MEMORY_FILE] {
        if dir.join(f).symlink_metadata().is_ok() {
            return (400, error(format!("snapshot directory {dir:?} already holds {f}")), None);
        }
    }
    if !dir.is_dir() {
        return (400, error(format!("snapshot directory {dir:?} is not an existing directory")), None);
    }
    let vcpus = match state.vcpus.save_states(PAUSE_TIMEOUT) {
        Some(Ok(v)) => v,
        Some(Err(e)) => return (500, error(format!("cannot save the vCPUs: {e}")), None),
        None => return (409, error("the VM is running; pause it first (PUT /vm/pause)"), None),
    };
    let mut devices = Vec::with_capacity(state.devices.transports.len());
    for (name, t) in &state.devices.transports {
        match t.save() {
            Ok(s) => devices.push((name.clone(), s)),
            Err(e) => return (409, error(format!("cannot snapshot {name}: {e}")), None),
        }
    }
    // After the devices, which name what keeps a VM from being saved now.
    if vm_memory::GuestMemoryBackend::iter(&state.info.mem).any(crate::memory::is_private) {
        return (409, error(snapshot::memory::COW_UNSAVED), None);
    }
    let result = snapshot::vm_state::save(&state.info.kvm_vm).and_then(|vm| {
        snapshot::memory::save(&state.info.mem, &dir.join(snapshot::MEMORY_FILE))?;
        let snap = snapshot::Snapshot {
            version: snapshot::FORMAT_VERSION,
            config: state.info.config.clone(),
            cmdline: state.info.cmdline.clone(),
            vm,
            vcpus,
            serial: state.info.serial.state().into(),
            i8042: state.info.i8042.state(),
            devices,
        };
        snapshot::write_state(dir, &snap)
    });
    match result {
        Ok(()) => (200, json(&husk_config::api::SnapshotDone { state: VmState::Paused, dir: dir.to_path_buf() }), None),
        Err(e) => {
            // Nothing half-written stays behind: without both files it is no snapshot.
            let _ = std::fs::remove_file(dir.join(snapshot::MEMORY_FILE));
            let _ = std::fs::remove_file(dir.join(snapshot::STATE_FILE));
            (500, error(error_chain(&e)), None)
        }
    }
}

/// What the API reaches of the devices: counters and disks.
#[derive(Clone, Default)]
pub struct ApiDevices {
    /// Counter sources by device name.
    pub counters: Vec<(String, Arc<dyn CounterSource>)>,
    /// Disks and slots, in the order the guest sees them.
    pub disks: Vec<Arc<DiskHandle>>,
    /// Every virtio transport, by device name (snapshots).
    pub transports: Vec<(String, Arc<crate::devices::virtio::mmio::MmioTransport>)>,
}

struct State {
    info: VmInfo,
    i8042: Arc<I8042>,
    vcpus: Arc<Vcpus>,
    exit: Arc<VmExit>,
    devices: ApiDevices,
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
        devices: ApiDevices,
        filter: Option<Arc<seccompiler::BpfProgram>>,
    ) -> Result<Self, ApiError> {
        if let Ok(md) = std::fs::symlink_metadata(path) {
            if md.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path).map_err(|e| ApiError::Bind(path.into(), e))?;
        let state = State { i8042: info.i8042.clone(), info, vcpus, exit, devices };
        crate::thread_builder("vmm-api")
            .spawn(move || {
                if let Some(f) = filter {
                    if let Err(e) = crate::seccomp::apply(&f, crate::seccomp::ThreadKind::Api) {
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
    let mut reader = FdReader::new(&s);
    let read = read_request(&mut reader);
    let (fds, too_many) = (reader.take_fds(), reader.too_many);
    let (status, body, after) = match read {
        Ok(_) if too_many => (400, error(format!("a request may carry at most {MAX_FDS} descriptor")), None),
        Ok(req) => match route(&req) {
            Ok(r) => handle(state, r, fds),
            Err(refusal) => (refusal.status, error(refusal.message), None),
        },
        Err(HttpError::TooLarge) => (413, error("request too large"), None),
        Err(HttpError::Bad(m)) => (400, error(m), None),
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

/// A JSON body; these types always serialize.
fn json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn error(msg: impl Into<String>) -> Value {
    json(&ErrorBody { error: msg.into() })
}

fn state_change(state: VmState) -> Value {
    json(&StateChange { state, sent: None })
}

fn run_state(state: &State) -> VmState {
    if state.vcpus.is_paused() {
        VmState::Paused
    } else {
        VmState::Running
    }
}

/// The status of a refused attach or detach: 409 for the slot's state (boot disk, occupied,
/// empty), 400 for the request (bad id or path, unusable image), 500 for the VMM.
fn slot_status(e: &SlotError) -> u16 {
    match e {
        SlotError::BootDisk { .. } | SlotError::Occupied { .. } | SlotError::Empty { .. } => 409,
        SlotError::Request { .. } | SlotError::Image { .. } | SlotError::TooSmall { .. } => 400,
        SlotError::Worker { .. } => 500,
    }
}

fn disk_answer(r: Result<DiskInfo, SlotError>) -> (u16, Value, Option<ExitReason>) {
    match r {
        Ok(info) => (200, json(&info), None),
        Err(e) => (slot_status(&e), error(error_chain(&e)), None),
    }
}

/// Executes `route`; `fds` are the descriptors the request carried (only an attach takes
/// one: its image).
fn handle(state: &State, route: Route, mut fds: Vec<OwnedFd>) -> (u16, Value, Option<ExitReason>) {
    let find = |name: &str| state.devices.disks.iter().find(|d| d.name() == name).cloned();
    let no_disk = |name: &str| (404, error(format!("no disk or slot named {name:?} (GET /vm/disks lists them)")), None);
    if !fds.is_empty() && !matches!(route, Route::Attach(..)) {
        return (400, error("only an attach (PUT /vm/disks/<slot>) may carry a descriptor"), None);
    }
    match route {
        Route::Describe => {
            let d = VmDescription { state: run_state(state), config: state.info.config.clone(), cmdline: state.info.cmdline.clone() };
            (200, json(&d), None)
        }
        Route::Counters => {
            let c: Counters = state
                .devices
                .counters
                .iter()
                .map(|(name, src)| (name.clone(), src.counters().into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
                .collect();
            (200, json(&c), None)
        }
        Route::Pause => {
            if state.vcpus.pause(PAUSE_TIMEOUT) {
                (200, state_change(VmState::Paused), None)
            } else {
                (500, error("vCPUs did not stop within 5 s"), None)
            }
        }
        Route::Resume => {
            state.vcpus.resume();
            (200, state_change(VmState::Running), None)
        }
        Route::Shutdown => {
            if state.vcpus.is_paused() {
                (409, error("the VM is paused; resume it first"), None)
            } else if state.i8042.ctrl_alt_del() {
                (200, json(&StateChange { state: VmState::ShuttingDown, sent: Some("ctrl-alt-del".into()) }), None)
            } else {
                (409, error("the guest has disabled its keyboard; it cannot be asked to shut down"), None)
            }
        }
        Route::Kill => (200, state_change(VmState::Stopped), Some(ExitReason::Killed)),
        Route::Snapshot(dir) => save_snapshot(state, &dir),
        Route::Disks => {
            let all: Vec<DiskInfo> = state.devices.disks.iter().map(|d| d.info()).collect();
            (200, json(&all), None)
        }
        Route::Disk(name) => match find(&name) {
            Some(d) => (200, json(&d.info()), None),
            None => no_disk(&name),
        },
        Route::Attach(name, req) => match find(&name) {
            Some(d) => disk_answer(match fds.pop() {
                Some(image) => d.attach_fd(&req, image),
                None => d.attach(&req),
            }),
            None => no_disk(&name),
        },
        Route::Detach(name) => match find(&name) {
            Some(d) => disk_answer(d.detach()),
            None => no_disk(&name),
        },
    }
}
