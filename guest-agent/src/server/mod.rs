//! The ttrpc service: maps each RPC of `husk.agent.v1.Agent` onto containers and processes.
pub mod checks;
pub mod peer;

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::Agent;
use ttrpc::TtrpcContext;

use crate::container::oom::OomWatcher;
use crate::container::{parse_json, Container, Paths};
use crate::error::{AgentError, Result};
use crate::pod::{Pod, Spare};
use crate::process::reaper::Reaper;
use crate::process::Process;

#[derive(Default)]
struct Registry {
    containers: HashMap<String, Arc<Container>>,
    /// Ids being created (reserved).
    creating: HashSet<String>,
    /// The VM's pod, once its sandbox container was created.
    pod: Option<Arc<Pod>>,
}

/// The agent service.
pub struct AgentService {
    paths: Paths,
    reaper: Arc<Reaper>,
    oom: Arc<OomWatcher>,
    registry: Mutex<Registry>,
    /// The pod's namespaces, made ahead for its sandbox container.
    spare: Arc<Spare>,
    shutting_down: AtomicBool,
    on_shutdown: Box<dyn Fn() + Send + Sync>,
}

fn ok<T>(r: Result<T>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        log::debug!("request failed: {}", crate::error::chain(&e));
        e.into()
    })
}

impl AgentService {
    /// A service keeping state under `paths`; `on_shutdown` powers off (called after replying).
    /// `spare` holds the namespaces made ahead for the pod ([`Spare::start`]).
    pub fn new(paths: Paths, reaper: Arc<Reaper>, spare: Arc<Spare>, on_shutdown: Box<dyn Fn() + Send + Sync>) -> Self {
        AgentService { paths, reaper, oom: OomWatcher::start(), registry: Mutex::default(), spare, shutting_down: AtomicBool::new(false), on_shutdown }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self) -> Result<()> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(AgentError::Unavailable);
        }
        Ok(())
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.registry().containers.get(id).cloned().ok_or_else(|| AgentError::NotFound(format!("container {id:?} not found")))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.container(id)?.process(exec_id)
    }

    fn create(&self, req: &CreateContainerRequest) -> Result<u32> {
        self.live()?;
        let id = req.container_id.clone();
        crate::error::check_id("container id", &id)?;
        {
            let mut reg = self.registry();
            if reg.containers.contains_key(&id) || !reg.creating.insert(id.clone()) {
                return Err(AgentError::AlreadyExists(format!("container {id:?} already exists")));
            }
        }
        let created = self.create_in_pod(req);
        let mut reg = self.registry();
        reg.creating.remove(&id);
        let (c, pod) = created?;
        if let Some(pod) = pod {
            reg.pod = Some(pod);
        }
        self.oom.watch(&id, &c.cgroup);
        let pid = c.init.pid as u32;
        reg.containers.insert(id, c);
        Ok(pid)
    }

    /// Creates the container as its pod's sandbox (which then defines the pod, returned), as a
    /// member of the pod, or outside any pod (no sandbox_id).
    fn create_in_pod(&self, req: &CreateContainerRequest) -> Result<(Arc<Container>, Option<Arc<Pod>>)> {
        let id = req.container_id.as_str();
        let sandbox = req.sandbox_id.as_str();
        if sandbox.is_empty() {
            return Ok((Arc::new(Container::create(&self.paths, &self.reaper, req, None, self.spare.take())?), None));
        }
        if sandbox == id {
            if let Some(p) = &self.registry().pod {
                return Err(AgentError::AlreadyExists(format!("this VM already runs pod sandbox {:?}", p.id)));
            }
            let mut pod = Pod::prepare(&self.paths.run_dir, id, &req.shared_fs_tag)?;
            let c = Container::create(&self.paths, &self.reaper, req, None, self.spare.take())?;
            let adopted = pod.adopt_namespaces(c.init.pid);
            // The pod's new network namespace gets its loopback up, as runc does.
            let lo = adopted.and_then(|()| pod.namespace(nix::sched::CloneFlags::CLONE_NEWNET)).and_then(|ns| crate::network::loopback_up_in(ns.as_fd()));
            if let Err(e) = lo {
                c.destroy();
                return Err(e);
            }
            log::info!("pod sandbox {id} created");
            return Ok((Arc::new(c), Some(Arc::new(pod))));
        }
        crate::error::check_id("sandbox id", sandbox)?;
        let pod = self.registry().pod.clone();
        match pod {
            Some(pod) if pod.id == sandbox => Ok((Arc::new(Container::create(&self.paths, &self.reaper, req, Some(&pod), None)?), None)),
            _ => Err(AgentError::NotFound(format!("pod sandbox {sandbox:?} not found in this VM"))),
        }
    }

    /// The pod's network namespace, which the network requests configure.
    fn pod_network(&self) -> Result<std::os::fd::OwnedFd> {
        self.live()?;
        let pod = self.registry().pod.clone();
        let pod =
            pod.ok_or_else(|| AgentError::FailedPrecondition("this VM has no pod yet: create its sandbox container before configuring the network".into()))?;
        pod.namespace(nix::sched::CloneFlags::CLONE_NEWNET)
    }

    fn update(&self, req: &UpdateContainerRequest) -> Result<()> {
        let c = self.container(&req.container_id)?;
        let res: oci_spec::runtime::LinuxResources = parse_json("resources_json", &req.resources_json)?;
        c.cgroup.apply(&res)
    }

    fn signal(&self, req: &SignalProcessRequest) -> Result<()> {
        let sig = checks::signal(req.signal)?;
        let c = self.container(&req.container_id)?;
        if req.all {
            c.cgroup.signal_all(sig)
        } else {
            c.process(&req.exec_id)?.signal(sig)
        }
    }

    fn read(&self, req: &ReadStreamRequest, stderr: bool) -> Result<ReadStreamResponse> {
        let max = checks::read_limit(req.max_bytes)?;
        let p = self.process(&req.container_id, &req.exec_id)?;
        let stream = if stderr { &p.stderr } else { &p.stdout };
        let (data, eof) = stream.read(max);
        let mut resp = ReadStreamResponse::new();
        resp.data = data;
        resp.eof = eof;
        Ok(resp)
    }

    fn remove(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        {
            let reg = self.registry();
            let others = reg.containers.keys().filter(|k| k.as_str() != id).count();
            if reg.pod.as_ref().is_some_and(|p| p.id == id) && others > 0 {
                return Err(AgentError::FailedPrecondition(format!("container {id} is the pod's sandbox; remove the pod's {others} other container(s) first")));
            }
        }
        c.remove()?;
        self.oom.unwatch(id);
        let mut reg = self.registry();
        reg.containers.remove(id);
        if reg.pod.as_ref().is_some_and(|p| p.id == id) {
            reg.pod = None;
            log::info!("pod sandbox {id} released");
        }
        Ok(())
    }

    /// Kills every container and releases its resources (before power-off).
    pub fn destroy_all(&self) {
        let all: Vec<Arc<Container>> = self.registry().containers.drain().map(|(_, c)| c).collect();
        for c in all {
            c.destroy();
        }
        self.registry().pod = None;
    }
}

