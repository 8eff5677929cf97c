//! `husk-vmm`: runs one microVM.
//!
//! ```text
//! husk-vmm [--config FILE.toml] --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N]
//!          [--memory 256M] [--console stdio|none|file:PATH] [--api-sock PATH]
//!          [--disk path=PATH[,id=NAME][,ro][,fd=N]]... [--disk-slots N] [--net tap=NAME[,mac=..][,netns=PATH|,fd=N]]...
//!          [--vsock cid=N,uds=PATH] [--fs tag=TAG,socket=PATH]... [--irq-delivery line|irqfd]
//!          [--free-page-reporting] [--log-max-bytes SIZE] [--no-seccomp]
//! ```
//! Flags override the TOML file. Exit status: 0 powered off, 1 rebooted, 2 VMM error,
//! 3 guest panicked or triple-faulted (see `husk_microvm::exit`); one line on stderr says why.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use husk_config::{Console, DiskConfig, FsConfig, IrqDelivery, MemSize, NetConfig, VmConfig, VsockConfig};
use husk_microvm::bounded_log::BoundedLog;
use husk_microvm::exit::EXIT_VMM_ERROR;

/// Runs one husk microVM.
#[derive(Parser, Debug)]
#[command(name = "husk-vmm", version)]
struct Args {
    /// TOML file with the VM configuration; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Guest kernel: ELF vmlinux or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs (1-64).
    #[arg(long)]
    vcpus: Option<u32>,
    /// Guest memory, e.g. 256M or 1G.
    #[arg(long)]
    memory: Option<String>,
    /// Serial console: stdio, none or file:PATH.
    #[arg(long)]
    console: Option<String>,
    /// Unix socket for the control API.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Virtio block device (repeatable): path=PATH[,id=NAME][,ro][,fd=N] (fd: the image, opened by the parent and inherited; PATH then only names it).
    #[arg(long)]
    disk: Vec<String>,
    /// Empty virtio-blk slots after the --disk devices (default 0), for images attached later.
    ///
    /// They are named slot0, slot1, ... in the control API: PUT /vm/disks/slotN attaches an
    /// image while the guest runs, DELETE detaches it (microvm/API.md). They boot with
    /// capacity 0 and an empty serial and never offer the read-only feature: a read-only
    /// attachment fails the guest's writes with an I/O error.
    #[arg(long, value_name = "N")]
    disk_slots: Option<u32>,
    /// Virtio net device (repeatable): tap=NAME[,mac=AA:BB:CC:DD:EE:FF][,netns=PATH | ,fd=N] (fd: an open tap inherited from the parent).
    #[arg(long)]
    net: Vec<String>,
    /// Virtio vsock device: cid=N,uds=PATH.
    #[arg(long)]
    vsock: Option<String>,
    /// Virtio-fs device served by a vhost-user backend such as virtiofsd (repeatable):
    /// tag=TAG,socket=PATH. The guest mounts it with `mount -t virtiofs TAG DIR`.
    #[arg(long)]
    fs: Vec<String>,
    /// Add a virtio-balloon device with free page reporting only: memory the guest kernel
    /// reports free (2 MiB blocks with husk's kernel) goes back to the host.
    #[arg(long)]
    free_page_reporting: bool,
    /// How virtio interrupts reach the guest: line (KVM_IRQ_LINE, default) or irqfd.
    #[arg(long)]
    irq_delivery: Option<String>,
    /// Most bytes kept in the console file and in stderr when that is a file (default 1M,
    /// at least 16K); older output is dropped first.
    #[arg(long, value_name = "SIZE")]
    log_max_bytes: Option<String>,
    /// Do not install seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// Continue the VM saved in snapshot directory DIR (PUT /vm/snapshot) instead of booting
    /// one: its configuration, memory and state; only --console, --api-sock, --vsock (the
    /// saved CID, a new socket path), --net and --fs (new backends for the saved devices, in
    /// order, with the saved MACs and tags), --log-max-bytes and --no-seccomp may be given, or
    /// --config: a configuration of the same VM (vCPUs, memory, command line, devices; checked)
    /// whose console, API socket, vsock socket and device backends are used.
    /// The vCPUs run at once.
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "kernel", "initrd", "cmdline", "vcpus", "memory", "disk", "disk_slots",
        "free_page_reporting", "irq_delivery",
    ])]
    restore: Option<PathBuf>,
}

