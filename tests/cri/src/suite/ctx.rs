//! What a case works with: the CRI client, the handler under test, its pods and containers,
//! and the waits kubelet would do (poll a status until it changes).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1::{ContainerState, ContainerStatus, ExecSyncResponse, PodSandboxConfig};
use tokio::sync::Mutex;

use crate::cri::Cri;
use crate::procfs::{self, Proc};
use crate::spec::{ContainerSpec, PodSpec};

/// Settings of one suite run.
#[derive(Debug, Clone)]
pub struct Opts {
    /// containerd's socket (CRI and shims' `-address`).
    pub socket: PathBuf,
    /// The app image (busybox).
    pub image: String,
    /// Where pod log directories go.
    pub work: PathBuf,
    /// A short id of this run, in pod names and UIDs.
    pub run: String,
    /// The file holding containerd's pid (the restart case kills it; a supervisor restarts it).
    pub containerd_pidfile: Option<PathBuf>,
    /// How long a case may take in all.
    pub case_timeout: Duration,
    /// How long the whole run may take; cases that would start later fail as not run (the
    /// leak check still runs).
    pub budget: Option<Duration>,
    /// How long a container may take to reach a state, an exec to see a result.
    pub wait: Duration,
    /// Directories below which no mount may be left (containerd's root and state).
    pub watch: Vec<PathBuf>,
    /// husk's state directory (`shim.state_dir`): empty once every pod is gone.
    pub husk_state_dir: Option<PathBuf>,
    /// The CNI bridge: no port left on it once every pod is gone.
    pub bridge: Option<String>,
}

/// A running pod sandbox.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub spec: PodSpec,
    pub config: PodSandboxConfig,
}

