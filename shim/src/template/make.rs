//! Making a template: boot a VM of the shape up to its agent, let the guest give back what it
//! freed at boot, save it, and keep the snapshot with its key.
//!
//! The template VM runs the VMM unjailed but under its seccomp filters: nothing of any pod
//! ever reaches it (no container, no image, no host file; its virtiofsd serves an empty
//! directory, its taps are in a network namespace of their own that goes with them), and it
//! lives only until the snapshot is written.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_config::api::Client as VmmClient;
use husk_config::{FsConfig, HuskConfig, MacAddr, NetConfig};
use nix::fcntl::{Flock, FlockArg};

use super::{disk_slots, find, guest_mac, key_name, key_text, root, Shape, KEY_FILE};
use crate::error::{Result, ShimError};
use crate::sandbox::sizing::VmSize;
use crate::sandbox::{vm_config, VmFiles, SHARED_FS_TAG, SHUTDOWN_TIMEOUT};
use crate::sharedfs::{SharedFs, VirtiofsdConfig};
use crate::vm::{Vm, VmPlan};

/// How long the guest gets after its agent answered, to report the memory it freed while
/// booting (the kernel reports free blocks 2 s after they were freed): the template's memory
/// file, which every restore copies, then holds only what the guest uses.
const SETTLE: Duration = Duration::from_secs(3);
/// Longest wait for the template VM's agent (less if `[shim] boot_timeout_secs` is less): a
/// template that does not come up delays its first pod by this much, then the pod boots.
const TEMPLATE_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the snapshot is retried while the VMM still has the closed agent connection.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(10);

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ShimError + 'a {
    move |e| ShimError::io(op, path, e)
}

/// Makes the template of `shape` unless a complete one exists or another process is making it
/// now (then None). Returns its directory.
pub fn make(cfg: &HuskConfig, shape: &Shape) -> Result<Option<PathBuf>> {
    if let Some(dir) = find(cfg, shape) {
        return Ok(Some(dir));
    }
    let root = root(cfg);
    std::fs::create_dir_all(&root).map_err(io("create", &root))?;
    let text = key_text(cfg, shape);
    let name = key_name(&text);
    let lock_path = root.join(format!("{name}.lock"));
    let lock_file = File::create(&lock_path).map_err(io("create", &lock_path))?;
    let _lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
        Err((_, e)) => return Err(ShimError::io("lock", &lock_path, e.into())),
    };
    // Made by another process while this one waited for nothing (the lock is not blocking,
    // but one may have finished between the first look and the lock).
    if let Some(dir) = find(cfg, shape) {
        return Ok(Some(dir));
    }
    let work = root.join(format!("{name}.work"));
    // A maker that died left it; the lock says nobody uses it.
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir(&work).map_err(io("create", &work))?;
    let made = boot_and_save(cfg, shape, &work, &text);
    let result = made.and_then(|snap| {
        let dir = root.join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&snap, &dir).map_err(io("move the template into", &dir))?;
        Ok(Some(dir))
    });
    if let Err(e) = std::fs::remove_dir_all(&work) {
        log::warn!("template: cannot remove {work:?}: {e}");
    }
    result
}

/// A network namespace held open (the taps in it go with it) and the taps, by name.
type PrivateTaps = (Option<File>, Vec<(String, File)>);

/// Creates `n` taps in a network namespace of their own.
fn private_taps(n: usize) -> Result<PrivateTaps> {
    if n == 0 {
        return Ok((None, Vec::new()));
    }
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<PrivateTaps> {
            // Only this thread moves into the new namespace.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| ShimError::io("create a network namespace for", Path::new("the template's taps"), e.into()))?;
            let ns_path = Path::new("/proc/thread-self/ns/net");
            let ns = File::open(ns_path).map_err(io("open", ns_path))?;
            let mut taps = Vec::with_capacity(n);
            for i in 0..n {
                let name = format!("hsktpl{i}");
                let tap = crate::network::tap::create(&name).map_err(|source| ShimError::Network { op: "create a template tap", source })?;
                taps.push((name, tap));
            }
            Ok((Some(ns), taps))
        })
        .join()
    });
    made.unwrap_or_else(|_| Err(ShimError::FailedPrecondition("the template's tap thread panicked".into())))
}

