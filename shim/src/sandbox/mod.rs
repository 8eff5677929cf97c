//! The sandbox: one microVM per pod (a `ctr run` container is its own pod). It owns the VMM
//! process, the agent connection, the disk slots through which further containers' root
//! filesystems reach the running guest, the pod's host cgroup and the state directory.
//! Containers ([`crate::container`]) are its children.

pub mod cgroup;
pub mod sizing;
pub mod spec;
pub mod timeline;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk_config::api::{AttachDisk, Client as VmmClient, ClientError};
use husk_config::{Console, DiskConfig, FsConfig, HuskConfig, VmConfig, VsockConfig};
use husk_protocol::agent;
use husk_protocol::agent_ttrpc::AgentClient;
use husk_rootfs::BuiltImage;
use oci_spec::runtime::Spec;

use crate::error::{Result, ShimError};
use crate::jail::Jail;
use crate::network::{PodNetwork, TapFds};
use crate::sharedfs::{SharedFs, VirtiofsdConfig};
use crate::state::{ContainerInfo, StateDir, StateInfo};
use crate::vm::{Vm, VmError, VmPlan};
use cgroup::HostCgroup;
use sizing::VmSize;
use timeline::Timeline;

use crate::template::Shape;

/// How long the guest gets to power off before the VMM is killed.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The virtio-blk serial of the sandbox container's root disk (attached at boot).
pub const ROOTFS_DISK_ID: &str = "rootfs";
/// Guest CID.
const GUEST_CID: u32 = 3;
/// Timeout of one request to the VMM's control API.
const VMM_API_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a restored VM's API socket is tried until it answers.
const API_RETRY: Duration = Duration::from_millis(5);
/// Where the cgroup hierarchy is mounted on the host.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The virtio-fs tag of the pod's shared host files.
pub const SHARED_FS_TAG: &str = "husk-pod";

/// The kernel command line: husk's defaults, the agent port, then the configured extra.
pub fn kernel_cmdline(cfg: &HuskConfig) -> String {
    let mut c = format!("{} {}={}", husk_config::vm::DEFAULT_CMDLINE, husk_protocol::AGENT_PORT_CMDLINE_KEY, cfg.shim.agent_vsock_port);
    if cfg.vm.free_page_reporting {
        // The agent sets it once the kernel's balloon driver is up (Linux 6.1 overwrites its own
        // page_reporting.page_reporting_order= when the driver registers).
        c.push_str(&format!(" {}={}", husk_protocol::PAGE_REPORTING_ORDER_CMDLINE_KEY, cfg.vm.page_reporting_order));
    }
    if !cfg.vm.cmdline.trim().is_empty() {
        c.push(' ');
        c.push_str(cfg.vm.cmdline.trim());
    }
    c
}

/// Where a VM's console log and sockets go.
#[derive(Debug, Clone)]
pub struct VmFiles {
    /// The console log.
    pub console: PathBuf,
    /// The control API socket.
    pub api_sock: PathBuf,
    /// The hybrid vsock socket.
    pub vsock: PathBuf,
}

/// The VM configuration every husk VM of `size` starts from (a pod's, a template's): husk's
/// kernel, initramfs and command line, `disk_slots` empty slots, vsock to the agent, free page
/// reporting as `[vm]` says; disks, taps and shares are added by the caller.
pub fn vm_config(cfg: &HuskConfig, size: VmSize, disk_slots: u32, files: VmFiles) -> VmConfig {
    VmConfig {
        kernel: cfg.vm.kernel.clone(),
        initrd: Some(cfg.vm.initramfs.clone()),
        cmdline: kernel_cmdline(cfg),
        vcpus: size.vcpus,
        memory: size.memory,
        console: Console::File(files.console),
        api_sock: Some(files.api_sock),
        disk: Vec::new(),
        disk_slots,
        vsock: Some(VsockConfig { cid: GUEST_CID, uds: files.vsock }),
        free_page_reporting: cfg.vm.free_page_reporting,
        ..Default::default()
    }
}

