//! A container of a sandbox: its root filesystem (the sandbox's boot disk for the sandbox
//! container, a disk slot of the running VM for the others), its spec as the guest gets it,
//! and its processes (the init process and execs) with their stdio and exit status.

pub mod process;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::topics::{TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC};
use husk_config::ShimConfig;
use husk_protocol::agent;
use husk_rootfs::{BuiltImage, ImageLease};
use oci_spec::runtime::Spec;

pub use process::{from_unix_nanos, now, Process, VM_DIED_EXIT_STATUS};

use crate::agent::{agent_err, long, short};
use crate::error::{Result, ShimError};
use crate::io::{self, StdioPaths};
use crate::sandbox::spec::{check_namespaces, guest_spec, is_bind, is_pod_shm, Role, CONTAINER_TYPE};
use crate::sandbox::timeline::Timeline;
use crate::sandbox::{Boot, Sandbox, SlotLease};
use crate::state::{ContainerInfo, StateDir, BUNDLE_POINTER};
use crate::task::Events;
use crate::workdir::WorkDir;
use crate::{options, rootfs};

/// Exit status of a process that ended because the shim stopped its VM (128 + SIGKILL).
pub const KILLED_EXIT_STATUS: u32 = 128 + 9;

/// How long the exit report waits for stdout/stderr to reach EOF after the process exited
/// (longer only if a background child keeps the stream open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A container and the sandbox it runs in.
pub struct Container {
    /// Container id.
    pub id: String,
    /// OCI bundle.
    pub bundle: PathBuf,
    /// The sandbox (the pod's VM).
    pub sandbox: Arc<Sandbox>,
    /// Whether this is the sandbox container (whose delete ends the sandbox).
    pub is_sandbox: bool,
    /// The init process.
    pub init: Arc<Process>,
    /// Exec'd processes by exec id.
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Set while paused.
    pub paused: AtomicBool,
    /// The disk slot of a joining container's root filesystem.
    lease: Option<SlotLease>,
    /// A joining container's directory in the sandbox's state (its uncached image).
    dir: Option<PathBuf>,
    /// Its host bind mounts, by their names in the pod's shared directory.
    shares: Vec<String>,
    /// Keeps its cached rootfs image in the cache while the container exists.
    _cached: Option<ImageLease>,
}

/// What a container holds of its sandbox.
#[derive(Default)]
struct Parts {
    is_sandbox: bool,
    lease: Option<SlotLease>,
    dir: Option<PathBuf>,
    shares: Vec<String>,
    cached: Option<ImageLease>,
}

/// Steps to undo when a create fails, run in reverse order unless disarmed.
#[derive(Default)]
struct Rollback(Vec<Box<dyn FnOnce()>>);

impl Rollback {
    fn push(&mut self, f: impl FnOnce() + 'static) {
        self.0.push(Box::new(f));
    }
    fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        while let Some(f) = self.0.pop() {
            f();
        }
    }
}

/// Reads and parses `config.json` of the bundle.
pub fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|source| ShimError::Spec { path: path.clone(), source })?;
    if spec.process().is_none() {
        return Err(ShimError::invalid(path.display().to_string(), "the spec has no process"));
    }
    Ok(spec)
}

fn image_for(req: &CreateTaskRequest, bundle: &Path, spec: &Spec, output: &Path, shim: &ShimConfig) -> Result<BuiltImage> {
    let root_path = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| PathBuf::from("rootfs"));
    let specs = rootfs::mount_specs(&req.rootfs, bundle, &root_path)?;
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ShimError::io("create the image directory", dir, e))?;
    }
    let image = rootfs::build(&specs, output, shim)?;
    log::info!("{}: rootfs image {:?} ({}, cached: {})", req.id, image.path, image.fstype, image.from_cache);
    Ok(image)
}

/// Gives a new sandbox's state its image work directory on disk (`[shim] image_work_dir`),
/// after removing those of dead shims; on failure the state directory is removed.
fn attach_work_dir(state: StateDir, root: &Path, namespace: &str, id: &str) -> Result<StateDir> {
    match crate::workdir::sweep(root) {
        Ok(gone) if !gone.is_empty() => log::info!("removed {} image work directories of dead shims under {}", gone.len(), root.display()),
        Ok(_) => {}
        Err(e) => log::warn!("cannot sweep {}: {}", root.display(), crate::error::chain(&e)),
    }
    match WorkDir::create(root, namespace, id) {
        Ok(w) => Ok(state.with_images(w)),
        Err(e) => {
            if let Err(r) = state.remove() {
                log::error!("cleanup after a refused create: {}", crate::error::chain(&r));
            }
            Err(e)
        }
    }
}