/// Boots the template VM in `work`, waits for its agent, lets it settle, and saves it to
/// `work/snap` with the key file. The VM, its virtiofsd and taps are gone when this returns.
fn boot_and_save(cfg: &HuskConfig, shape: &Shape, work: &Path, text: &str) -> Result<PathBuf> {
    let t0 = Instant::now();
    let shared = match shape.shared_fs {
        true => {
            let vcfg = VirtiofsdConfig { binary: cfg.shim.virtiofsd.clone(), ..Default::default() };
            Some(SharedFs::start(work, &vcfg).map_err(|source| ShimError::SharedFs { op: "start a template's virtiofsd", source })?)
        }
        false => None,
    };
    let (ns, taps) = private_taps(shape.nics)?;
    let files = VmFiles { console: work.join("console.log"), api_sock: work.join("api.sock"), vsock: work.join("vsock") };
    let config = vm_config(cfg, VmSize { vcpus: shape.vcpus, memory: shape.memory }, disk_slots(cfg), files);
    let mut plan = VmPlan {
        vmm: cfg.shim.vmm.clone(),
        config,
        config_file: work.join("vm.toml"),
        vmm_log: work.join("vmm.log"),
        work_dir: work.to_path_buf(),
        cgroup_procs: Vec::new(),
        fds: Vec::new(),
        jail: None,
        restore: None,
    };
    for (i, (name, tap)) in taps.into_iter().enumerate() {
        let fd = plan.inherit(tap.into(), "template tap");
        plan.config.net.push(NetConfig { tap: name, mac: Some(MacAddr(guest_mac(i))), netns: None, fd: Some(fd) });
    }
    if let Some(socket) = shared.as_ref().and_then(SharedFs::socket) {
        let conn = crate::jail::connect_unix(socket).map_err(io("connect to virtiofsd at", socket))?;
        let fd = plan.inherit(conn.into(), "virtio-fs connection");
        plan.config.fs.push(FsConfig { tag: SHARED_FS_TAG.into(), socket: socket.to_path_buf(), fd: Some(fd) });
    }
    let vm = Vm::spawn(plan)?;
    let saved = save(cfg, &vm, work, text);
    if vm.kill(SHUTDOWN_TIMEOUT).is_none() {
        log::error!("template husk-vmm pid {} did not die after SIGKILL", vm.pid());
    }
    drop(ns);
    if let Some(s) = shared {
        if let Err(e) = s.stop() {
            log::warn!("template: stopping its virtiofsd: {}", crate::error::chain(&e));
        }
    }
    if saved.is_ok() {
        log::info!("template of {shape:?} made in {:?}", t0.elapsed());
    }
    saved
}

fn save(cfg: &HuskConfig, vm: &Vm, work: &Path, text: &str) -> Result<PathBuf> {
    let timeout = Duration::from_secs(cfg.shim.boot_timeout_secs).min(TEMPLATE_BOOT_TIMEOUT);
    let agent = crate::agent::connect(vm, cfg.shim.agent_vsock_port, timeout, crate::agent::FirstCall::Check)?;
    drop(agent);
    std::thread::sleep(SETTLE);
    let api = VmmClient::new(work.join("api.sock")).with_timeout(Duration::from_secs(60));
    let snap = work.join("snap");
    std::fs::create_dir(&snap).map_err(io("create", &snap))?;
    let vmm = |op| move |source| ShimError::Vmm { op, source };
    let deadline = Instant::now() + SNAPSHOT_RETRY;
    loop {
        api.pause().map_err(vmm("pause the template VM"))?;
        match api.snapshot(&snap) {
            Ok(_) => break,
            // The agent connection just closed may still be open in the VMM for a moment.
            Err(e) if e.status() == Some(409) && Instant::now() < deadline => {
                log::debug!("template: snapshot refused for now: {e}");
                api.resume().map_err(vmm("resume the template VM"))?;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(vmm("save the template VM")(e)),
        }
    }
    let key = snap.join(KEY_FILE);
    std::fs::write(&key, text).map_err(io("write", &key))?;
    // A jailed VMM (another uid) reads the state and memory through read-only binds.
    for f in [super::STATE_FILE, super::MEMORY_FILE, KEY_FILE] {
        let p = snap.join(f);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).map_err(io("set the mode of", &p))?;
    }
    std::fs::set_permissions(&snap, std::fs::Permissions::from_mode(0o755)).map_err(io("set the mode of", &snap))?;
    Ok(snap)
}