/// What a new sandbox is made of.
pub struct Boot<'a> {
    /// containerd namespace.
    pub namespace: &'a str,
    /// The sandbox container's id.
    pub id: &'a str,
    /// Its bundle.
    pub bundle: &'a Path,
    /// Its spec (annotations size the VM; `linux.cgroupsPath` is the pod's cgroup).
    pub spec: &'a Spec,
    /// Its root filesystem image (the VM's boot disk).
    pub rootfs: &'a BuiltImage,
    /// Whether a virtiofsd serves the pod's shared host files.
    pub share_host_files: bool,
    /// The pod's network as set up in its namespace, with the taps for the VMM.
    pub network: Option<(PodNetwork, TapFds)>,
    /// The create's timeline (each step of the boot is logged on it).
    pub timeline: &'a mut Timeline,
}

/// A disk slot lent to a container for its root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLease {
    /// The slot's API name (`slot3`).
    pub slot: String,
    /// The serial the guest sees for this attachment (unique within the VM's life, so the
    /// agent never mistakes an earlier image in the same slot for this one).
    pub serial: String,
}

#[derive(Debug, Default)]
struct Slots {
    /// Container using each slot.
    used: Vec<Option<String>>,
    /// Attachments so far.
    generation: u64,
}

/// One pod's VM and what belongs to it.
pub struct Sandbox {
    /// Sandbox id (the sandbox container's id).
    pub id: String,
    /// containerd namespace.
    pub namespace: String,
    /// The configuration the sandbox was created with.
    pub cfg: HuskConfig,
    /// The VMM.
    pub vm: Vm,
    /// Client of the agent in the guest.
    pub agent: AgentClient,
    /// Client of the VMM's control API.
    pub vmm: VmmClient,
    /// The state directory.
    pub state: StateDir,
    /// Set while the shim itself stops the VM (its exit is then expected).
    pub stopping: AtomicBool,
    cgroup: Option<HostCgroup>,
    shared: Mutex<Option<SharedFs>>,
    network: Mutex<Option<PodNetwork>>,
    slots: Mutex<Slots>,
    info: Mutex<StateInfo>,
    init_pid: AtomicU32,
    /// The virtio-blk serial of the sandbox container's root disk: [`ROOTFS_DISK_ID`] for the
    /// boot disk, a slot attachment's serial in a restored VM.
    pub root_serial: String,
}

/// Takes a free slot of `slots` for container `cid` of pod `pod`: its index and the serial
/// of this attachment.
fn reserve_slot(slots: &Mutex<Slots>, pod: &str, cid: &str) -> Result<(usize, String)> {
    let mut s = slots.lock().unwrap_or_else(|p| p.into_inner());
    let Some(index) = s.used.iter().position(Option::is_none) else {
        return Err(ShimError::FailedPrecondition(format!(
            "pod {pod} has no free disk slot for container {cid}: all {} are in use ([vm] disk_slots)",
            s.used.len()
        )));
    };
    s.used[index] = Some(cid.to_string());
    s.generation += 1;
    Ok((index, format!("s{index}g{}", s.generation)))
}

fn free_slot(slots: &Mutex<Slots>, index: usize) {
    let mut s = slots.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(slot) = s.used.get_mut(index) {
        *slot = None;
    }
}

/// Attaches `image` to the reserved slot `(index, serial)` through `put` (the VMM's `PUT
/// /vm/disks/<slot>` with the image's descriptor); frees the slot when that fails.
fn attach_to_slot(
    vmm: &VmmClient,
    slots: &Mutex<Slots>,
    pod: &str,
    cid: &str,
    image: &BuiltImage,
    (index, serial): (usize, String),
    put: impl Fn(&VmmClient, &str, &AttachDisk, std::os::fd::BorrowedFd<'_>) -> std::result::Result<husk_config::api::DiskInfo, ClientError>,
) -> Result<SlotLease> {
    let slot = husk_config::vm::slot_name(index as u32);
    let req = AttachDisk { path: image.path.clone(), id: serial.clone(), read_only: image.read_only };
    // Opened here and passed with the request: a jailed VMM cannot open host paths.
    let opened = std::fs::OpenOptions::new().read(true).write(!image.read_only).open(&image.path);
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            free_slot(slots, index);
            return Err(ShimError::io("open the root disk image", &image.path, e));
        }
    };
    if let Err(e) = put(vmm, &slot, &req, file.as_fd()) {
        free_slot(slots, index);
        return Err(ShimError::Vmm { op: "attach a root disk", source: e });
    }
    log::info!("sandbox {pod}: {cid}'s root disk {:?} on {slot} as {serial}", image.path);
    Ok(SlotLease { slot, serial })
}

