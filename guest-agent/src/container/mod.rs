//! Containers: create (rootfs, cgroup, namespaces, init process), exec, remove.
pub mod cgroup;
pub mod cpuset;
pub mod devices;
pub mod mounts;
pub mod oom;
pub mod rootfs;
pub mod seccomp;
pub mod vsock;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk_protocol::agent::CreateContainerRequest;
use nix::sched::CloneFlags;
use oci_spec::runtime::Spec;

use crate::error::{check_id, AgentError, Result};
use crate::pod::{namespace_plan, NamespaceSet, Pod};
use crate::process::plan::ExecPlan;
use crate::process::reaper::Reaper;
use crate::process::{spawn, Placement, Process};
use cgroup::Cgroup;
use mounts::RootPlan;
use rootfs::Mounts;

/// Where the agent keeps its state.
#[derive(Debug, Clone)]
pub struct Paths {
    /// State directory (/run/husk in the guest): containers/<id>, disks/<id>/<name>.
    pub run_dir: PathBuf,
    /// cgroup under which containers get their cgroup.
    pub cgroup_root: PathBuf,
}

/// A container.
pub struct Container {
    /// Its id.
    pub id: String,
    /// Its init process.
    pub init: Arc<Process>,
    /// Processes started with ExecProcess, by exec id.
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Its cgroup.
    pub cgroup: Cgroup,
    /// Its spec grants it vsock ([`vsock::allowed`]); its processes then run without the guard.
    pub vsock_allowed: bool,
    /// Its seccomp profile, installed in its init and every exec.
    pub seccomp: Option<Arc<seccomp::SeccompPlan>>,
    mounts: Mutex<Mounts>,
    dirs: Vec<PathBuf>,
}

/// Parses JSON from the host into `T`, naming `what` on error.
pub fn parse_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| AgentError::InvalidArgument(format!("{what} is not valid JSON: {e}")))
}

/// Creates the pod's emptyDir volumes the spec binds (`<run_dir>/pod/emptydir/<name>`, in guest
/// memory) on first use, world-writable as kubelet makes them.
fn make_empty_dirs(run_dir: &std::path::Path, plan: &RootPlan) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let base = run_dir.join("pod").join("emptydir");
    for m in plan.mounts.iter().filter(|m| m.bind) {
        let p = std::path::Path::new(&m.source);
        if p.parent() != Some(base.as_path()) || p.exists() {
            continue;
        }
        std::fs::create_dir_all(p).map_err(|e| AgentError::io(format!("creating emptyDir {}", p.display()), e))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).map_err(|e| AgentError::io(format!("chmod emptyDir {}", p.display()), e))?;
    }
    Ok(())
}

/// Undo list for a failing create.
struct Partial {
    mounts: Mounts,
    cgroup: Option<Cgroup>,
    dirs: Vec<PathBuf>,
}

impl Partial {
    fn undo(mut self) {
        if let Some(cg) = &self.cgroup {
            let _ = cg.remove();
        }
        self.mounts.unmount_all();
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Container {
    /// Creates a container; its init process waits for `start`.
    /// `pod` is the pod the container joins (None: it is the pod's sandbox container, or a
    /// container outside any pod; see [`crate::pod::namespace_plan`]).
    /// Without a pod, the container joins the namespaces of `ahead` (made ahead for the pod)
    /// where it would create new ones.
    pub fn create(paths: &Paths, reaper: &Reaper, req: &CreateContainerRequest, pod: Option<&Pod>, ahead: Option<NamespaceSet>) -> Result<Container> {
        // Where a create's time goes, for the log (a slow pod start is read from it).
        let mut steps = crate::steps::Steps::default();
        let id = req.container_id.as_str();
        check_id("container id", id)?;
        let spec: Spec = parse_json("oci_spec_json", &req.oci_spec_json)?;
        let Some(process) = spec.process().as_ref() else {
            return Err(AgentError::InvalidArgument("the OCI spec has no process".into()));
        };
        let mut plan = ExecPlan::from_oci(process)?;
        let vsock_allowed = vsock::allowed(&spec)?;
        if vsock_allowed {
            plan.vsock_guard = None;
        }
        let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            Some(profile) => Some(Arc::new(seccomp::SeccompPlan::from_oci(profile).map_err(|e| AgentError::InvalidArgument(crate::error::chain(&e)))?)),
            None => None,
        };
        plan.seccomp = seccomp.clone();
        let device_rules = spec.linux().as_ref().and_then(|l| l.resources().as_ref()).and_then(|r| r.devices().clone());
        let ns = namespace_plan(&spec, pod, ahead)?;
        let Some(rootfs) = req.rootfs.as_ref() else {
            return Err(AgentError::InvalidArgument("rootfs is missing".into()));
        };
        let dir = paths.run_dir.join("containers").join(id);
        let disks_dir = paths.run_dir.join("disks").join(id);
        if dir.exists() || disks_dir.exists() {
            return Err(AgentError::AlreadyExists(format!("state of container {id} exists")));
        }
        steps.mark("spec");
        let mut partial = Partial { mounts: Mounts::default(), cgroup: None, dirs: Vec::new() };
        let result = (|| {
            for d in [&dir, &disks_dir] {
                std::fs::create_dir_all(d).map_err(|e| AgentError::io(format!("creating {}", d.display()), e))?;
                partial.dirs.push(d.clone());
            }
            let root = rootfs::mount_rootfs(&mut partial.mounts, &dir, rootfs)?;
            steps.mark("rootfs mount");
            rootfs::mount_disks(&mut partial.mounts, &disks_dir, &req.disks)?;
            steps.mark("disks");
            let cg = partial.cgroup.insert(Cgroup::create(&paths.cgroup_root, id)?);
            if let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
                cg.apply(res)?;
            }
            steps.mark("cgroup");
            cg.filter_devices(device_rules.as_deref().unwrap_or_default())?;
            let procs = cg.procs_fd()?;
            steps.mark("device filter");
            let allowed = [paths.run_dir.join("pod"), disks_dir.clone()];
            let mut root_plan = RootPlan::from_spec(&spec, root, &ns, &allowed)?;
            make_empty_dirs(&paths.run_dir, &root_plan)?;
            root_plan.open_bind_sources(&allowed)?;
            steps.mark("root plan");
            let placement = Placement::Create { ns, root: &root_plan };
            let init = spawn(reaper, "", &plan, req.stdin, Some(procs), placement);
            steps.mark("spawn");
            init
        })();
        match result {
            Ok(init) => {
                let Partial { mounts, cgroup, dirs } = partial;
                let Some(cgroup) = cgroup else {
                    return Err(AgentError::FailedPrecondition("cgroup missing".into()));
                };
                log::info!("created container {id} (init pid {}) in {}", init.pid, steps.summary());
                Ok(Container { id: id.to_string(), init, execs: Mutex::new(HashMap::new()), cgroup, vsock_allowed, seccomp, mounts: Mutex::new(mounts), dirs })
            }
            Err(e) => {
                partial.undo();
                Err(e)
            }
        }
    }