/// Whether a new sandbox needs the shared file system: a CRI pod (its other containers get
/// CRI's /etc/hosts, resolv.conf, ... and volumes), or a container with host bind mounts.
fn needs_host_files(spec: &Spec, sandbox_id: &str) -> bool {
    let cri_pod = spec.annotations().as_ref().and_then(|a| a.get(CONTAINER_TYPE)).is_some_and(|t| t == "sandbox");
    cri_pod || spec.mounts().iter().flatten().any(|m| is_bind(m) && !is_pod_shm(m, sandbox_id))
}

fn stdio_of(req: &CreateTaskRequest, spec: &Spec) -> StdioPaths {
    let terminal = req.terminal || spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    StdioPaths { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone(), terminal }
}

/// Refuses, before anything is started or built, a bind mount the pod could not share: a
/// source that does not exist or is a socket, device or FIFO, a destination the container may
/// not shadow. The checks `create_in_guest` makes again when it shares (`shared`: the pod's
/// shared directory), without booting a VM or attaching a disk first.
fn check_binds(spec: &Spec, sandbox_id: &str, shared: &Path) -> Result<()> {
    let mut check = |m: &oci_spec::runtime::Mount| -> Result<String> {
        let src = m.source().clone().unwrap_or_default();
        crate::sharedfs::resolve_source(&src, shared)
            .map_err(|e| ShimError::invalid(format!("bind mount on {}", m.destination().display()), crate::error::chain(&e)))?;
        Ok(String::new())
    };
    guest_spec(spec, sandbox_id, &mut check).map(drop)
}

/// Creates the container in the guest: its host bind mounts shared with the pod first (their
/// names land in `shares`, for the caller to unshare), then the agent's CreateContainer.
fn create_in_guest(sandbox: &Sandbox, req: &CreateTaskRequest, spec: &Spec, image: &BuiltImage, serial: &str, shares: &mut Vec<String>) -> Result<u32> {
    let mut share = |m: &oci_spec::runtime::Mount| -> Result<String> {
        let src = m.source().clone().unwrap_or_default();
        let ro = m.options().iter().flatten().any(|o| o == "ro");
        let (name, guest) =
            sandbox.share(&src, ro).map_err(|e| ShimError::invalid(format!("bind mount on {}", m.destination().display()), crate::error::chain(&e)))?;
        shares.push(name);
        Ok(guest.display().to_string())
    };
    let guest = guest_spec(spec, &sandbox.id, &mut share)?;
    let json = serde_json::to_vec(&guest).map_err(|e| ShimError::invalid("spec", e.to_string()))?;
    let is_sandbox = req.id == sandbox.id;
    let creq = agent::CreateContainerRequest {
        container_id: req.id.clone(),
        sandbox_id: sandbox.id.clone(),
        oci_spec_json: json,
        rootfs: Some(agent::Rootfs { disk_serial: serial.into(), fstype: image.fstype.as_str().into(), read_only: image.read_only, ..Default::default() })
            .into(),
        stdin: !req.stdin.is_empty(),
        shared_fs_tag: if is_sandbox { sandbox.shared_fs_tag().into() } else { String::new() },
        ..Default::default()
    };
    Ok(sandbox.agent.create_container(short(), &creq).map_err(agent_err("CreateContainer"))?.pid)
}

impl Container {
    fn new(req: &CreateTaskRequest, spec: &Spec, sandbox: Arc<Sandbox>, pid: u32, parts: Parts) -> Container {
        let Parts { is_sandbox, lease, dir, shares, cached } = parts;
        let init = Arc::new(Process::new("", stdio_of(req, spec), Vec::new()));
        init.set_pid(pid);
        Container {
            id: req.id.clone(),
            bundle: PathBuf::from(&req.bundle),
            sandbox,
            is_sandbox,
            init,
            execs: Mutex::new(HashMap::new()),
            paused: AtomicBool::new(false),
            lease,
            dir,
            shares,
            _cached: cached,
        }
    }