/// The context of the cases of one handler.
pub struct Ctx {
    cri: std::sync::Mutex<Cri>,
    pub opts: Opts,
    pub handler: String,
    /// The pod most cases share, created by the first case that asks (or why it failed).
    main: Mutex<Option<std::result::Result<Pod, String>>>,
    /// Pods and containers the running case created, removed after it.
    case_pods: std::sync::Mutex<Vec<String>>,
    case_containers: std::sync::Mutex<Vec<String>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctx {
    pub fn new(cri: Cri, opts: Opts, handler: &str) -> Ctx {
        Ctx {
            cri: std::sync::Mutex::new(cri),
            opts,
            handler: handler.into(),
            main: Mutex::new(None),
            case_pods: Default::default(),
            case_containers: Default::default(),
        }
    }

    /// The CRI client (a clone: cheap, and replaced after a containerd restart).
    pub fn cri(&self) -> Cri {
        lock(&self.cri).clone()
    }

    pub fn set_cri(&self, cri: Cri) {
        *lock(&self.cri) = cri;
    }

    pub fn is_husk(&self) -> bool {
        self.handler == "husk"
    }

    /// A pod of this run and handler; `short` names it (a-z, 0-9, '-').
    pub fn pod_spec(&self, short: &str) -> PodSpec {
        let name = format!("{short}-{}", self.handler);
        let uid = format!("{}-{name}", self.opts.run);
        PodSpec {
            hostname: name.clone(),
            log_dir: self.opts.work.join("logs").join(&uid),
            namespace: format!("husk-cri-{}", self.opts.run),
            name,
            uid,
            dns: None,
            share_pid: false,
            port_mappings: Vec::new(),
            resources: None,
        }
    }

    /// Runs a pod (removed after the case, unless `keep`).
    pub async fn run_pod(&self, spec: PodSpec, keep: bool) -> Result<Pod> {
        // kubelet creates the pod's log directory before RunPodSandbox.
        std::fs::create_dir_all(&spec.log_dir).with_context(|| format!("creating the pod log directory {}", spec.log_dir.display()))?;
        let config = spec.config();
        let id = self.cri().run_pod(&config, &self.handler).await?;
        if !keep {
            lock(&self.case_pods).push(id.clone());
        }
        Ok(Pod { id, spec, config })
    }

    /// The pod most cases share: hostname and DNS set, a PID namespace per container.
    pub async fn main_pod(&self) -> Result<Pod> {
        let mut main = self.main.lock().await;
        if main.is_none() {
            let mut spec = self.pod_spec("main");
            spec.dns = Some(super::pod::main_dns());
            *main = Some(self.run_pod(spec, true).await.map_err(|e| format!("{e:#}")));
        }
        match main.as_ref() {
            Some(Ok(p)) => Ok(p.clone()),
            Some(Err(e)) => bail!("the shared pod did not start: {e}"),
            None => bail!("the shared pod was not created"),
        }
    }

    /// Takes the shared pod out of the context (for its removal), if it was created.
    pub async fn take_main_pod(&self) -> Option<Pod> {
        self.main.lock().await.take().and_then(|r| r.ok())
    }

    /// Stops and removes the pods and containers the last case created; the errors, if any.
    pub async fn cleanup_case(&self) -> Vec<String> {
        let cri = self.cri();
        let mut errs = Vec::new();
        let containers: Vec<String> = lock(&self.case_containers).drain(..).collect();
        for c in containers {
            if let Err(e) = cri.stop_container(&c, 0).await {
                errs.push(format!("{e}"));
            }
            if let Err(e) = cri.remove_container(&c).await {
                errs.push(format!("{e}"));
            }
        }
        let pods: Vec<String> = lock(&self.case_pods).drain(..).collect();
        for p in pods {
            if let Err(e) = cri.stop_pod(&p).await {
                errs.push(format!("{e}"));
            }
            if let Err(e) = cri.remove_pod(&p).await {
                errs.push(format!("{e}"));
            }
        }
        errs
    }

    /// A container spec with the app image.
    pub fn sh(&self, name: &str, script: &str) -> ContainerSpec {
        ContainerSpec::sh(name, &self.opts.image, script)
    }

    /// Creates a container in `pod` (removed after the case).
    pub async fn create(&self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let id = self.cri().create_container(&pod.id, &spec.config(), &pod.config).await?;
        lock(&self.case_containers).push(id.clone());
        Ok(id)
    }

    /// Creates and starts a container in `pod`.
    pub async fn start(&self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let id = self.create(pod, spec).await?;
        self.cri().start_container(&id).await?;
        Ok(id)
    }

    /// Forgets a pod the case removed itself.
    pub fn forget_pod(&self, id: &str) {
        lock(&self.case_pods).retain(|p| p != id);
    }

    /// Forgets a container the case removed itself.
    pub fn forget_container(&self, id: &str) {
        lock(&self.case_containers).retain(|c| c != id);
    }

    /// Polls ContainerStatus until the container is in `state`.
    pub async fn wait_state(&self, id: &str, state: ContainerState) -> Result<ContainerStatus> {
        let deadline = Instant::now() + self.opts.wait;
        loop {
            let st = self.cri().container_status(id).await?;
            if st.state == state as i32 {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("container {id} is {} after {} s, not {}", state_name(st.state), self.opts.wait.as_secs(), state.as_str_name());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// ExecSync with a timeout of `timeout_secs` (0: none).
    pub async fn exec(&self, id: &str, argv: &[&str], timeout_secs: i64) -> Result<ExecSyncResponse> {
        Ok(self.cri().exec_sync(id, argv, timeout_secs).await?)
    }

    /// Runs `sh -c script` in the container; its stdout if it exits 0, else an error with both
    /// streams.
    pub async fn sh_out(&self, id: &str, script: &str) -> Result<String> {
        let r = self.exec(id, &["sh", "-c", script], 60).await?;
        if r.exit_code != 0 {
            bail!("`{script}` in {id} exited {}: stdout [{}] stderr [{}]", r.exit_code, text(&r.stdout).trim(), text(&r.stderr).trim());
        }
        Ok(text(&r.stdout))
    }

    /// Repeats `sh -c script` until its stdout satisfies `ok`; the last output otherwise.
    pub async fn sh_until(&self, id: &str, script: &str, ok: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + self.opts.wait;
        loop {
            let r = self.exec(id, &["sh", "-c", script], 60).await?;
            let out = text(&r.stdout);
            if r.exit_code == 0 && ok(&out) {
                return Ok(out);
            }
            if Instant::now() > deadline {
                bail!(
                    "`{script}` in {id} did not give the expected output in {} s; last: exit {}, stdout [{}] stderr [{}]",
                    self.opts.wait.as_secs(),
                    r.exit_code,
                    out.trim(),
                    text(&r.stderr).trim()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The shim processes of this containerd whose task id is one of `ids` (a pod's id and its
    /// containers' ids: containerd groups a pod in one shim, started with the pod's id).
    pub fn shims_for(&self, ids: &[&str]) -> Result<Vec<Proc>> {
        let procs = procfs::processes()?;
        let sock = self.socket_str();
        Ok(ids.iter().flat_map(|id| procfs::shims(&procs, &sock, id)).cloned().collect())
    }

    /// The husk-vmm processes below the shims of `ids` (see `shims_for`).
    pub fn vmms_for(&self, ids: &[&str]) -> Result<Vec<Proc>> {
        let procs = procfs::processes()?;
        let sock = self.socket_str();
        let mut out = Vec::new();
        for s in ids.iter().flat_map(|id| procfs::shims(&procs, &sock, id)) {
            out.extend(procfs::descendants(&procs, s.pid).into_iter().filter(|p| p.name() == "husk-vmm").cloned());
        }
        Ok(out)
    }

    pub fn socket_str(&self) -> String {
        self.opts.socket.display().to_string()
    }
}

/// Lossy UTF-8 of a stream.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn state_name(state: i32) -> &'static str {
    ContainerState::try_from(state).map(|s| s.as_str_name()).unwrap_or("an unknown state")
}

/// "pid argv" of each process, for messages.
pub fn describe(procs: &[Proc]) -> String {
    procs.iter().map(|p| format!("[{} {}]", p.pid, p.cmdline())).collect::<Vec<_>>().join(" ")
}