    /// The process `exec_id` ("" = init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("process {exec_id:?} not found in container {}", self.id)))
    }

    /// Starts a process in the container's namespaces and cgroup.
    pub fn exec(&self, reaper: &Reaper, exec_id: &str, process_json: &[u8], stdin: bool) -> Result<Arc<Process>> {
        check_id("exec id", exec_id)?;
        let process: oci_spec::runtime::Process = parse_json("process_json", process_json)?;
        let mut plan = ExecPlan::from_oci(&process)?;
        if self.vsock_allowed {
            plan.vsock_guard = None;
        }
        plan.seccomp = self.seccomp.clone();
        if self.init.exit_info().is_some() {
            return Err(AgentError::FailedPrecondition(format!("container {} is not running", self.id)));
        }
        if self.cgroup.is_frozen() {
            // A new process would freeze on joining the cgroup, before it could report.
            return Err(AgentError::FailedPrecondition(format!("container {} is paused", self.id)));
        }
        // An id whose process has exited is free again (as with runc, once containerd
        // deleted that exec).
        {
            let mut execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
            match execs.get(exec_id) {
                Some(old) if old.exit_info().is_some() => {
                    old.abandon();
                    execs.remove(exec_id);
                }
                Some(_) => return Err(AgentError::AlreadyExists(format!("exec id {exec_id:?} already exists in container {}", self.id))),
                None => {}
            }
        }
        let ns_dir = PathBuf::from(format!("/proc/{}/ns", self.init.pid));
        let open = |name: &str| -> Result<OwnedFd> {
            std::fs::File::open(ns_dir.join(name)).map(OwnedFd::from).map_err(|e| AgentError::io(format!("opening {}/{name}", ns_dir.display()), e))
        };
        let pid_ns = Some(open("pid")?);
        let mut namespaces = Vec::new();
        for (name, flag) in [
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("cgroup", CloneFlags::CLONE_NEWCGROUP),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ] {
            namespaces.push((open(name)?, flag));
        }
        let procs = self.cgroup.procs_fd()?;
        let p = spawn(reaper, exec_id, &plan, stdin, Some(procs), Placement::Join { pid_ns, namespaces })?;
        let mut execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
        if execs.contains_key(exec_id) {
            // Lost a race with a concurrent exec of the same id: undo ours.
            let _ = p.signal(nix::sys::signal::Signal::SIGKILL);
            p.abandon();
            return Err(AgentError::AlreadyExists(format!("exec id {exec_id:?} already exists")));
        }
        execs.insert(exec_id.to_string(), p.clone());
        Ok(p)
    }

    /// Forgets the exited exec'd process `exec_id`.
    pub fn remove_process(&self, exec_id: &str) -> Result<()> {
        check_id("exec id", exec_id)?;
        let mut execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = execs.get(exec_id) else {
            return Err(AgentError::NotFound(format!("process {exec_id:?} not found in container {}", self.id)));
        };
        if p.exit_info().is_none() {
            return Err(AgentError::FailedPrecondition(format!("process {exec_id:?} of container {} is still running", self.id)));
        }
        p.abandon();
        execs.remove(exec_id);
        Ok(())
    }

    /// Kills what is left, unmounts and removes the container's state.
    /// Fails if the init process was started and still runs.
    pub fn remove(&self) -> Result<()> {
        if self.init.exit_info().is_none() && self.init.started() {
            return Err(AgentError::FailedPrecondition(format!("container {} is running; kill its init process first", self.id)));
        }
        self.destroy();
        Ok(())
    }

    /// Kills everything and releases all resources, whatever the state.
    pub fn destroy(&self) {
        let _ = self.cgroup.signal_all(nix::sys::signal::Signal::SIGKILL);
        let _ = self.init.signal(nix::sys::signal::Signal::SIGKILL);
        let mut procs: Vec<Arc<Process>> = self.execs.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        procs.push(self.init.clone());
        for p in &procs {
            let _ = p.signal(nix::sys::signal::Signal::SIGKILL);
            p.abandon();
            wait_exit(p, Duration::from_secs(5));
        }
        if let Err(e) = self.cgroup.remove() {
            log::warn!("container {}: {}", self.id, crate::error::chain(&e));
        }
        self.mounts.lock().unwrap_or_else(|e| e.into_inner()).unmount_all();
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir_all(d);
        }
        log::info!("removed container {}", self.id);
    }
}

fn wait_exit(p: &Process, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while p.exit_info().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}