/// Attaches the sandbox container's root disk `rootfs` (container `id`) to a slot of the VM
/// just restored from a template, as soon as its API socket answers (it is bound when the
/// vCPUs run), within `timeout`; fails at once when the VMM exits meanwhile.
fn attach_at_restore(vm: &Vm, vmm: &VmmClient, slots: &Mutex<Slots>, id: &str, rootfs: &BuiltImage, timeout: Duration) -> Result<SlotLease> {
    let deadline = std::time::Instant::now() + timeout;
    let exit = vm.exit_watch();
    let reserved = reserve_slot(slots, id, id)?;
    attach_to_slot(vmm, slots, id, id, rootfs, reserved, |vmm, slot, req, fd| loop {
        match vmm.attach_disk_fd(slot, req, fd) {
            // Not listening yet: nothing was sent, so trying again is safe.
            Err(ClientError::Connect { .. }) if exit.get().is_none() && std::time::Instant::now() < deadline => {
                exit.wait(Some(API_RETRY));
            }
            other => return other,
        }
    })
    .map_err(|e| match exit.get() {
        Some(st) => VmError::ExitedDuringBoot { status: st.to_string(), reason: vm.exit_reason() }.into(),
        None => e,
    })
}

fn check_kvm() -> Result<()> {
    const KVM_DEVICE: &str = "/dev/kvm";
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
        .map(drop)
        .map_err(|source| VmError::KvmUnavailable { path: KVM_DEVICE.into(), source }.into())
}