    /// Creates a sandbox container: a new pod VM with it inside. Everything or nothing.
    pub fn create_sandbox(namespace: &str, req: &CreateTaskRequest, spec: &Spec) -> Result<(Arc<Sandbox>, Container)> {
        let mut timeline = Timeline::new(format!("sandbox {}", req.id));
        let bundle = PathBuf::from(&req.bundle);
        let explicit = options::config_path_from_options(req.options.as_ref())?;
        let (cfg_path, cfg) = options::load_config(explicit)?;
        log::info!("creating sandbox {} with configuration {cfg_path:?}", req.id);
        check_namespaces(spec, Role::Sandbox)?;
        io::check(&stdio_of(req, spec)).map_err(|e| ShimError::invalid("stdio", crate::error::chain(&e)))?;
        let state = StateDir::create(&cfg.shim.state_dir, namespace, &req.id)?;
        let state = attach_work_dir(state, &cfg.shim.image_work_dir, namespace, &req.id)?;
        if let Err(e) = check_binds(spec, &req.id, &state.path().join(crate::sharedfs::SHARED_DIR)) {
            if let Err(r) = state.remove() {
                log::error!("cleanup after a refused create: {}", crate::error::chain(&r));
            }
            return Err(e);
        }
        let mut undo = Rollback::default();
        let sd = state.clone();
        undo.push(move || {
            if let Err(e) = sd.remove() {
                log::error!("cleanup after a failed create: {}", crate::error::chain(&e));
            }
        });
        let pointer = bundle.join(BUNDLE_POINTER);
        std::fs::write(&pointer, state.path().as_os_str().as_encoded_bytes()).map_err(|e| ShimError::io("write", &pointer, e))?;
        undo.push(move || {
            let _ = std::fs::remove_file(pointer);
        });
        timeline.step("configuration and state");
        let image = image_for(req, &bundle, spec, &state.rootfs_image(), &cfg.shim)?;
        timeline.step("rootfs image");
        let share = needs_host_files(spec, &req.id);
        // The host side: the network namespace's holder, the Create-time hooks, the taps.
        let network = crate::network::prepare(spec, &req.id, &bundle)?;
        timeline.step("network");
        let boot = Boot { namespace, id: &req.id, bundle: &bundle, spec, rootfs: &image, share_host_files: share, network, timeline: &mut timeline };
        let sandbox = Arc::new(Sandbox::boot(boot, cfg, state)?);
        let sb = sandbox.clone();
        undo.push(move || sb.destroy());
        // A VM restored from a template has its root disk in a slot (the VM's destroy takes it
        // along).
        let serial = sandbox.root_serial.clone();
        // The sandbox's shares go with the sandbox (its destroy tears the shared directory down).
        let pid = create_in_guest(&sandbox, req, spec, &image, &serial, &mut Vec::new())?;
        timeline.step("container create in the guest");
        sandbox.configure_network()?;
        timeline.step("guest network");
        sandbox.set_init_pid(pid);
        undo.disarm();
        timeline.finish();
        // Until it starts, the container is its host process (what clients configure the
        // network of, through /proc/<pid>/ns/net), if there is one.
        let reported = sandbox.host_pid().unwrap_or(pid);
        let c = Container::new(req, spec, sandbox.clone(), reported, Parts { is_sandbox: true, cached: image.lease.clone(), ..Default::default() });
        Ok((sandbox, c))
    }

