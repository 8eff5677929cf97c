//! The jail of husk-vmm, built by the shim when it starts the VMM (like Firecracker's jailer,
//! without a setuid helper): a guest that escapes the VMM lands in an unprivileged process
//! that sees almost nothing of the host.
//!
//! - **Identity**: a uid of `[jail] uid_first .. + uid_count`, one per sandbox, held by a lock
//!   ([`uid`]) so concurrent shims never share one; the gid is the same number and there are
//!   no supplementary groups. No two VMMs share a uid, so one cannot signal, ptrace or read
//!   the files of another, and RLIMIT_NPROC counts exactly one VMM's threads.
//! - **Files**: its root is `<state>/jail` (bind-mounted onto itself read-only in the VMM's
//!   own mount namespace, then `pivot_root`), holding only bind mounts of husk-vmm and, when it
//!   is dynamically linked, its loader and libraries ([`elf`]); the guest kernel and initrd
//!   (`/boot`), the boot disks (`/disks/N`, read-only unless the disk is writable); a private
//!   read-only tmpfs on `/dev` with the `kvm` node, owned by the VMM's uid; `vm.toml`; and
//!   `/run`, the only writable place, owned by the VMM's uid (mode 0700): its API and vsock
//!   sockets and the console log, which the shim reaches at `<state>/jail/run/`. Everything
//!   else it uses comes as a descriptor: taps, the virtio-fs connection, images attached to
//!   disk slots later (microvm/API.md).
//! - **Namespaces**: new mount, PID (husk-vmm is its PID 1) and IPC namespaces; the mounts live
//!   only in its mount namespace, so nothing is left mounted on the host when it ends.
//! - **Limits**: RLIMIT_NOFILE (`[jail] max_open_files`), RLIMIT_NPROC (its vCPU, disk and
//!   device threads plus a margin), no core dumps, no_new_privs, its own session; it joins the
//!   pod's cgroup before anything else, and dies with the shim (parent-death signal).
//!
//! The shim must be root (containerd runs it so). `husk check` builds a jail and runs
//! `husk-vmm --version` in it ([`probe`]).

pub mod elf;
pub mod probe;
pub mod spawn;
pub mod uid;

#[cfg(test)]
mod tests;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use husk_config::{Console, JailConfig, VmConfig};

pub use spawn::{dev_null, host_path, spawn, Bind, Confinement, DeviceNode, Launch, Rlimit};
pub use uid::UidLease;

