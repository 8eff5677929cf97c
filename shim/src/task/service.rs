//! `impl Task for Service`: the containerd Task API calls.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim::{api, Task, TtrpcContext, TtrpcResult};
use containerd_shim_protos::api::Status;
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed, TaskStart};
use containerd_shim_protos::topics::*;
use containerd_shim_protos::types::task::ProcessInfo;
use husk_protocol::agent;

use super::{stats, Service};
use crate::agent::{agent_err, short};
use crate::container::{load_spec, now, Container, Process, KILLED_EXIT_STATUS};
use crate::error::{Result, ShimError};
use crate::io::StdioPaths;
use crate::sandbox::spec::sandbox_of;
use crate::sandbox::Sandbox;

/// The exit status an exec that failed to start reports (Start itself returned the error):
/// 127, the shell's "could not run the command".
const FAILED_START_STATUS: u32 = 127;

/// How long a SIGKILL'd init (or a never-started one at Delete) may take to be reported dead
/// before the VM is killed from the host.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long the agent may take to acknowledge a SIGKILL.
const KILL_ANSWER: Duration = Duration::from_secs(5);
/// How long after CloseIO the stdin FIFO may stay open before the guest's stdin is closed anyway.
const CLOSE_IO_GRACE: Duration = Duration::from_secs(30);
/// How long a shim whose sandbox was deleted waits for containerd's Shutdown before it exits by
/// itself. containerd calls Shutdown right after a Delete it saw succeed; one whose Delete
/// timed out on its side (its CRI event handler gives a sandbox's Delete 10 s) never does, and
/// finds the task gone (NotFound) when it retries, so without this the shim would stay forever.
/// An exited shim is what containerd's cleanup after a disconnected shim handles.
const ORPHAN_EXIT: Duration = Duration::from_secs(30);

impl Service {
    fn container_for(&self, id: &str) -> Result<Arc<Container>> {
        let reg = self.inner.registry();
        if id.is_empty() && reg.containers.len() == 1 {
            if let Some(c) = reg.containers.values().next() {
                return Ok(c.clone());
            }
        }
        reg.containers.get(id).cloned().ok_or_else(|| ShimError::NotFound { kind: "container", id: id.into() })
    }

