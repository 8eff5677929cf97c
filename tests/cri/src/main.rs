//! husk-cri: a CRI client that does what kubelet does, against containerd's CRI plugin, for
//! the runtime handlers runc and husk in one run.
//!
//! ```text
//! husk-cri [--socket S] suite [--handlers runc,husk] [CASE...]   the suite (PASS/FAIL per case
//!                                                                  and handler; exit 1 on a failure)
//! husk-cri [--socket S] bench [--handlers runc,husk] [--runs N]  pod start, join and memory figures
//! husk-cri [--socket S] wait-ready                               until CRI reports runtime and network ready
//! husk-cri [--socket S] cleanup --run ID                         stop and remove every pod of run ID
//! husk-cri cases                                                  list the cases
//! ```

mod bench;
mod cri;
mod cri_log;
mod leak;
mod procfs;
mod spec;
mod suite;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use k8s_cri::v1::PodSandboxFilter;

use cri::Cri;

#[derive(Parser)]
#[command(name = "husk-cri", about = "CRI test client and suite for husk (and runc as the reference)")]
struct Cli {
    /// containerd's socket (the CRI plugin answers on it).
    #[arg(long, env = "CRI_SOCKET", global = true, default_value = "/run/containerd/containerd.sock")]
    socket: PathBuf,
    /// Seconds one CRI call may take.
    #[arg(long, global = true, default_value_t = 300)]
    call_timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Runtime handlers, in order.
    #[arg(long, env = "CRI_HANDLERS", value_delimiter = ',', default_value = "runc,husk")]
    handlers: Vec<String>,
    /// The app image (busybox), imported into containerd's k8s.io namespace.
    #[arg(long, default_value = "docker.io/library/husk-busybox:latest")]
    image: String,
    /// Working directory (pod log directories).
    #[arg(long)]
    work: PathBuf,
    /// A short id of this run (pod names, UIDs and cgroups carry it).
    #[arg(long)]
    run: String,
    /// containerd's pid file, kept by a restart loop (the restart case needs it).
    #[arg(long)]
    containerd_pidfile: Option<PathBuf>,
    /// A directory no mount may be left below after the pods are gone (repeatable).
    #[arg(long)]
    watch: Vec<PathBuf>,
    /// husk's state directory: empty once the pods are gone.
    #[arg(long)]
    husk_state_dir: Option<PathBuf>,
    /// The CNI bridge: no port left on it once the pods are gone.
    #[arg(long)]
    bridge: Option<String>,
    /// Seconds a container may take to reach a state, or an exec to show a result.
    #[arg(long, default_value_t = 180)]
    wait: u64,
    /// Seconds one case may take in all.
    #[arg(long, default_value_t = 900)]
    case_timeout: u64,
    /// Seconds the whole run may take: cases that would start later fail as not run.
    #[arg(long)]
    budget: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the suite.
    Suite {
        #[command(flatten)]
        args: RunArgs,
        /// Cases to run (substrings of their names); all by default. leak-check always runs.
        cases: Vec<String>,
    },
    /// Run the pod benchmarks.
    Bench {
        #[command(flatten)]
        args: RunArgs,
        /// Measured rounds per handler (after one warm-up round).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds an idle pod settles before its memory is read.
        #[arg(long, default_value_t = 3)]
        settle: u64,
    },
    /// Wait until the CRI plugin reports RuntimeReady and NetworkReady.
    WaitReady {
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Stop and remove every pod sandbox of a run.
    Cleanup {
        #[arg(long)]
        run: String,
    },
    /// List the cases.
    Cases,
}

impl RunArgs {
    fn opts(&self, socket: PathBuf) -> suite::Opts {
        suite::Opts {
            socket,
            image: self.image.clone(),
            work: self.work.clone(),
            run: self.run.clone(),
            containerd_pidfile: self.containerd_pidfile.clone(),
            case_timeout: Duration::from_secs(self.case_timeout),
            budget: self.budget.map(Duration::from_secs),
            wait: Duration::from_secs(self.wait),
            watch: self.watch.clone(),
            husk_state_dir: self.husk_state_dir.clone(),
            bridge: self.bridge.clone(),
        }
    }
}

/// Fails unless the CRI plugin reports both RuntimeReady and NetworkReady.
pub async fn wait_ready_once(cri: &Cri) -> Result<()> {
    let st = cri.status().await?;
    let conds = st.status.map(|s| s.conditions).unwrap_or_default();
    for want in ["RuntimeReady", "NetworkReady"] {
        match conds.iter().find(|c| c.r#type == want) {
            Some(c) if c.status => {}
            Some(c) => bail!("{want} is false: {} {}", c.reason, c.message),
            None => bail!("CRI Status has no {want} condition"),
        }
    }
    Ok(())
}

async fn wait_ready(socket: &std::path::Path, call_timeout: Duration, limit: Duration) -> Result<Cri> {
    let deadline = Instant::now() + limit;
    loop {
        let res = match Cri::connect(socket, call_timeout).await {
            Ok(cri) => wait_ready_once(&cri).await.map(|_| cri),
            Err(e) => Err(e.into()),
        };
        match res {
            Ok(cri) => return Ok(cri),
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("CRI on {} not ready within {} s", socket.display(), limit.as_secs()))),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Checks that every handler's image is present, so a missing import fails once, clearly.
async fn check_image(cri: &Cri, image: &str) -> Result<()> {
    if cri.image_status(image).await?.is_none() {
        bail!("image {image} is not in containerd's k8s.io namespace (import it with `ctr -n k8s.io images import`)");
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let call_timeout = Duration::from_secs(cli.call_timeout);
    match cli.cmd {
        Cmd::Cases => {
            for c in suite::CASES {
                println!("{c}");
            }
        }
        Cmd::WaitReady { timeout } => {
            let cri = wait_ready(&cli.socket, call_timeout, Duration::from_secs(timeout)).await?;
            let v = cri.version().await?;
            println!("CRI ready: {} {} (CRI {})", v.runtime_name, v.runtime_version, v.runtime_api_version);
        }
        Cmd::Cleanup { run } => {
            let cri = Cri::connect(&cli.socket, call_timeout).await?;
            let filter = PodSandboxFilter { label_selector: [("husk-cri/run".to_string(), format!("husk-cri-{run}"))].into(), ..Default::default() };
            for p in cri.list_pods(filter).await? {
                let stopped = cri.stop_pod(&p.id).await;
                let removed = cri.remove_pod(&p.id).await;
                println!(
                    "cleanup: pod {} {}: stop {:?}, remove {:?}",
                    p.metadata.map(|m| m.name).unwrap_or_default(),
                    p.id,
                    stopped.err().map(|e| e.to_string()),
                    removed.err().map(|e| e.to_string())
                );
            }
        }
        Cmd::Suite { args, cases } => {
            let cri = wait_ready(&cli.socket, call_timeout, Duration::from_secs(60)).await?;
            check_image(&cri, &args.image).await?;
            let t = Instant::now();
            let tally = suite::run(cri, args.opts(cli.socket.clone()), &args.handlers, &cases).await?;
            println!("suite: {} handlers in {:.0} s", args.handlers.join(","), t.elapsed().as_secs_f64());
            println!("{} passed, {} failed, {} skipped", tally.passed, tally.failed, tally.skipped);
            if tally.failed > 0 {
                std::process::exit(1);
            }
        }
        Cmd::Bench { args, runs, settle } => {
            let cri = wait_ready(&cli.socket, call_timeout, Duration::from_secs(60)).await?;
            check_image(&cri, &args.image).await?;
            bench::run(cri, args.opts(cli.socket.clone()), &args.handlers, runs, Duration::from_secs(settle)).await.context("bench")?;
        }
    }
    Ok(())
}