/// Why a jail could not be built or entered.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// Every uid of the range is held by a running sandbox.
    #[error("no free uid for husk-vmm: uids {first} and the {} after it (jail.uid_first, jail.uid_count) are all held by running sandboxes (locks in {locks:?})", count.saturating_sub(1))]
    NoFreeUid {
        /// First uid of the range.
        first: u32,
        /// Uids in the range.
        count: usize,
        /// The lock directory.
        locks: PathBuf,
    },
    /// A file operation of the jail failed.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A program cannot be run in the jail (its ELF headers or libraries).
    #[error("{path:?} cannot be run in the jail: {reason}")]
    Elf {
        /// The program or library.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A value the jail cannot use.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What it is.
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// Something of the VM configuration that a jailed VMM cannot be given.
    #[error("a jailed husk-vmm cannot use {what}: {reason}")]
    Unsupported {
        /// The configuration item.
        what: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The child could not be created.
    #[error("cannot {what} for husk-vmm")]
    Clone {
        /// The step.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A step of confining the child failed before its exec.
    #[error("cannot start husk-vmm in its jail: {step} failed")]
    Setup {
        /// The step (what it did, on which path or value).
        step: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// Where the jail's root holds each kind of file.
const PROGRAM_DIR: &str = "/";
const KERNEL: &str = "/boot/kernel";
const INITRD: &str = "/boot/initrd";
const DISKS: &str = "/disks";
/// The writable directory, relative to the root.
pub const RUN_DIR: &str = "run";
/// Threads of husk-vmm besides one per vCPU and one per disk: main, event loop, API, vsock
/// connector, and a margin for the runtime.
const EXTRA_THREADS: u64 = 8;

/// One sandbox's jail: its uid and its root directory on the host.
#[derive(Debug)]
pub struct Jail {
    lease: std::sync::Mutex<Option<UidLease>>,
    uid: u32,
    root: PathBuf,
    /// husk-vmm and its loader and libraries.
    program: Vec<Bind>,
    kvm: DeviceNode,
    max_open_files: u64,
}

/// The VM configuration as the jailed husk-vmm sees it, and what the jail binds for it.
#[derive(Debug)]
pub struct Confined {
    /// Paths inside the jail.
    pub config: VmConfig,
    /// The host files of the configuration (kernel, initrd, disks).
    pub binds: Vec<Bind>,
    /// RLIMIT_NPROC for this VM.
    pub threads: u64,
}

pub(crate) fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JailError + 'a {
    move |source| JailError::Io { op, path: path.to_path_buf(), source }
}

impl Jail {
    /// Builds the jail of a sandbox in `root` (`<state>/jail`) for the husk-vmm binary `vmm`:
    /// takes a uid of `cfg`'s range (its lock in `locks`), makes the root (mode 0755), its
    /// writable `run` directory (the uid's, mode 0700) and `dev`, and the placeholders of the
    /// program, its loader and libraries. Errors name the path or value; the uid is released
    /// when the jail is dropped.
    pub fn prepare(cfg: &JailConfig, locks: &Path, root: &Path, vmm: &Path) -> Result<Jail, JailError> {
        let kvm = std::fs::metadata("/dev/kvm").map_err(io("stat", Path::new("/dev/kvm")))?;
        if !kvm.file_type().is_char_device() {
            return Err(JailError::Invalid { what: "device", value: "/dev/kvm".into(), reason: "not a character device".into() });
        }
        let lease = UidLease::acquire(locks, cfg.uids())?;
        let name = vmm.file_name().ok_or_else(|| JailError::Invalid { what: "shim.vmm", value: vmm.display().to_string(), reason: "names no file".into() })?;
        let mut program = vec![Bind {
            source: vmm.canonicalize().map_err(io("resolve", vmm))?,
            inside: Path::new(PROGRAM_DIR).join(name),
            writable: false,
            exec: true,
            device: false,
        }];
        for n in elf::needed_files(vmm)? {
            program.push(Bind { source: n.source, inside: n.inside, writable: false, exec: true, device: false });
        }
        let jail = Jail {
            uid: lease.uid(),
            lease: std::sync::Mutex::new(Some(lease)),
            root: root.to_path_buf(),
            program,
            kvm: DeviceNode { name: "kvm".into(), rdev: kvm.rdev() },
            max_open_files: cfg.max_open_files,
        };
        jail.make_dir(Path::new("/"), 0o755)?;
        jail.make_dir(Path::new("/dev"), 0o755)?;
        let run = jail.run_dir();
        jail.make_dir(&Path::new("/").join(RUN_DIR), 0o700)?;
        std::os::unix::fs::chown(&run, Some(jail.uid()), Some(jail.uid())).map_err(io("give the jail's run directory to its uid", &run))?;
        for b in &jail.program {
            jail.placeholder(&b.inside)?;
        }
        Ok(jail)
    }

    /// The VMM's uid (and gid).
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Gives the uid back (once the VMM is gone; dropping the jail does too).
    pub fn release(&self) {
        drop(self.lease.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// The jail's root on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The writable directory on the host (`<root>/run`), where the VMM's sockets and
    /// console log appear.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join(RUN_DIR)
    }

    /// husk-vmm's path inside the jail.
    pub fn program(&self) -> &Path {
        &self.program[0].inside
    }

    /// The path inside the jail of `host`, a path below the root.
    pub fn inside(&self, host: &Path) -> Option<PathBuf> {
        host.strip_prefix(&self.root).ok().map(|rel| Path::new("/").join(rel))
    }

    fn make_dir(&self, inside: &Path, mode: u32) -> Result<(), JailError> {
        let p = host_path(&self.root, inside);
        std::fs::create_dir_all(&p).map_err(io("create", &p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", &p))
    }

    /// An empty, read-only file at `inside` for a bind mount to cover.
    fn placeholder(&self, inside: &Path) -> Result<(), JailError> {
        let p = host_path(&self.root, inside);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        std::fs::write(&p, b"").map_err(io("create the placeholder", &p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).map_err(io("chmod", &p))
    }

    /// A read-only bind of the regular file `source` at `inside` (an absolute path in the
    /// jail), for a file the VMM only reads (a template's state and memory).
    pub fn bind_file(&self, source: &Path, inside: &str) -> Result<Bind, JailError> {
        self.bind(source, inside, false)
    }

    fn bind(&self, source: &Path, inside: &str, writable: bool) -> Result<Bind, JailError> {
        let md = std::fs::metadata(source).map_err(io("stat", source))?;
        let device = md.file_type().is_block_device();
        if !md.is_file() && !device {
            return Err(JailError::Invalid {
                what: "file for the jail",
                value: source.display().to_string(),
                reason: "not a regular file or block device".into(),
            });
        }
        self.placeholder(Path::new(inside))?;
        Ok(Bind { source: source.to_path_buf(), inside: inside.into(), writable, exec: false, device })
    }

    /// A host path the VMM creates (a socket, the console log): it must be in the run
    /// directory; `field` names the configuration item in the error.
    fn created(&self, field: &str, host: &Path) -> Result<PathBuf, JailError> {
        match host.strip_prefix(self.run_dir()) {
            Ok(rel) if !rel.as_os_str().is_empty() => Ok(Path::new("/").join(RUN_DIR).join(rel)),
            _ => Err(JailError::Unsupported {
                what: format!("{field} = {}", host.display()),
                reason: format!("the VMM's files must be in the jail's {}", self.run_dir().display()),
            }),
        }
    }

    /// `host` (the configuration the shim planned, with host paths) as husk-vmm sees it in
    /// the jail, and the binds that make it so. Taps and virtio-fs must come as inherited
    /// descriptors: the jail has neither /dev/net/tun nor the backend's socket.
    pub fn confine(&self, host: &VmConfig) -> Result<Confined, JailError> {
        let mut c = host.clone();
        let mut binds = vec![self.bind(&host.kernel, KERNEL, false)?];
        c.kernel = KERNEL.into();
        if let Some(initrd) = &host.initrd {
            binds.push(self.bind(initrd, INITRD, false)?);
            c.initrd = Some(INITRD.into());
        }
        for (i, d) in c.disk.iter_mut().enumerate() {
            let inside = format!("{DISKS}/{i}");
            // An image passed as a descriptor needs no bind (the path only names it).
            if d.fd.is_none() {
                binds.push(self.bind(&d.path, &inside, !d.read_only)?);
            }
            d.path = inside.into();
        }
        if let Console::File(p) = &host.console {
            c.console = Console::File(self.created("console", p)?);
        }
        if let Some(a) = &host.api_sock {
            c.api_sock = Some(self.created("api_sock", a)?);
        }
        if let (Some(v), Some(inside)) = (&host.vsock, c.vsock.as_mut()) {
            inside.uds = self.created("vsock.uds", &v.uds)?;
        }
        if let Some(n) = host.net.iter().find(|n| n.fd.is_none() || n.netns.is_some()) {
            return Err(JailError::Unsupported {
                what: format!("net device tap={}", n.tap),
                reason: "a jailed VMM cannot open taps: pass the open tap as a descriptor (net.fd)".into(),
            });
        }
        if let Some(f) = host.fs.iter().find(|f| f.fd.is_none()) {
            return Err(JailError::Unsupported {
                what: format!("fs device tag={}", f.tag),
                reason: "a jailed VMM cannot reach the backend's socket: pass a connection as a descriptor (fs.fd)".into(),
            });
        }
        let threads = u64::from(host.vcpus) + host.disk.len() as u64 + u64::from(host.disk_slots) + EXTRA_THREADS;
        Ok(Confined { config: c, binds, threads })
    }

    /// The confinement of husk-vmm with the program's binds and `binds` (a VM's, from
    /// [`Jail::confine`]), at most `threads` threads.
    pub fn confinement(&self, binds: &[Bind], threads: u64) -> Confinement {
        Confinement {
            root: self.root.clone(),
            writable: vec![Path::new("/").join(RUN_DIR)],
            binds: self.program.iter().chain(binds).cloned().collect(),
            devices: vec![self.kvm.clone()],
            uid: self.uid(),
            rlimits: vec![(Rlimit::OpenFiles, self.max_open_files), (Rlimit::Processes, threads), (Rlimit::CoreSize, 0)],
        }
    }
}

/// Connects to the unix socket `path`, retrying for a moment while nothing listens there yet
/// (a server binds its socket before it listens): for connections the VMM inherits.
pub fn connect_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    const RETRIES: u32 = 50;
    let mut tries = 0;
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < RETRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// The directory of the uid locks of every sandbox under the state root `state_dir`.
pub fn uid_locks(state_dir: &Path) -> PathBuf {
    state_dir.join("jail-uids")
}