    fn do_create(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ShimError::NotImplemented("restoring from a checkpoint"));
        }
        crate::state::validate_id(&req.id)?;
        {
            let mut reg = self.inner.registry();
            if reg.containers.contains_key(&req.id) || !reg.creating.insert(req.id.clone()) {
                return Err(ShimError::AlreadyExists { kind: "container", id: req.id.clone() });
            }
        }
        let created = self.create_container(&req);
        let mut reg = self.inner.registry();
        reg.creating.remove(&req.id);
        let (c, new_sandbox) = created?;
        let pid = c.init.state().pid;
        if let Some(sb) = new_sandbox {
            reg.sandbox = Some(sb.clone());
            super::watch_vm(&self.inner, &sb);
            crate::container::watch_oom(&sb, &self.inner.events);
        }
        reg.containers.insert(req.id.clone(), c.clone());
        drop(reg);
        c.watch_process(&self.inner.events, &c.init);
        let ev = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone(), terminal: req.terminal, ..Default::default() })
                .into(),
            checkpoint: String::new(),
            pid,
            ..Default::default()
        };
        self.inner.events.send(TASK_CREATE_EVENT_TOPIC, Box::new(ev));
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    /// Creates the container as a new sandbox (its own, or a pod's sandbox container), or in
    /// the running sandbox its spec names (`io.kubernetes.cri.sandbox-id`).
    fn create_container(&self, req: &api::CreateTaskRequest) -> Result<(Arc<Container>, Option<Arc<Sandbox>>)> {
        let spec = load_spec(Path::new(&req.bundle))?;
        let (_, cfg) = crate::options::load_config(crate::options::config_path_from_options(req.options.as_ref())?)?;
        crate::unsupported::check(&format!("container {}", req.id), &crate::unsupported::spec_fields(&spec), &cfg.shim.ignore_unsupported)?;
        let sandbox_id = sandbox_of(&spec).unwrap_or_else(|| req.id.clone());
        let (current, others) = {
            let reg = self.inner.registry();
            let others: Vec<(u32, String)> = reg.containers.values().filter(|c| !c.is_sandbox).map(|c| (c.init.state().pid, c.id.clone())).collect();
            (reg.sandbox.clone(), others)
        };
        if sandbox_id == req.id {
            if let Some(sb) = current {
                return Err(ShimError::AlreadyExists { kind: "sandbox in this shim (it serves one pod)", id: sb.id.clone() });
            }
            let (sb, c) = Container::create_sandbox(&self.inner.namespace, req, &spec)?;
            return Ok((Arc::new(c), Some(sb)));
        }
        match current {
            Some(sb) if sb.id == sandbox_id => Ok((Arc::new(Container::create_member(&sb, req, &spec, &others)?), None)),
            _ => Err(ShimError::NotFound { kind: "running pod sandbox (create the pod's sandbox container first)", id: sandbox_id }),
        }
    }

    fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        let c = self.container_for(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.state().status != Status::CREATED {
            return Err(ShimError::FailedPrecondition(format!("process {:?} of {} was already started", req.exec_id, c.id)));
        }
        let agent = &c.sandbox.agent;
        let pid = if req.exec_id.is_empty() {
            if c.is_sandbox {
                c.sandbox.attach_late_network()?;
            }
            let r = agent::StartContainerRequest { container_id: c.id.clone(), ..Default::default() };
            let pid = agent.start_container(short(), &r).map_err(agent_err("StartContainer"))?.pid;
            p.set_running(pid);
            crate::hooks::run_poststart(&c.bundle, &c.id, c.sandbox.host_pid().unwrap_or(std::process::id()));
            self.inner.events.send(TASK_START_EVENT_TOPIC, Box::new(TaskStart { container_id: c.id.clone(), pid, ..Default::default() }));
            pid
        } else {
            let r = agent::ExecProcessRequest {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                process_json: p.spec_json.clone(),
                stdin: !p.stdio.stdin.is_empty(),
                ..Default::default()
            };
            let pid = match agent.exec_process(short(), &r) {
                Ok(r) => r.pid,
                Err(e) => {
                    crate::io::release_outputs(&p.stdio);
                    // Its Wait returns at once, as the runc shim's does for an exec that
                    // failed to start: containerd's CRI deletes it with WithProcessKill, which
                    // waits for the exit (a minute, its deferred timeout, otherwise).
                    p.set_exited(FAILED_START_STATUS, crate::container::now());
                    return Err(agent_err("ExecProcess")(e));
                }
            };
            p.set_running(pid);
            c.watch_process(&self.inner.events, &p);
            let ev = TaskExecStarted { container_id: c.id.clone(), exec_id: req.exec_id.clone(), pid, ..Default::default() };
            self.inner.events.send(TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev));
            pid
        };
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    fn do_delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
        let c = self.container_for(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            let st = p.state();
            if st.status == Status::RUNNING {
                return Err(ShimError::FailedPrecondition(format!("exec {:?} of {} is still running", req.exec_id, c.id)));
            }
            c.execs.lock().unwrap_or_else(|p| p.into_inner()).remove(&req.exec_id);
            if c.sandbox.running() {
                let r = agent::RemoveProcessRequest { container_id: c.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() };
                if let Err(e) = c.sandbox.agent.remove_process(short(), &r) {
                    log::warn!("RemoveProcess {}/{}: {e}", c.id, req.exec_id);
                }
            }
            return Ok(api::DeleteResponse { pid: st.pid, exit_status: st.exit_status, exited_at: st.exited_at.into(), ..Default::default() });
        }
        let st = c.init.state();
        match st.status {
            Status::STOPPED => {}
            Status::CREATED => {
                // Never started: kill the waiting init (as runc delete does) and wait for it.
                let r = agent::SignalProcessRequest { container_id: c.id.clone(), signal: libc::SIGKILL as u32, all: true, ..Default::default() };
                if let Err(e) = c.sandbox.agent.signal_process(short(), &r) {
                    log::warn!("killing created init of {}: {e}", c.id);
                }
                let deadline = Instant::now() + KILL_WAIT;
                while !c.init.exited() && Instant::now() < deadline && c.sandbox.running() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            _ => return Err(ShimError::FailedPrecondition(format!("container {} is still running; kill it first", c.id))),
        }
        if c.is_sandbox {
            self.end_sandbox(&c);
        } else {
            c.remove();
        }
        let emptied = {
            let mut reg = self.inner.registry();
            reg.containers.remove(&c.id);
            reg.is_empty()
        };
        if c.is_sandbox && emptied {
            self.exit_if_orphaned(ORPHAN_EXIT);
        }
        let st = c.init.state();
        let exited_at = st.exited_at.clone().unwrap_or_else(now);
        let ev = TaskDelete {
            container_id: c.id.clone(),
            pid: st.pid,
            exit_status: st.exit_status,
            exited_at: Some(exited_at.clone()).into(),
            id: c.id.clone(),
            ..Default::default()
        };
        self.inner.events.send(TASK_DELETE_EVENT_TOPIC, Box::new(ev));
        Ok(api::DeleteResponse { pid: st.pid, exit_status: st.exit_status, exited_at: Some(exited_at).into(), ..Default::default() })
    }

    /// The sandbox container goes: so does the VM, with every container still in it (their
    /// processes are reported killed; they stay known until containerd deletes them).
    fn end_sandbox(&self, c: &Arc<Container>) {
        let sb = c.sandbox.clone();
        let others: Vec<Arc<Container>> = self.inner.registry().containers.values().filter(|o| o.id != c.id && Arc::ptr_eq(&o.sandbox, &sb)).cloned().collect();
        sb.destroy();
        for o in &others {
            log::warn!("container {} ends with its pod's sandbox {}", o.id, sb.id);
            for p in o.processes() {
                o.report_exit(&self.inner.events, &p, KILLED_EXIT_STATUS, now());
            }
        }
        let _ = std::fs::remove_file(c.bundle.join(crate::state::BUNDLE_POINTER));
        let mut reg = self.inner.registry();
        if reg.sandbox.as_ref().is_some_and(|s| Arc::ptr_eq(s, &sb)) {
            reg.sandbox = None;
        }
    }

    /// Exits the shim after `grace` unless by then containerd called Shutdown or gave it a new
    /// container (see [`ORPHAN_EXIT`]).
    fn exit_if_orphaned(&self, grace: Duration) {
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new().name("orphan-exit".into()).spawn(move || {
            std::thread::sleep(grace);
            if inner.registry().is_empty() {
                log::warn!("no Shutdown from containerd {grace:?} after the sandbox's Delete; exiting");
                inner.exit.signal();
            }
        });
        if let Err(e) = spawned {
            log::error!("cannot start the orphan-exit timer: {e}");
        }
    }

    fn do_exec(&self, req: api::ExecProcessRequest) -> Result<()> {
        let c = self.container_for(&req.id)?;
        crate::state::validate_id(&req.exec_id)?;
        if c.init.exited() {
            return Err(ShimError::FailedPrecondition(format!("container {} is not running", c.id)));
        }
        let spec = req.spec.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        let proc: oci_spec::runtime::Process =
            serde_json::from_slice(&spec).map_err(|e| ShimError::invalid(format!("process spec of exec {:?}", req.exec_id), e.to_string()))?;
        // ExecProcess carries no runtime options: the configuration the shim's environment names.
        let (_, cfg) = crate::options::load_config(None)?;
        crate::unsupported::check(
            &format!("exec {:?} of container {}", req.exec_id, c.id),
            &crate::unsupported::process_fields(&proc),
            &cfg.shim.ignore_unsupported,
        )?;
        let terminal = req.terminal || proc.terminal().unwrap_or(false);
        let stdio = StdioPaths { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone(), terminal };
        {
            let mut execs = c.execs.lock().unwrap_or_else(|p| p.into_inner());
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists { kind: "exec", id: req.exec_id });
            }
            execs.insert(req.exec_id.clone(), Arc::new(Process::new(&req.exec_id, stdio, spec)));
        }
        self.inner.events.send(TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(TaskExecAdded { container_id: c.id.clone(), exec_id: req.exec_id, ..Default::default() }));
        Ok(())
    }

    fn do_state(&self, req: api::StateRequest) -> Result<api::StateResponse> {
        let c = self.container_for(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let st = p.state();
        let status = if st.status == Status::RUNNING && c.paused.load(Ordering::SeqCst) { Status::PAUSED } else { st.status };
        Ok(api::StateResponse {
            id: if req.exec_id.is_empty() { c.id.clone() } else { req.exec_id.clone() },
            bundle: c.bundle.display().to_string(),
            pid: st.pid,
            status: status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: st.exit_status,
            exited_at: st.exited_at.into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn do_kill(&self, req: api::KillRequest) -> Result<()> {
        let c = self.container_for(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.exited() && !req.all {
            return Err(ShimError::NotFound { kind: "process (already finished)", id: if req.exec_id.is_empty() { c.id.clone() } else { req.exec_id } });
        }
        if !c.sandbox.running() {
            return Err(ShimError::FailedPrecondition(format!("the VM of {} is not running", c.id)));
        }
        let kill = req.signal == libc::SIGKILL as u32;
        let r =
            agent::SignalProcessRequest { container_id: c.id.clone(), exec_id: req.exec_id.clone(), signal: req.signal, all: req.all, ..Default::default() };
        let ctx = if kill { ttrpc::context::with_timeout(KILL_ANSWER.as_nanos() as i64) } else { short() };
        let sent = c.sandbox.agent.signal_process(ctx, &r).map_err(agent_err("SignalProcess"));
        if kill && (req.exec_id.is_empty() || req.all) {
            // A guest that does not kill (or report) within a bound cannot keep the task
            // alive: the VM is killed from the host, which ends every process of the pod.
            self.kill_watchdog(&c, sent.is_err());
        }
        sent.map(drop)
    }

    /// After a SIGKILL of a container's init: unless its exit is reported within
    /// [`KILL_WAIT`] (or at once, when the agent did not even acknowledge), kills the VM.
    fn kill_watchdog(&self, container: &Arc<Container>, now_: bool) {
        let c = container.clone();
        let wait = if now_ { Duration::ZERO } else { KILL_WAIT };
        let spawned = std::thread::Builder::new().name("kill-watch".into()).spawn(move || {
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline && !c.init.exited() && c.sandbox.running() {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !c.init.exited() && c.sandbox.running() {
                log::error!("{}: the guest did not end the process within {wait:?} of SIGKILL; killing the VM of pod {}", c.id, c.sandbox.id);
                // The shim ends the VM: every process of the pod is reported killed (137).
                c.sandbox.stopping.store(true, Ordering::SeqCst);
                c.sandbox.kill_vm();
            }
        });
        if let Err(e) = spawned {
            log::error!("cannot start the kill watch of {}: {e}", container.id);
        }
    }

    fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
        let c = self.container_for(id)?;
        let agent = &c.sandbox.agent;
        if pause {
            let r = agent::PauseContainerRequest { container_id: c.id.clone(), ..Default::default() };
            agent.pause_container(short(), &r).map_err(agent_err("PauseContainer"))?;
            c.paused.store(true, Ordering::SeqCst);
            self.inner.events.send(TASK_PAUSED_EVENT_TOPIC, Box::new(TaskPaused { container_id: c.id.clone(), ..Default::default() }));
        } else {
            let r = agent::ResumeContainerRequest { container_id: c.id.clone(), ..Default::default() };
            agent.resume_container(short(), &r).map_err(agent_err("ResumeContainer"))?;
            c.paused.store(false, Ordering::SeqCst);
            self.inner.events.send(TASK_RESUMED_EVENT_TOPIC, Box::new(TaskResumed { container_id: c.id.clone(), ..Default::default() }));
        }
        Ok(())
    }

    fn do_pids(&self, req: api::PidsRequest) -> Result<api::PidsResponse> {
        let c = self.container_for(&req.id)?;
        let r = agent::ListProcessesRequest { container_id: c.id.clone(), ..Default::default() };
        let list = c.sandbox.agent.list_processes(short(), &r).map_err(agent_err("ListProcesses"))?;
        let processes = list.processes.iter().map(|p| ProcessInfo { pid: p.pid, ..Default::default() }).collect();
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    fn do_close_io(&self, req: api::CloseIORequest) -> Result<()> {
        let c = self.container_for(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if !req.stdin {
            return Ok(());
        }
        // containerd clients call CloseIO when their own stdin ended, before they close the
        // FIFO; the stdin pump forwards what is still in the FIFO and closes the guest's stdin
        // at EOF. Only if the FIFO stays open (a client that keeps it) is stdin closed here,
        // after a grace period. The request never waits.
        let (agent, cid, eid) = (c.sandbox.agent.clone(), c.id.clone(), req.exec_id.clone());
        let spawned = std::thread::Builder::new().name("close-io".into()).spawn(move || {
            let deadline = Instant::now() + CLOSE_IO_GRACE;
            while let Some(pumps) = p.pumps() {
                if pumps.stdin_finished() {
                    return;
                }
                if Instant::now() >= deadline || p.exited() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            crate::io::close_stdin(&agent, &cid, &eid);
        });
        if let Err(e) = spawned {
            log::warn!("CloseIO {}/{}: cannot start the closer: {e}; closing now", c.id, req.exec_id);
            crate::io::close_stdin(&c.sandbox.agent, &c.id, &req.exec_id);
        }
        Ok(())
    }

    fn do_resize(&self, req: api::ResizePtyRequest) -> Result<()> {
        let c = self.container_for(&req.id)?;
        c.process(&req.exec_id)?;
        let r = agent::ResizeTtyRequest { container_id: c.id.clone(), exec_id: req.exec_id, width: req.width, height: req.height, ..Default::default() };
        c.sandbox.agent.resize_tty(short(), &r).map_err(agent_err("ResizeTty"))?;
        Ok(())
    }

    fn do_stats(&self, req: api::StatsRequest) -> Result<api::StatsResponse> {
        let c = self.container_for(&req.id)?;
        let r = agent::StatsRequest { container_id: c.id.clone(), ..Default::default() };
        let s = c.sandbox.agent.stats(short(), &r).map_err(agent_err("Stats"))?;
        let any = stats::to_any(&s).map_err(|e| ShimError::invalid("stats", e.to_string()))?;
        Ok(api::StatsResponse { stats: Some(any).into(), ..Default::default() })
    }

    fn do_update(&self, req: api::UpdateTaskRequest) -> Result<()> {
        let c = self.container_for(&req.id)?;
        let Some(res) = req.resources.as_ref() else {
            return Err(ShimError::invalid("update", "no resources given"));
        };
        // containerd sends the OCI LinuxResources as JSON; check it before the guest sees it.
        serde_json::from_slice::<oci_spec::runtime::LinuxResources>(&res.value).map_err(|e| ShimError::invalid("resources of the update", e.to_string()))?;
        let r = agent::UpdateContainerRequest { container_id: c.id.clone(), resources_json: res.value.clone(), ..Default::default() };
        c.sandbox.agent.update_container(short(), &r).map_err(agent_err("UpdateContainer"))?;
        Ok(())
    }
}

fn ok<T>(r: Result<T>) -> TtrpcResult<T> {
    r.map_err(Into::into)
}

impl Task for Service {
    fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("Create {} bundle {}", req.id, req.bundle);
        ok(self.do_create(req))
    }
    fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        log::info!("Start {} {:?}", req.id, req.exec_id);
        ok(self.do_start(req))
    }
    fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        log::info!("Delete {} {:?}", req.id, req.exec_id);
        ok(self.do_delete(req))
    }
    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        log::info!("Exec {} {:?}", req.id, req.exec_id);
        ok(self.do_exec(req).map(|_| api::Empty::new()))
    }
    fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        ok(self.do_state(req))
    }
    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        log::info!("Kill {} {:?} signal {} all {}", req.id, req.exec_id, req.signal, req.all);
        ok(self.do_kill(req).map(|_| api::Empty::new()))
    }
    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let p = ok(self.container_for(&req.id).and_then(|c| c.process(&req.exec_id)))?;
        let st = p.wait();
        Ok(api::WaitResponse { exit_status: st.exit_status, exited_at: st.exited_at.into(), ..Default::default() })
    }
    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        ok(self.do_pids(req))
    }
    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        ok(self.do_pause(&req.id, true).map(|_| api::Empty::new()))
    }
    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        ok(self.do_pause(&req.id, false).map(|_| api::Empty::new()))
    }
    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        ok(self.do_close_io(req).map(|_| api::Empty::new()))
    }
    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        ok(self.do_resize(req).map(|_| api::Empty::new()))
    }
    fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        ok(self.do_stats(req))
    }
    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        log::info!("Update {}", req.id);
        ok(self.do_update(req).map(|_| api::Empty::new()))
    }
    fn checkpoint(&self, _ctx: &TtrpcContext, _req: api::CheckpointTaskRequest) -> TtrpcResult<api::Empty> {
        ok(Err(ShimError::NotImplemented("checkpoint")))
    }
    fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.container_for(&req.id).map(|c| c.init.state().pid).unwrap_or(0);
        Ok(api::ConnectResponse { shim_pid: std::process::id(), task_pid, version: env!("CARGO_PKG_VERSION").into(), ..Default::default() })
    }
    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.inner.registry().is_empty() {
            log::info!("Shutdown: no container left, exiting");
            self.inner.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use containerd_shim::ExitSignal;
    use std::sync::mpsc;

    /// Whether `exit` is signalled within `within`.
    fn signalled(exit: &Arc<ExitSignal>, within: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        let e = exit.clone();
        std::thread::spawn(move || {
            e.wait();
            let _ = tx.send(());
        });
        rx.recv_timeout(within).is_ok()
    }

    #[test]
    fn a_shim_left_with_nothing_exits_by_itself_unless_it_got_work_again() {
        // Nothing left and no Shutdown: it exits after the grace.
        let exit = Arc::new(ExitSignal::default());
        let svc = Service::new("ns", None, exit.clone());
        svc.exit_if_orphaned(Duration::from_millis(50));
        assert!(signalled(&exit, Duration::from_secs(5)));

        // A container being created in the meantime keeps it.
        let exit = Arc::new(ExitSignal::default());
        let svc = Service::new("ns", None, exit.clone());
        svc.exit_if_orphaned(Duration::from_millis(50));
        svc.inner.registry().creating.insert("next".into());
        assert!(!signalled(&exit, Duration::from_millis(500)));
    }
}