    /// Creates a container of a running sandbox: its root disk goes to a free disk slot of the
    /// VM. `others` are the pod's other containers (pid, id). Everything or nothing.
    pub fn create_member(sandbox: &Arc<Sandbox>, req: &CreateTaskRequest, spec: &Spec, others: &[(u32, String)]) -> Result<Container> {
        let mut timeline = Timeline::new(format!("container {} of sandbox {}", req.id, sandbox.id));
        let bundle = PathBuf::from(&req.bundle);
        let role = Role::Member { sandbox_id: &sandbox.id, sandbox_pid: sandbox.init_pid(), others };
        check_namespaces(spec, role)?;
        io::check(&stdio_of(req, spec)).map_err(|e| ShimError::invalid("stdio", crate::error::chain(&e)))?;
        if !sandbox.running() {
            return Err(ShimError::FailedPrecondition(format!("the VM of pod {} is not running", sandbox.id)));
        }
        check_binds(spec, &sandbox.id, &sandbox.state.path().join(crate::sharedfs::SHARED_DIR))?;
        let dir = sandbox.container_dir(&req.id);
        std::fs::create_dir_all(&dir).map_err(|e| ShimError::io("create", &dir, e))?;
        let mut undo = Rollback::default();
        let d = dir.clone();
        undo.push(move || {
            let _ = std::fs::remove_dir_all(d);
        });
        let pointer = bundle.join(BUNDLE_POINTER);
        std::fs::write(&pointer, sandbox.state.path().as_os_str().as_encoded_bytes()).map_err(|e| ShimError::io("write", &pointer, e))?;
        undo.push(move || {
            let _ = std::fs::remove_file(pointer);
        });
        crate::hooks::run_at_create(spec, &req.id, &bundle, sandbox.host_pid().unwrap_or(std::process::id()))?;
        timeline.step("checks and hooks");
        let image = image_for(req, &bundle, spec, &dir.join("rootfs.img"), &sandbox.cfg.shim)?;
        timeline.step("rootfs image");
        let lease = sandbox.attach_rootfs(&req.id, &image)?;
        timeline.step("disk attach");
        let (sb, l) = (sandbox.clone(), lease.clone());
        undo.push(move || {
            if let Err(e) = sb.detach_rootfs(&l) {
                log::error!("cleanup after a failed create: {}", crate::error::chain(&e));
            }
        });
        let mut shares = Vec::new();
        let created = create_in_guest(sandbox, req, spec, &image, &lease.serial, &mut shares);
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                for name in &shares {
                    sandbox.unshare(name);
                }
                return Err(e);
            }
        };
        timeline.step("container create in the guest");
        timeline.finish();
        undo.disarm();
        sandbox.record(ContainerInfo {
            id: req.id.clone(),
            bundle,
            slot: lease.slot.clone(),
            image: image.path.clone(),
            image_cached: image.cache_key.is_some(),
        });
        Ok(Container::new(
            req,
            spec,
            sandbox.clone(),
            pid,
            Parts { is_sandbox: false, lease: Some(lease), dir: Some(dir), shares, cached: image.lease.clone() },
        ))
    }

    /// The process `exec_id` ("" = init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs.lock().unwrap_or_else(|p| p.into_inner()).get(exec_id).cloned().ok_or_else(|| ShimError::NotFound { kind: "exec", id: exec_id.into() })
    }

    /// Every process: execs, then init.
    pub fn processes(&self) -> Vec<Arc<Process>> {
        let mut all: Vec<_> = self.execs.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        all.push(self.init.clone());
        all
    }

    /// Starts the stdio pumps of `p` and a thread that reports its exit once stdout and stderr
    /// drained.
    pub fn watch_process(self: &Arc<Self>, events: &Arc<Events>, p: &Arc<Process>) {
        let pumps = io::start(&self.sandbox.agent, &self.sandbox.namespace, &self.id, &p.exec_id, &p.stdio);
        p.set_pumps(pumps.clone());
        let (c, events, proc_) = (self.clone(), events.clone(), p.clone());
        let spawned = std::thread::Builder::new().name("wait".into()).spawn(move || {
            let p = proc_;
            let req = agent::WaitProcessRequest { container_id: c.id.clone(), exec_id: p.exec_id.clone(), ..Default::default() };
            let (status, at) = loop {
                match c.sandbox.agent.wait_process(long(), &req) {
                    Ok(r) => break (r.exit_status, from_unix_nanos(r.exited_at_unix_nanos)),
                    Err(ttrpc::Error::RpcStatus(st)) => {
                        // The agent answered: it cannot report this process (a protocol-level
                        // failure, not a transport one). Report it as lost rather than hang.
                        log::error!("WaitProcess {}/{} refused by the agent: {:?} {}", c.id, p.exec_id, st.code(), st.message());
                        break (VM_DIED_EXIT_STATUS, now());
                    }
                    Err(e) => {
                        if c.sandbox.vm.exit_watch().wait(Some(Duration::from_secs(2))).is_some() {
                            // Stopped by the shim (the pod's sandbox went): killed, as runc
                            // reports a container killed with its pod; else the VM died.
                            if c.sandbox.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                                break (KILLED_EXIT_STATUS, now());
                            }
                            log::warn!("{}/{}: the VM exited before the process did: {e}", c.id, p.exec_id);
                            break (VM_DIED_EXIT_STATUS, now());
                        }
                        if p.exited() {
                            return;
                        }
                        log::warn!("WaitProcess {}/{} failed, retrying: {e}", c.id, p.exec_id);
                    }
                }
            };
            if !pumps.wait_drained(DRAIN_TIMEOUT) {
                log::warn!("{}/{}: output still open {DRAIN_TIMEOUT:?} after exit; reporting the exit", c.id, p.exec_id);
            }
            c.report_exit(&events, &p, status, at);
        });
        if let Err(e) = spawned {
            log::error!("cannot start the wait thread of {}/{}: {e}", self.id, p.exec_id);
        }
    }

    /// Records the exit of `p` and publishes it (once).
    pub fn report_exit(&self, events: &Events, p: &Process, status: u32, at: Timestamp) {
        if !p.set_exited(status, at.clone()) {
            return;
        }
        let st = p.state();
        log::info!("{}/{} exited with status {status}", self.id, p.exec_id);
        let id = if p.exec_id.is_empty() { self.id.clone() } else { p.exec_id.clone() };
        let ev = TaskExit { container_id: self.id.clone(), id, pid: st.pid, exit_status: status, exited_at: Some(at).into(), ..Default::default() };
        events.send(TASK_EXIT_EVENT_TOPIC, Box::new(ev));
    }

    /// Removes a joining container from the running VM: the agent unmounts and forgets it, its
    /// root disk leaves its slot, its files go. Errors are logged: Delete must not get stuck.
    pub fn remove(&self) {
        if self.sandbox.running() {
            let rm = agent::RemoveContainerRequest { container_id: self.id.clone(), ..Default::default() };
            match self.sandbox.agent.remove_container(short(), &rm) {
                Ok(_) => {
                    if let Some(lease) = &self.lease {
                        if let Err(e) = self.sandbox.detach_rootfs(lease) {
                            log::error!("{}: {}", self.id, crate::error::chain(&e));
                        }
                    }
                }
                Err(e) => log::error!("RemoveContainer {}: {e}; its disk slot stays taken", self.id),
            }
        }
        for name in &self.shares {
            self.sandbox.unshare(name);
        }
        if let Some(dir) = &self.dir {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("removing {}: {e}", dir.display());
                }
            }
        }
        let _ = std::fs::remove_file(self.bundle.join(BUNDLE_POINTER));
        self.sandbox.forget(&self.id);
        crate::hooks::run_poststop(&self.bundle, &self.id, self.sandbox.host_pid().unwrap_or(std::process::id()));
    }
}

