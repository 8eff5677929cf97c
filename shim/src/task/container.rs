//! Creating a container (rootfs image, VM, agent, guest container), watching its processes
//! and its VM, and tearing everything down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::shim::shim::CreateTaskRequest;
use containerd_shim_protos::topics::{TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC};
use husk_config::HuskConfig;
use husk_protocol::agent;
use husk_protocol::agent_ttrpc::AgentClient;

use super::process::{from_unix_nanos, now, Process, VM_DIED_EXIT_STATUS};
use super::Inner;
use crate::agent::{agent_err, long, short};
use crate::error::{Result, ShimError};
use crate::io::{self, StdioPaths};
use crate::state::{StateDir, StateInfo, BUNDLE_POINTER};
use crate::vm::{Vm, VmError, VmPlan};
use crate::{options, rootfs};

/// How long the exit report waits for stdout/stderr to reach EOF after the process exited
/// (longer only if a background child keeps the stream open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest gets to power off before the VMM is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The virtio-blk serial of the rootfs disk.
const ROOTFS_DISK_ID: &str = "rootfs";
/// Guest CID.
const GUEST_CID: u32 = 3;
/// Path of the KVM device.
const KVM_DEVICE: &str = "/dev/kvm";

/// A container and the VM around it.
pub struct Container {
    /// Container id.
    pub id: String,
    /// OCI bundle.
    pub bundle: PathBuf,
    /// The VMM.
    pub vm: Vm,
    /// Its state directory.
    pub state: StateDir,
    /// Client of the agent in the guest.
    pub agent: AgentClient,
    /// The init process.
    pub init: Arc<Process>,
    /// Exec'd processes by exec id.
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Set while the shim itself stops the VM (its exit is then expected).
    pub stopping: AtomicBool,
    /// Set while paused.
    pub paused: AtomicBool,
}

/// Undoes a partial creation unless disarmed.
struct Undo {
    state: Option<StateDir>,
    vm: Option<Vm>,
    bundle_pointer: Option<PathBuf>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(vm) = self.vm.take() {
            if vm.kill(SHUTDOWN_TIMEOUT).is_none() {
                log::error!("husk-vmm pid {} did not die after SIGKILL", vm.pid());
            }
        }
        if let Some(p) = self.bundle_pointer.take() {
            let _ = std::fs::remove_file(p);
        }
        if let Some(sd) = self.state.take() {
            if let Err(e) = sd.remove() {
                log::error!("cleanup after failed create: {}", crate::error::chain(&e));
            }
        }
    }
}

/// Reads and parses `config.json` of the bundle; returns the raw bytes (what the agent gets)
/// and the parsed spec.
fn load_spec(bundle: &Path) -> Result<(Vec<u8>, oci_spec::runtime::Spec)> {
    let path = bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&path).map_err(|source| ShimError::Spec { path: path.clone(), source })?;
    if spec.process().is_none() {
        return Err(ShimError::invalid(path.display().to_string(), "the spec has no process"));
    }
    let raw = std::fs::read(&path).map_err(|e| ShimError::io("read", &path, e))?;
    Ok((raw, spec))
}

fn check_kvm() -> Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
        .map(drop)
        .map_err(|source| VmError::KvmUnavailable { path: KVM_DEVICE.into(), source }.into())
}

/// The kernel command line: husk's defaults, the agent port, then the configured extra.
pub fn kernel_cmdline(cfg: &HuskConfig) -> String {
    let mut c = format!("{} {}={}", husk_config::vm::DEFAULT_CMDLINE, husk_protocol::AGENT_PORT_CMDLINE_KEY, cfg.shim.agent_vsock_port);
    if !cfg.vm.cmdline.trim().is_empty() {
        c.push(' ');
        c.push_str(cfg.vm.cmdline.trim());
    }
    c
}

impl Container {
    /// Creates the container: everything or nothing (a failure leaves no VMM, state or image).
    pub fn create(inner: &Arc<Inner>, req: &CreateTaskRequest) -> Result<Arc<Container>> {
        crate::state::validate_id(&req.id)?;
        let bundle = PathBuf::from(&req.bundle);
        let explicit = options::config_path_from_options(req.options.as_ref())?;
        let (cfg_path, cfg) = options::load_config(explicit)?;
        log::info!("creating {} with configuration {cfg_path:?}", req.id);
        let (spec_json, spec) = load_spec(&bundle)?;
        let terminal = req.terminal || spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);