fn uptime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000).unwrap_or(0)
}

impl Agent for AgentService {
    fn check(&self, _: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<CheckResponse> {
        ok(self.live())?;
        let mut r = CheckResponse::new();
        r.uptime_ms = uptime_ms();
        Ok(r)
    }

    fn version(&self, _: &TtrpcContext, _: VersionRequest) -> ttrpc::Result<VersionResponse> {
        let mut r = VersionResponse::new();
        r.agent_version = env!("CARGO_PKG_VERSION").to_string();
        r.api_version = husk_protocol::API_VERSION;
        Ok(r)
    }

    fn create_container(&self, _: &TtrpcContext, req: CreateContainerRequest) -> ttrpc::Result<CreateContainerResponse> {
        let pid = ok(self.create(&req))?;
        let mut r = CreateContainerResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn start_container(&self, _: &TtrpcContext, req: StartContainerRequest) -> ttrpc::Result<StartContainerResponse> {
        let c = ok(self.container(&req.container_id))?;
        if c.init.exit_info().is_some() {
            return ok(Err(AgentError::FailedPrecondition(format!("container {} has exited", req.container_id))));
        }
        if !ok(c.init.start())? {
            return ok(Err(AgentError::FailedPrecondition(format!("container {} was already started", req.container_id))));
        }
        let mut r = StartContainerResponse::new();
        r.pid = c.init.pid as u32;
        Ok(r)
    }

    fn exec_process(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<ExecProcessResponse> {
        ok(self.live())?;
        let c = ok(self.container(&req.container_id))?;
        let p = ok(c.exec(&self.reaper, &req.exec_id, &req.process_json, req.stdin))?;
        let mut r = ExecProcessResponse::new();
        r.pid = p.pid as u32;
        Ok(r)
    }

    fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
        ok(self.signal(&req))?;
        Ok(Empty::new())
    }

    fn wait_process(&self, _: &TtrpcContext, req: WaitProcessRequest) -> ttrpc::Result<WaitProcessResponse> {
        let p = ok(self.process(&req.container_id, &req.exec_id))?;
        let info = p.wait();
        let mut r = WaitProcessResponse::new();
        r.pid = p.pid as u32;
        r.exit_status = info.status;
        r.signal = info.signal;
        r.exited_at_unix_nanos = info.at_unix_nanos;
        Ok(r)
    }

    fn remove_process(&self, _: &TtrpcContext, req: RemoveProcessRequest) -> ttrpc::Result<Empty> {
        let c = ok(self.container(&req.container_id))?;
        ok(c.remove_process(&req.exec_id))?;
        Ok(Empty::new())
    }

    fn write_stdin(&self, _: &TtrpcContext, req: WriteStdinRequest) -> ttrpc::Result<WriteStdinResponse> {
        ok(checks::stdin_chunk(req.data.len()))?;
        let p = ok(self.process(&req.container_id, &req.exec_id))?;
        match p.stdin.write_all(&req.data) {
            None => ok(Err(AgentError::FailedPrecondition(format!("stdin of process {} is closed", p.pid)))),
            Some(Err(e)) => ok(Err(AgentError::io(format!("writing stdin of process {}", p.pid), e))),
            Some(Ok(())) => {
                let mut r = WriteStdinResponse::new();
                r.written = req.data.len() as u32;
                Ok(r)
            }
        }
    }

    fn close_stdin(&self, _: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<Empty> {
        let p = ok(self.process(&req.container_id, &req.exec_id))?;
        ok(p.stdin.close().map_err(|e| AgentError::io(format!("closing stdin of process {}", p.pid), e)))?;
        Ok(Empty::new())
    }

    fn read_stdout(&self, _: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        ok(self.read(&req, false))
    }

    fn read_stderr(&self, _: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        ok(self.read(&req, true))
    }

    fn resize_tty(&self, _: &TtrpcContext, req: ResizeTtyRequest) -> ttrpc::Result<Empty> {
        let (w, h) = ok(checks::tty_size(req.width, req.height))?;
        let p = ok(self.process(&req.container_id, &req.exec_id))?;
        ok(p.resize(w, h))?;
        Ok(Empty::new())
    }

    fn update_container(&self, _: &TtrpcContext, req: UpdateContainerRequest) -> ttrpc::Result<Empty> {
        ok(self.update(&req))?;
        Ok(Empty::new())
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let c = ok(self.container(&req.container_id))?;
        Ok(c.cgroup.stats())
    }

    fn pause_container(&self, _: &TtrpcContext, req: PauseContainerRequest) -> ttrpc::Result<Empty> {
        let c = ok(self.container(&req.container_id))?;
        ok(c.cgroup.freeze(true))?;
        Ok(Empty::new())
    }

    fn resume_container(&self, _: &TtrpcContext, req: ResumeContainerRequest) -> ttrpc::Result<Empty> {
        let c = ok(self.container(&req.container_id))?;
        ok(c.cgroup.freeze(false))?;
        Ok(Empty::new())
    }

    fn get_oom_event(&self, _: &TtrpcContext, _: GetOomEventRequest) -> ttrpc::Result<OomEvent> {
        let mut r = OomEvent::new();
        r.container_id = self.oom.next();
        Ok(r)
    }

    fn list_processes(&self, _: &TtrpcContext, req: ListProcessesRequest) -> ttrpc::Result<ListProcessesResponse> {
        let c = ok(self.container(&req.container_id))?;
        let mut known: HashMap<i32, String> = HashMap::new();
        known.insert(c.init.pid, String::new());
        for (id, p) in c.execs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            known.insert(p.pid, id.clone());
        }
        let mut r = ListProcessesResponse::new();
        for pid in c.cgroup.pids() {
            let mut info = ProcessInfo::new();
            info.pid = pid as u32;
            if let Some(exec_id) = known.get(&pid) {
                info.exec_id = exec_id.clone();
                info.agent_started = true;
            }
            r.processes.push(info);
        }
        Ok(r)
    }

    fn remove_container(&self, _: &TtrpcContext, req: RemoveContainerRequest) -> ttrpc::Result<Empty> {
        ok(self.remove(&req.container_id))?;
        Ok(Empty::new())
    }

    fn update_interfaces(&self, _: &TtrpcContext, req: UpdateInterfacesRequest) -> ttrpc::Result<Empty> {
        let ns = ok(self.pod_network())?;
        ok(crate::network::update_interfaces(ns.as_fd(), &req.interfaces))?;
        Ok(Empty::new())
    }

    fn update_routes(&self, _: &TtrpcContext, req: UpdateRoutesRequest) -> ttrpc::Result<Empty> {
        let ns = ok(self.pod_network())?;
        ok(crate::network::update_routes(ns.as_fd(), &req.routes))?;
        Ok(Empty::new())
    }

    fn set_hostname(&self, _: &TtrpcContext, req: SetHostnameRequest) -> ttrpc::Result<Empty> {
        let h = req.hostname.as_str();
        ok(checks::hostname(h))?;
        ok(nix::unistd::sethostname(h).map_err(|e| AgentError::sys(format!("setting hostname {h:?}"), e)))?;
        Ok(Empty::new())
    }

    fn sync_after_restore(&self, _: &TtrpcContext, req: SyncAfterRestoreRequest) -> ttrpc::Result<Empty> {
        ok(self.live())?;
        let at = ok(checks::restore_realtime(req.realtime_ns))?;
        ok(checks::restore_entropy(req.entropy.len()))?;
        ok(crate::init::clock::set_realtime(at))?;
        ok(crate::init::entropy::credit(&req.entropy))?;
        log::info!("synced after restore: wall clock set, {} bytes of host entropy credited", req.entropy.len());
        Ok(Empty::new())
    }

    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        if !self.shutting_down.swap(true, Ordering::SeqCst) {
            log::info!("shutdown requested");
            (self.on_shutdown)();
        }
        Ok(Empty::new())
    }
}
