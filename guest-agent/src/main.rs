//! `husk-agent`: PID 1 of the husk microVM. It mounts the guest's base filesystems, serves the
//! `husk.agent.v1` ttrpc API on vsock (or a unix socket for tests), runs containers and reaps
//! every process.
//!
//! Usage: `husk-agent [--listen ADDR] [--run-dir DIR] [--cgroup-root DIR] [--log-level L]`
//! - Without `--listen` and as PID 1 (the guest): does the PID 1 duties and listens on
//!   `vsock://-1:<port>` (port 1024, or `husk.agent_port=N` on the kernel command line).
//! - With `--listen unix:///path` (host tests): skips the PID 1 mounts.
use husk_agent::{container, error, init, logger, process, server};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};

use container::Paths;
use process::reaper::Reaper;
use server::AgentService;

struct Args {
    listen: Option<String>,
    run_dir: PathBuf,
    cgroup_root: Option<PathBuf>,
    log_level: Option<log::LevelFilter>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { listen: None, run_dir: PathBuf::from("/run/husk"), cgroup_root: None, log_level: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--listen" => args.listen = Some(value("--listen")?),
            "--run-dir" => args.run_dir = PathBuf::from(value("--run-dir")?),
            "--cgroup-root" => args.cgroup_root = Some(PathBuf::from(value("--cgroup-root")?)),
            "--log-level" => {
                let v = value("--log-level")?;
                args.log_level = Some(logger::parse_level(&v).with_context(|| format!("bad --log-level {v:?}"))?);
            }
            // The kernel passes unknown cmdline words to init as arguments: ignore those.
            other if std::process::id() == 1 => log::debug!("ignoring argument {other:?}"),
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(args)
}

/// Makes sure fds 0, 1 and 2 are open, so pipes created later never land on them.
fn ensure_std_fds() {
    for fd in 0..3 {
        if nix::fcntl::fcntl(
            // SAFETY: only probes whether `fd` is open; the borrow does not outlive the call.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .is_err()
        {
            if let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
                // Leak on purpose: it becomes fd `fd` for the life of the agent.
                let _ = std::os::fd::IntoRawFd::into_raw_fd(f);
            }
        }
    }
}

fn setup_cgroup_root(root: &std::path::Path) -> anyhow::Result<()> {
    if let Some(parent) = root.parent() {
        if let Err(e) = init::enable_cgroup_controllers(parent) {
            log::warn!("{}", error::chain(&e));
        }
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating cgroup {}", root.display()))?;
    if let Err(e) = init::enable_cgroup_controllers(root) {
        log::warn!("{}", error::chain(&e));
    }
    Ok(())
}

/// SIGINT (husk-vmm's Ctrl-Alt-Del once PID 1 took it over) and SIGTERM end the sandbox:
/// they are blocked in every thread (set before any thread starts) and taken by a signal thread.
fn block_signals() -> nix::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
}

fn watch_signals(tx: std::sync::mpsc::Sender<()>, guest: bool) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    if guest {
        // Ctrl-Alt-Del then sends SIGINT to PID 1 instead of rebooting at once.
        nix::sys::reboot::set_cad_enabled(false).context("disabling Ctrl-Alt-Del")?;
    }
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 << 10)
        .spawn(move || {
            let mut set = SigSet::empty();
            set.add(Signal::SIGINT);
            set.add(Signal::SIGTERM);
            if let Ok(sig) = set.wait() {
                log::info!("{sig} received: shutting down");
                let _ = tx.send(());
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn run(started: Instant) -> anyhow::Result<()> {
    let mut steps = husk_agent::steps::Steps::since(started);
    block_signals().context("blocking SIGINT/SIGTERM")?;
    let args = parse_args()?;
    let guest = args.listen.is_none() && std::process::id() == 1;
    let mut cmdline = String::new();
    if guest {
        let left = init::leave_rootfs();
        init::mount_base().context("mounting the base filesystems")?;
        if let Err(e) = left {
            // Containers then fall back to MS_MOVE + chroot (see container::mounts).
            eprintln!("husk-agent: leaving the initramfs root: {}", error::chain(&e));
        }
        cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        steps.mark("base mounts");
    }
    let level = args.log_level.or_else(|| init::cmdline_value(&cmdline, "husk.agent_log").and_then(logger::parse_level)).unwrap_or(log::LevelFilter::Info);
    logger::init(level);
    ensure_std_fds();
    if guest {
        init::loopback_up().context("bringing up lo")?;
        let hostname = init::cmdline_value(&cmdline, "husk.hostname").unwrap_or("husk");
        init::set_hostname(hostname)?;
        steps.mark("lo and hostname");
        if let Some(order) = init::page_reporting_order(&cmdline)? {
            if let Err(e) = init::set_page_reporting_order(order) {
                log::warn!("free page reporting: setting order {order}: {e}");
            }
            steps.mark("page reporting");
        }
    } else if std::process::id() != 1 {
        nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    }
    let listen = match args.listen {
        Some(l) => l,
        None => format!("vsock://-1:{}", init::agent_port(&cmdline)?),
    };
    if let Some(path) = listen.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    let cgroup_root = args.cgroup_root.unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup/husk"));
    setup_cgroup_root(&cgroup_root)?;
    steps.mark("cgroups");
    let paths = Paths { run_dir: args.run_dir, cgroup_root };

    // In the VM, the pod's namespaces are made meanwhile (and before a template's snapshot).
    let spare = if guest { husk_agent::pod::Spare::start() } else { husk_agent::pod::Spare::none() };
    let reaper = Arc::new(Reaper::default());
    let (shutdown_tx, shutdown_rx) = std::sync::mpsc::channel::<()>();
    watch_signals(shutdown_tx.clone(), guest)?;
    let shutdown_tx = std::sync::Mutex::new(shutdown_tx);
    let service = Arc::new(AgentService::new(
        paths,
        reaper.clone(),
        spare,
        Box::new(move || {
            let _ = shutdown_tx.lock().map(|tx| tx.send(()));
        }),
    ));
    let mut server = ttrpc::Server::new()
        .bind(&listen)
        .with_context(|| format!("listening on {listen}"))?
        .register_service(husk_protocol::agent_ttrpc::create_agent(service.clone()));
    if listen.starts_with("vsock://") {
        // Only the host may call the agent (a unix socket in host tests has no such peer).
        server = server.set_accept_hook(server::peer::HostOnly);
    }
    server.start().with_context(|| format!("serving on {listen}"))?;
    steps.mark("server");
    // The guest's uptime says how long the kernel took before the agent ran (boot timeline).
    let uptime = std::fs::read_to_string("/proc/uptime").ok().and_then(|u| u.split_whitespace().next().map(str::to_string)).unwrap_or_default();
    log::info!("husk-agent {} ready on {listen} after {} (guest uptime {uptime} s)", env!("CARGO_PKG_VERSION"), steps.summary());
    std::thread::Builder::new()
        .name("shutdown".into())
        .spawn(move || {
            if shutdown_rx.recv().is_ok() {
                // Let the Shutdown reply leave first.
                std::thread::sleep(std::time::Duration::from_millis(20));
                service.destroy_all();
                log::info!("powering off");
                if guest {
                    init::power_off();
                }
                std::process::exit(0);
            }
        })
        .context("starting the shutdown thread")?;
    reaper.run()
}

fn main() {
    let started = Instant::now();
    if let Err(e) = run(started) {
        // `{:#}` prints the whole chain of causes on one line.
        eprintln!("husk-agent: {e:#}");
        if std::process::id() == 1 && std::env::args().all(|a| a != "--listen") {
            // PID 1 must not exit (the kernel would panic): power off instead.
            init::power_off();
        }
        std::process::exit(1);
    }
}