        let state = StateDir::create(&cfg.shim.state_dir, &req.id)?;
        let pointer = bundle.join(BUNDLE_POINTER);
        let mut undo = Undo { state: Some(state.clone()), vm: None, bundle_pointer: None };
        std::fs::write(&pointer, state.path().as_os_str().as_encoded_bytes()).map_err(|e| ShimError::io("write", &pointer, e))?;
        undo.bundle_pointer = Some(pointer);

        let mut plan = VmPlan {
            vmm: cfg.shim.vmm.clone(),
            kernel: cfg.vm.kernel.clone(),
            initrd: cfg.vm.initramfs.clone(),
            cmdline: kernel_cmdline(&cfg),
            vcpus: cfg.vm.vcpus,
            memory_mib: cfg.vm.memory.mib(),
            console_log: state.console_log(),
            api_sock: state.api_sock(),
            vsock_uds: state.vsock(),
            cid: GUEST_CID,
            disks: Vec::new(),
            vmm_log: state.vmm_log(),
            work_dir: state.path().to_path_buf(),
        };
        plan.check_files()?;
        check_kvm()?;

        let root_path = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| PathBuf::from("rootfs"));
        let specs = rootfs::mount_specs(&req.rootfs, &bundle, &root_path)?;
        let image = rootfs::build(&specs, &state.rootfs_image(), &cfg.shim.image_cache_dir)?;
        log::info!("rootfs image {:?} ({}, cached: {})", image.path, image.fstype, image.from_cache);
        plan.disks.push((image.path.clone(), ROOTFS_DISK_ID.into(), image.read_only));

        let mut info = StateInfo {
            id: req.id.clone(),
            namespace: inner.namespace.clone(),
            bundle: bundle.clone(),
            shim_pid: std::process::id(),
            vmm_pid: 0,
            image: Some(image.path.clone()),
            image_cached: image.cache_key.is_some(),
            created_unix: now().seconds.max(0) as u64,
        };
        state.write_info(&info)?;
        let vm = Vm::spawn(plan)?;
        info.vmm_pid = vm.pid();
        state.write_info(&info)?;
        let vm = undo.vm.insert(vm);

        let agent = crate::agent::connect(vm, cfg.shim.agent_vsock_port, Duration::from_secs(cfg.shim.boot_timeout_secs))?;
        let creq = agent::CreateContainerRequest {
            container_id: req.id.clone(),
            oci_spec_json: spec_json,
            rootfs: Some(agent::Rootfs {
                disk_serial: ROOTFS_DISK_ID.into(),
                fstype: image.fstype.as_str().into(),
                read_only: image.read_only,
                ..Default::default()
            })
            .into(),
            stdin: !req.stdin.is_empty(),
            ..Default::default()
        };
        let pid = agent.create_container(short(), &creq).map_err(agent_err("CreateContainer"))?.pid;

        let stdio = StdioPaths { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone(), terminal };
        let init = Arc::new(Process::new("", stdio, Vec::new()));
        init.set_pid(pid);
        let vm = undo.vm.take().ok_or_else(|| ShimError::FailedPrecondition("VM vanished during create".into()))?;
        undo.state = None;
        undo.bundle_pointer = None;
        let c = Arc::new(Container {
            id: req.id.clone(),
            bundle,
            vm,
            state,
            agent,
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            paused: AtomicBool::new(false),
        });
        c.watch_process(inner, &init);
        c.watch_vm(inner);
        c.watch_oom(inner);
        Ok(c)
    }

    /// Starts the stdio pumps of `p` and a thread that reports its exit once stdout and stderr
    /// drained.
    pub fn watch_process(self: &Arc<Self>, inner: &Arc<Inner>, p: &Arc<Process>) {
        let pumps = io::start(&self.agent, &self.id, &p.exec_id, &p.stdio);
        p.set_pumps(pumps.clone());
        let (c, inner, proc_) = (self.clone(), inner.clone(), p.clone());
        let spawned = std::thread::Builder::new().name("wait".into()).spawn(move || {
            let p = proc_;
            let req = agent::WaitProcessRequest { container_id: c.id.clone(), exec_id: p.exec_id.clone(), ..Default::default() };
            let (status, at) = loop {
                match c.agent.wait_process(long(), &req) {
                    Ok(r) => break (r.exit_status, from_unix_nanos(r.exited_at_unix_nanos)),
                    Err(ttrpc::Error::RpcStatus(st)) => {
                        // The agent answered: it cannot report this process (a protocol-level
                        // failure, not a transport one). Report it as lost rather than hang.
                        log::error!("WaitProcess {}/{} refused by the agent: {:?} {}", c.id, p.exec_id, st.code(), st.message());
                        break (VM_DIED_EXIT_STATUS, now());
                    }
                    Err(e) => {
                        if c.vm.exit_watch().wait(Some(Duration::from_secs(2))).is_some() {
                            log::warn!("{}/{}: the VM exited before the process did: {e}", c.id, p.exec_id);
                            break (VM_DIED_EXIT_STATUS, now());
                        }
                        log::warn!("WaitProcess {}/{} failed, retrying: {e}", c.id, p.exec_id);
                    }
                }
            };
            if !pumps.wait_drained(DRAIN_TIMEOUT) {
                log::warn!("{}/{}: output still open {DRAIN_TIMEOUT:?} after exit; reporting the exit", c.id, p.exec_id);
            }
            c.report_exit(&inner, &p, status, at);
        });
        if let Err(e) = spawned {
            log::error!("cannot start the wait thread of {}/{}: {e}", self.id, p.exec_id);
        }
    }

    fn report_exit(&self, inner: &Inner, p: &Process, status: u32, at: containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp) {
        if !p.set_exited(status, at.clone()) {
            return;
        }
        let st = p.state();
        log::info!("{}/{} exited with status {status}", self.id, p.exec_id);
        let id = if p.exec_id.is_empty() { self.id.clone() } else { p.exec_id.clone() };
        let ev = TaskExit { container_id: self.id.clone(), id, pid: st.pid, exit_status: status, exited_at: Some(at).into(), ..Default::default() };
        inner.events.send(TASK_EXIT_EVENT_TOPIC, Box::new(ev));
    }

    /// A VMM that exits while the shim did not stop it ends every process with an error exit.
    fn watch_vm(self: &Arc<Self>, inner: &Arc<Inner>) {
        let (c, inner) = (self.clone(), inner.clone());
        let _ = std::thread::Builder::new().name("vm-watch".into()).spawn(move || {
            let Some(st) = c.vm.exit_watch().wait(None) else { return };
            if c.stopping.load(Ordering::SeqCst) {
                return;
            }
            log::error!("husk-vmm of {} exited unexpectedly with {st}: {}", c.id, c.vm.exit_reason());
            let execs: Vec<_> = c.execs.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
            for p in execs.iter().chain(std::iter::once(&c.init)) {
                c.report_exit(&inner, p, VM_DIED_EXIT_STATUS, now());
            }
        });
    }

    fn watch_oom(self: &Arc<Self>, inner: &Arc<Inner>) {
        let (c, inner) = (self.clone(), inner.clone());
        let _ = std::thread::Builder::new().name("oom-watch".into()).spawn(move || loop {
            match c.agent.get_oom_event(long(), &agent::GetOomEventRequest::new()) {
                Ok(ev) => {
                    log::warn!("OOM kill in container {}", ev.container_id);
                    inner.events.send(TASK_OOM_EVENT_TOPIC, Box::new(TaskOOM { container_id: c.id.clone(), ..Default::default() }));
                }
                Err(e) => {
                    log::debug!("OOM watch of {} ended: {e}", c.id);
                    return;
                }
            }
        });
    }

    /// The process `exec_id` ("" = init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound { kind: "exec", id: exec_id.into() })
    }

    /// Stops the VM (agent power-off, then SIGKILL) and removes every host-side trace except
    /// cached images.
    pub fn destroy(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if self.vm.exit_watch().get().is_none() {
            let rm = agent::RemoveContainerRequest { container_id: self.id.clone(), ..Default::default() };
            if let Err(e) = self.agent.remove_container(short(), &rm) {
                log::debug!("RemoveContainer {}: {e}", self.id);
            }
            let ctx = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
            if let Err(e) = self.agent.shutdown(ctx, &agent::ShutdownRequest::new()) {
                log::debug!("agent Shutdown {}: {e}", self.id);
            }
            if self.vm.exit_watch().wait(Some(SHUTDOWN_TIMEOUT)).is_none() {
                log::warn!("VM of {} did not power off within {SHUTDOWN_TIMEOUT:?}; killing husk-vmm", self.id);
                if self.vm.kill(SHUTDOWN_TIMEOUT).is_none() {
                    log::error!("husk-vmm pid {} did not die after SIGKILL", self.vm.pid());
                }
            }
        }
        let _ = std::fs::remove_file(self.bundle.join(BUNDLE_POINTER));
        if let Err(e) = self.state.remove() {
            log::error!("{}", crate::error::chain(&e));
        }
    }
}