/// Shortest time between two OOM polls of one sandbox: a guest reports at most 10 OOM kills a
/// second (an agent answering at once, forever, must not turn into an event flood).
pub const OOM_POLL_MIN: Duration = Duration::from_millis(100);

/// Publishes an OOM event for every OOM kill the agent reports, until the VM goes away. Ids
/// that cannot be container ids are dropped (the agent's answer is the guest's word).
pub fn watch_oom(sandbox: &Arc<Sandbox>, events: &Arc<Events>) {
    let (sb, events) = (sandbox.clone(), events.clone());
    let spawned = std::thread::Builder::new().name("oom-watch".into()).spawn(move || loop {
        let asked = std::time::Instant::now();
        match sb.agent.get_oom_event(long(), &agent::GetOomEventRequest::new()) {
            Ok(ev) => match crate::state::validate_id(&ev.container_id) {
                Ok(()) => {
                    log::warn!("OOM kill in container {}", ev.container_id);
                    events.send(TASK_OOM_EVENT_TOPIC, Box::new(TaskOOM { container_id: ev.container_id, ..Default::default() }));
                }
                Err(e) => log::warn!("sandbox {}: the agent reported an OOM kill with {}", sb.id, crate::error::chain(&e)),
            },
            Err(e) => {
                log::debug!("OOM watch of sandbox {} ended: {e}", sb.id);
                return;
            }
        }
        std::thread::sleep(OOM_POLL_MIN.saturating_sub(asked.elapsed()));
    });
    if let Err(e) = spawned {
        log::error!("cannot start the OOM watch of sandbox {}: {e}", sandbox.id);
    }
}