impl Sandbox {
    /// The VM plan of a sandbox: its size, the sandbox container's root disk, empty disk slots
    /// for the pod's other containers, vsock to the agent, free page reporting as `[vm]` says,
    /// the console into the state dir, the connection to the pod's virtiofsd (inherited), the
    /// jail. With `template`, the VM is restored from it: no boot disk (the sandbox's root disk
    /// goes into a slot once the guest runs), the template's slot count.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        cfg: &HuskConfig,
        state: &StateDir,
        size: VmSize,
        rootfs: &BuiltImage,
        cgroup: Option<&HostCgroup>,
        shared: Option<&SharedFs>,
        jail: Option<Arc<Jail>>,
        template: Option<&Path>,
    ) -> Result<VmPlan> {
        let slots = if template.is_some() { crate::template::disk_slots(cfg) } else { cfg.vm.disk_slots };
        let config = vm_config(cfg, size, slots, VmFiles { console: state.console_log(), api_sock: state.api_sock(), vsock: state.vsock() });
        let mut plan = VmPlan {
            vmm: cfg.shim.vmm.clone(),
            config,
            config_file: state.vm_config(),
            vmm_log: state.vmm_log(),
            work_dir: state.path().to_path_buf(),
            cgroup_procs: cgroup.map(HostCgroup::procs_files).unwrap_or_default(),
            fds: Vec::new(),
            jail,
            restore: template.map(Path::to_path_buf),
        };
        if template.is_none() {
            // The boot disk is opened here and inherited: a jailed VMM's uid may not open the
            // image (a cached one is the shim's, readable by root only), as with slot attaches.
            let image = std::fs::OpenOptions::new()
                .read(true)
                .write(!rootfs.read_only)
                .open(&rootfs.path)
                .map_err(|e| ShimError::io("open the root disk image", &rootfs.path, e))?;
            let fd = plan.inherit(image.into(), "root disk image");
            plan.config.disk.push(DiskConfig { path: rootfs.path.clone(), id: Some(ROOTFS_DISK_ID.into()), read_only: rootfs.read_only, fd: Some(fd) });
        }
        if let Some(socket) = shared.and_then(SharedFs::socket) {
            // The VMM gets the connection: a jailed one cannot reach virtiofsd's socket.
            let conn = crate::jail::connect_unix(socket).map_err(|e| ShimError::io("connect to virtiofsd at", socket, e))?;
            let fd = plan.inherit(conn.into(), "virtio-fs connection");
            plan.config.fs.push(FsConfig { tag: SHARED_FS_TAG.into(), socket: socket.to_path_buf(), fd: Some(fd) });
        }
        Ok(plan)
    }

    /// Starts the pod's VM with the sandbox container's root filesystem `rootfs` and waits for
    /// its agent. `spec` is the sandbox container's: its annotations size the VM, its
    /// `linux.cgroupsPath` is the pod's cgroup. On failure nothing of it is left (the state
    /// directory belongs to the caller). With `share_host_files`, a virtiofsd serves the pod's
    /// shared directory to the guest.
    pub fn boot(b: Boot<'_>, cfg: HuskConfig, state: StateDir) -> Result<Sandbox> {
        let Boot { namespace, id, bundle, spec, rootfs, share_host_files, network, timeline } = b;
        let (mut network, taps) = network.map_or((None, None), |(n, t)| (Some(n), Some(t)));
        let annotations = spec.annotations().clone().unwrap_or_default();
        let size = sizing::vm_size(&annotations, &cfg.vm)?;
        check_kvm()?;
        let template = match cfg.vm.templates {
            true => {
                let shape =
                    Shape { vcpus: size.vcpus, memory: size.memory, nics: network.as_ref().map_or(0, PodNetwork::tap_count), shared_fs: share_host_files };
                let found = crate::template::find(&cfg, &shape);
                found.or_else(|| match crate::template::make(&cfg, &shape) {
                    Ok(made) => made,
                    Err(e) => {
                        log::warn!("sandbox {id}: no template of {shape:?}, booting: {}", crate::error::chain(&e));
                        None
                    }
                })
            }
            false => None,
        };
        if let (Some(n), Some(_)) = (network.as_mut(), &template) {
            n.set_guest_macs(crate::template::guest_mac);
        }
        timeline.step(if template.is_some() { "template" } else { "no template" });
        let cgroup = match spec.linux().as_ref().and_then(|l| l.cgroups_path().as_ref()) {
            Some(p) => Some(HostCgroup::create(Path::new(CGROUP_ROOT), &p.to_string_lossy())?),
            None => None,
        };
        timeline.step("cgroup");
        let shared = if share_host_files {
            let vcfg = VirtiofsdConfig { binary: cfg.shim.virtiofsd.clone(), ..Default::default() };
            match SharedFs::start(state.path(), &vcfg) {
                Ok(s) => Some(s),
                Err(e) => {
                    if let Some(cg) = &cgroup {
                        cg.remove();
                    }
                    crate::network::teardown_after_failure(network.as_ref());
                    return Err(ShimError::SharedFs { op: "start the pod's shared file system", source: e });
                }
            }
        } else {
            None
        };
        timeline.step("virtiofsd");
        let jail = match cfg.jail.enabled {
            true => Jail::prepare(&cfg.jail, &crate::jail::uid_locks(&cfg.shim.state_dir), &state.jail_root(), &cfg.shim.vmm)
                .map(|j| Some(Arc::new(j)))
                .map_err(|e| ShimError::from(VmError::from(e))),
            false => Ok(None),
        };
        timeline.step("jail");
        let mut plan = jail.and_then(|jail| Self::plan(&cfg, &state, size, rootfs, cgroup.as_ref(), shared.as_ref(), jail, template.as_deref()));
        if let (Ok(plan), Some(n), Some(t)) = (&mut plan, &network, taps) {
            // The plan holds the taps now; the VMM inherits them and the shim's copies close.
            n.add_to(plan, t);
        }
        // Undoes what was started when a later step fails.
        let mut shared = Some(shared);
        let mut undo = |vm: Option<&Vm>| {
            crate::network::teardown_after_failure(network.as_ref());
            if let Some(vm) = vm {
                if vm.kill(SHUTDOWN_TIMEOUT).is_none() {
                    log::error!("husk-vmm pid {} did not die after SIGKILL", vm.pid());
                }
            }
            if let Some(Some(fs)) = shared.take() {
                if let Err(e) = fs.stop() {
                    log::error!("stopping the shared file system after a failed start: {}", crate::error::chain(&e));
                }
            }
            if let Some(cg) = &cgroup {
                cg.remove();
            }
        };
        let mut info = StateInfo {
            id: id.into(),
            namespace: namespace.into(),
            bundle: bundle.to_path_buf(),
            shim_pid: std::process::id(),
            vmm_pid: 0,
            vcpus: size.vcpus,
            memory_mib: size.memory.mib(),
            created_unix: crate::container::now().seconds.max(0) as u64,
            containers: vec![ContainerInfo {
                id: id.into(),
                bundle: bundle.to_path_buf(),
                slot: String::new(),
                image: rootfs.path.clone(),
                image_cached: rootfs.cache_key.is_some(),
            }],
        };
        let vm = match plan.and_then(|plan| state.write_info(&info).and_then(|()| Vm::spawn(plan).map_err(ShimError::from))) {
            Ok(vm) => vm,
            Err(e) => {
                undo(None);
                return Err(e);
            }
        };
        info.vmm_pid = vm.pid();
        timeline.step("plan and VMM spawn");
        let vmm = VmmClient::new(state.api_sock()).with_timeout(VMM_API_TIMEOUT);
        let slot_count = if template.is_some() { crate::template::disk_slots(&cfg) } else { cfg.vm.disk_slots };
        let slots = Mutex::new(Slots { used: vec![None; slot_count as usize], generation: 0 });
        // A restored VM has no boot disk: the sandbox container's root disk goes into a slot as
        // soon as the VMM's API answers, while the shim connects to the agent, so that the
        // guest takes the attachment in meanwhile, not when the container is created.
        let boot_timeout = Duration::from_secs(cfg.shim.boot_timeout_secs);
        let (attached, connected) = std::thread::scope(|s| {
            let attach = template.as_ref().map(|_| s.spawn(|| attach_at_restore(&vm, &vmm, &slots, id, rootfs, boot_timeout)));
            // A restored guest's first call sets its clock and reseeds its random numbers.
            let first = if template.is_some() { crate::agent::FirstCall::SyncAfterRestore } else { crate::agent::FirstCall::Check };
            let connected = state.write_info(&info).and_then(|()| crate::agent::connect(&vm, cfg.shim.agent_vsock_port, boot_timeout, first));
            let attached = match attach.map(std::thread::ScopedJoinHandle::join) {
                Some(Ok(r)) => r.map(|lease| lease.serial),
                Some(Err(_)) => Err(ShimError::FailedPrecondition(format!("sandbox {id}: attaching the root disk panicked"))),
                None => Ok(ROOTFS_DISK_ID.to_string()),
            };
            (attached, connected)
        });
        let agent = match connected {
            Ok(a) => a,
            Err(e) => {
                undo(Some(&vm));
                if let Some(t) = &template {
                    // A template this host cannot restore is made again by the next pod.
                    log::error!("sandbox {id}: the VM restored from {t:?} did not come up; removing the template");
                    if let Err(r) = std::fs::remove_dir_all(t) {
                        log::error!("removing template {t:?}: {r}");
                    }
                }
                return Err(e);
            }
        };
        let root_serial = match attached {
            Ok(serial) => serial,
            Err(e) => {
                undo(Some(&vm));
                return Err(e);
            }
        };
        timeline.step(if template.is_some() { "restore to agent ready (clock and entropy synced)" } else { "guest boot to agent ready" });
        let shared = shared.take().flatten();
        log::info!("sandbox {id}: husk-vmm pid {} with {} vCPUs, {} of memory, {} disk slots", vm.pid(), size.vcpus, size.memory, cfg.vm.disk_slots);
        Ok(Sandbox {
            id: id.into(),
            namespace: namespace.into(),
            vmm,
            cfg,
            vm,
            agent,
            state,
            stopping: AtomicBool::new(false),
            cgroup,
            shared: Mutex::new(shared),
            network: Mutex::new(network),
            slots,
            info: Mutex::new(info),
            init_pid: AtomicU32::new(0),
            root_serial,
        })
    }

    /// Gives the guest the pod's interfaces and routes (after the sandbox container exists).
    pub fn configure_network(&self) -> Result<()> {
        let network = self.network.lock().unwrap_or_else(|p| p.into_inner());
        match network.as_ref() {
            Some(n) => crate::network::configure_guest(&self.agent, crate::agent::short, n.endpoints())
                .map_err(|source| ShimError::Network { op: "configure the pod's network in the guest", source }),
            None => Ok(()),
        }
    }

    /// Connects the interfaces that appeared in the pod's namespace since Create (`ctr run
    /// --cni` runs CNI between Create and Start) and gives them to the guest.
    pub fn attach_late_network(&self) -> Result<()> {
        let mut network = self.network.lock().unwrap_or_else(|p| p.into_inner());
        let Some(n) = network.as_mut() else { return Ok(()) };
        let op = "connect the pod's network at start";
        let new = n.attach_late().map_err(|source| ShimError::Network { op, source })?;
        crate::network::configure_guest(&self.agent, crate::agent::short, &new).map_err(|source| ShimError::Network { op, source })
    }

    /// The host process standing for the pod in its network namespace, if the shim made one.
    pub fn host_pid(&self) -> Option<u32> {
        self.network.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(PodNetwork::host_pid)
    }

    /// The virtio-fs tag the guest mounts the pod's shared files from ("" without them).
    pub fn shared_fs_tag(&self) -> &'static str {
        if self.shared.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            SHARED_FS_TAG
        } else {
            ""
        }
    }

    /// Shares the host path `source` with the guest; returns its path in the guest.
    pub fn share(&self, source: &Path, read_only: bool) -> Result<(String, PathBuf)> {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fs) = shared.as_mut() else {
            return Err(ShimError::invalid(
                "mounts",
                format!("bind mount of host path {source:?}: pod {} shares no host files (its sandbox was created without them)", self.id),
            ));
        };
        let name = fs.share(source, read_only).map_err(|e| ShimError::SharedFs { op: "share a host path", source: e })?;
        let guest = Path::new(husk_protocol::POD_SHARED_DIR).join(&name);
        Ok((name, guest))
    }

    /// Stops sharing `name` (its container is gone). Errors are logged.
    pub fn unshare(&self, name: &str) {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fs) = shared.as_mut() {
            if let Err(e) = fs.unshare(name) {
                log::warn!("pod {}: {}", self.id, crate::error::chain(&e));
            }
        }
    }

    /// The guest pid of the sandbox container's init (what containerd writes into the
    /// namespace paths of the pod's other containers); 0 before it exists.
    pub fn init_pid(&self) -> u32 {
        self.init_pid.load(Ordering::SeqCst)
    }

    /// Records the sandbox container's init pid.
    pub fn set_init_pid(&self, pid: u32) {
        self.init_pid.store(pid, Ordering::SeqCst);
    }

    /// Attaches `image` to a free disk slot of the running VM for container `cid`.
    pub fn attach_rootfs(&self, cid: &str, image: &BuiltImage) -> Result<SlotLease> {
        let (index, serial) = reserve_slot(&self.slots, &self.id, cid)?;
        attach_to_slot(&self.vmm, &self.slots, &self.id, cid, image, (index, serial), |vmm, slot, req, fd| vmm.attach_disk_fd(slot, req, fd))
    }

    /// Detaches a container's root disk (the guest has unmounted it) and frees the slot.
    pub fn detach_rootfs(&self, lease: &SlotLease) -> Result<()> {
        let index = lease.slot.strip_prefix("slot").and_then(|n| n.parse::<usize>().ok());
        let r = self.vmm.detach_disk(&lease.slot).map(drop).map_err(|source| ShimError::Vmm { op: "detach a root disk", source });
        // A slot the VMM could not detach stays taken: another image must not go there.
        if r.is_ok() {
            if let Some(i) = index {
                self.free_slot(i);
            }
        }
        r
    }

    fn free_slot(&self, index: usize) {
        free_slot(&self.slots, index);
    }

    /// Records a container of the sandbox in `state.json`.
    pub fn record(&self, c: ContainerInfo) {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        info.containers.retain(|x| x.id != c.id);
        info.containers.push(c);
        if let Err(e) = self.state.write_info(&info) {
            log::warn!("{}", crate::error::chain(&e));
        }
    }

    /// Forgets a container in `state.json`.
    pub fn forget(&self, cid: &str) {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        info.containers.retain(|x| x.id != cid);
        if let Err(e) = self.state.write_info(&info) {
            log::warn!("{}", crate::error::chain(&e));
        }
    }

    /// The directory of a container of this sandbox (not the sandbox container).
    pub fn container_dir(&self, cid: &str) -> PathBuf {
        self.state.container_dir(cid)
    }

    /// Whether the VMM still runs.
    pub fn running(&self) -> bool {
        self.vm.exit_watch().get().is_none()
    }

    /// Kills the VMM at once (a guest that does not answer); waits until it is reaped.
    pub fn kill_vm(&self) {
        if self.vm.kill(SHUTDOWN_TIMEOUT).is_none() {
            log::error!("husk-vmm pid {} did not die after SIGKILL", self.vm.pid());
        }
    }

    /// Stops the VM (the agent powers it off; SIGKILL if it does not within the timeout) and
    /// removes the host side: cgroup, state directory (uncached images included).
    pub fn destroy(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut t = Timeline::ending(format!("sandbox {}", self.id), "destroyed");
        if self.running() {
            let ctx = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
            if let Err(e) = self.agent.shutdown(ctx, &agent::ShutdownRequest::new()) {
                log::debug!("agent Shutdown of sandbox {}: {e}", self.id);
            }
            if self.vm.exit_watch().wait(Some(SHUTDOWN_TIMEOUT)).is_none() {
                log::warn!("VM of sandbox {} did not power off within {SHUTDOWN_TIMEOUT:?}; killing husk-vmm", self.id);
                self.kill_vm();
            }
            t.step("vm power-off");
        }
        if let Some(fs) = self.shared.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if let Err(e) = fs.stop() {
                log::error!("pod {}: stopping the shared file system: {}", self.id, crate::error::chain(&e));
            }
            t.step("virtiofsd");
        }
        let bundle = self.info.lock().unwrap_or_else(|p| p.into_inner()).bundle.clone();
        crate::hooks::run_poststop(&bundle, &self.id, self.host_pid().unwrap_or(std::process::id()));
        t.step("poststop hooks");
        if let Some(n) = self.network.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if let Err(e) = n.teardown() {
                log::error!("pod {}: removing its taps and tc filters: {}", self.id, crate::error::chain(&e));
            }
            t.step("network");
        }
        if let Some(cg) = &self.cgroup {
            cg.remove();
        }
        // The VMM is gone: its uid is free for another sandbox.
        if let Some(j) = &self.vm.plan().jail {
            j.release();
        }
        if let Err(e) = self.state.remove() {
            log::error!("{}", crate::error::chain(&e));
        }
        t.step("cgroup and state");
        t.finish();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A state directory, a root disk image and the default size.
    fn fixture() -> (tempfile::TempDir, StateDir, BuiltImage, VmSize) {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir::create(root.path(), "default", "pod").unwrap();
        let image = root.path().join("root.img");
        std::fs::write(&image, [0u8; 512]).unwrap();
        let rootfs =
            BuiltImage { path: image, fstype: husk_rootfs::FsType::Ext4, read_only: true, from_cache: false, bytes_written: 0, cache_key: None, lease: None };
        (root, state, rootfs, VmSize { vcpus: 1, memory: husk_config::MemSize(256 << 20) })
    }

    #[test]
    fn the_plan_asks_for_free_page_reporting_as_the_vm_section_says() {
        let (_root, state, rootfs, size) = fixture();
        let mut cfg = HuskConfig::default();
        let plan = Sandbox::plan(&cfg, &state, size, &rootfs, None, None, None, None).unwrap();
        assert!(plan.config.free_page_reporting, "on by default");
        // The agent gets the configured reporting order on the kernel command line.
        assert!(plan.config.cmdline.split_whitespace().any(|w| w == "husk.page_reporting_order=5"), "{}", plan.config.cmdline);
        // The root disk, the slots, vsock and the balloon all get an interrupt line.
        assert_eq!(plan.config.virtio_device_count(), 1 + cfg.vm.disk_slots as usize + 1 + 1);
        cfg.vm.page_reporting_order = 3;
        let plan = Sandbox::plan(&cfg, &state, size, &rootfs, None, None, None, None).unwrap();
        assert!(plan.config.cmdline.split_whitespace().any(|w| w == "husk.page_reporting_order=3"), "{}", plan.config.cmdline);
        cfg.vm.free_page_reporting = false;
        let plan = Sandbox::plan(&cfg, &state, size, &rootfs, None, None, None, None).unwrap();
        assert!(!plan.config.free_page_reporting);
        assert!(!plan.config.cmdline.contains("husk.page_reporting_order"), "{}", plan.config.cmdline);
    }

    #[test]
    fn a_restored_plan_has_no_boot_disk_and_as_many_block_devices_in_slots() {
        let (root, state, rootfs, size) = fixture();
        let cfg = HuskConfig::default();
        let booted = Sandbox::plan(&cfg, &state, size, &rootfs, None, None, None, None).unwrap();
        let tpl = root.path().join("tpl");
        let restored = Sandbox::plan(&cfg, &state, size, &rootfs, None, None, None, Some(&tpl)).unwrap();
        assert!(restored.config.disk.is_empty() && restored.fds.is_empty(), "the root disk goes into a slot later");
        assert_eq!(restored.config.disk_slots, crate::template::disk_slots(&cfg));
        assert_eq!(restored.config.virtio_device_count(), booted.config.virtio_device_count());
        assert_eq!(restored.restore.as_deref(), Some(tpl.as_path()));
        assert_eq!(booted.restore, None);
    }
}