fn config_from(args: &Args) -> anyhow::Result<VmConfig> {
    let mut c = match &args.config {
        Some(p) => VmConfig::from_toml_file(p)?,
        None => VmConfig::default(),
    };
    if let Some(k) = &args.kernel {
        c.kernel = k.clone();
    }
    if let Some(i) = &args.initrd {
        c.initrd = Some(i.clone());
    }
    if let Some(s) = &args.cmdline {
        c.cmdline = s.clone();
    }
    if let Some(n) = args.vcpus {
        c.vcpus = n;
    }
    if let Some(m) = &args.memory {
        c.memory = MemSize::parse("memory", m)?;
    }
    if let Some(s) = &args.console {
        c.console = Console::parse(s)?;
    }
    if let Some(a) = &args.api_sock {
        c.api_sock = Some(a.clone());
    }
    if !args.disk.is_empty() {
        c.disk = args.disk.iter().map(|d| DiskConfig::parse_flag(d)).collect::<Result<_, _>>()?;
    }
    if let Some(n) = args.disk_slots {
        c.disk_slots = n;
    }
    if !args.net.is_empty() {
        c.net = args.net.iter().map(|n| NetConfig::parse_flag(n)).collect::<Result<_, _>>()?;
    }
    if let Some(v) = &args.vsock {
        c.vsock = Some(VsockConfig::parse_flag(v)?);
    }
    if !args.fs.is_empty() {
        c.fs = args.fs.iter().map(|f| FsConfig::parse_flag(f)).collect::<Result<_, _>>()?;
    }
    if args.free_page_reporting {
        c.free_page_reporting = true;
    }
    if let Some(d) = &args.irq_delivery {
        c.irq_delivery = IrqDelivery::parse(d)?;
    }
    if let Some(m) = &args.log_max_bytes {
        c.log_max_bytes = MemSize::parse("log_max_bytes", m)?;
    }
    Ok(c)
}

/// Builds and runs the VM. `created` receives the unix socket paths this process will bind
/// (API, vsock), for removal at exit. A path that already exists is left out: binding it fails,
/// and it belongs to someone else (another VMM), so it must not be deleted.
fn run(args: Args, config: VmConfig, created: &mut Vec<PathBuf>) -> anyhow::Result<husk_microvm::exit::ExitReason> {
    if let Some(dir) = &args.restore {
        let ours = config.api_sock.iter().chain(config.vsock.as_ref().map(|v| &v.uds));
        created.extend(ours.filter(|p| std::fs::symlink_metadata(p).is_err()).cloned());
        let over = husk_microvm::vmm::RestoreOverrides {
            console: (args.console.is_some() || args.config.is_some()).then(|| config.console.clone()),
            api_sock: config.api_sock.clone(),
            vsock: config.vsock.clone(),
            net: config.net.clone(),
            fs: config.fs.clone(),
            expected: args.config.is_some().then(|| config.clone()),
        };
        let vm = husk_microvm::vmm::Vm::restore(dir, over).with_context(|| format!("cannot restore the VM saved in {dir:?}"))?;
        log::debug!("VM restored {:?} after process start", husk_microvm::since_start());
        return Ok(husk_microvm::runner::run(vm, !args.no_seccomp)?);
    }
    let format = config.validate()?;
    log::debug!("configuration read {:?} after process start", husk_microvm::since_start());
    let ours = config.api_sock.iter().chain(config.vsock.as_ref().map(|v| &v.uds));
    created.extend(ours.filter(|p| std::fs::symlink_metadata(p).is_err()).cloned());
    let mut vm = husk_microvm::vmm::Vm::new(config, format).context("cannot create the VM")?;
    husk_microvm::devices::virtio::wiring::attach_all(&mut vm).context("cannot attach the virtio devices")?;
    log::debug!("virtio devices attached {:?} after process start", husk_microvm::since_start());
    vm.finish_boot().context("cannot prepare the boot")?;
    log::debug!("VM built {:?} after process start", husk_microvm::since_start());
    Ok(husk_microvm::runner::run(vm, !args.no_seccomp)?)
}

/// Logs go to stderr (level from `HUSK_LOG`, default warn). When stderr is a regular file
/// (the shim's vmm.log) they go through a [`BoundedLog`] over it, so a guest that makes the
/// VMM log (rate-limited, but for as long as it runs) cannot fill the host's disk.
fn init_logging(max_bytes: u64) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().filter_or("HUSK_LOG", "warn"));
    let stderr_file = std::io::stderr().as_fd().try_clone_to_owned().map(std::fs::File::from);
    if let Ok(f) = stderr_file {
        if f.metadata().is_ok_and(|m| m.file_type().is_file()) {
            match BoundedLog::shared(f, max_bytes) {
                Ok(log) => {
                    builder.target(env_logger::Target::Pipe(Box::new(log)));
                }
                Err(e) => eprintln!("husk-vmm: stderr is a file that cannot be bounded ({e}); logging to it unbounded"),
            }
        }
    }
    builder.init();
}

fn main() -> ExitCode {
    husk_microvm::mark_start();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            eprintln!("husk-vmm: {}", e.to_string().lines().next().unwrap_or("bad arguments"));
            return ExitCode::from(EXIT_VMM_ERROR as u8);
        }
        Err(e) => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let config = match config_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("husk-vmm: {}", chain.join(": "));
            return ExitCode::from(EXIT_VMM_ERROR as u8);
        }
    };
    init_logging(config.log_max_bytes.bytes());
    let mut created = Vec::new();
    let status = match run(args, config, &mut created) {
        Ok(reason) => {
            eprintln!("husk-vmm: {reason}");
            reason.status()
        }
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("husk-vmm: {}", chain.join(": "));
            EXIT_VMM_ERROR
        }
    };
    for p in created {
        let _ = std::fs::remove_file(p);
    }
    // vCPU threads may be inside KVM_RUN: end the process without joining them.
    std::process::exit(status)
}
