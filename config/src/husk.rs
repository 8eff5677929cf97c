//! `/etc/husk/config.toml`: the file the shim reads (`[vm]` defaults and `[shim]` settings).
//!
//! ```toml
//! [vm]
//! kernel = "/usr/local/share/husk/vmlinux"
//! initramfs = "/usr/local/share/husk/initramfs"
//! vcpus = 1               # a pod's VM: this plus the CPUs its containers' limits add up to
//! memory = "256M"         # a pod's VM: this plus the memory its containers' limits add up to
//! max_vcpus = 8           # a pod asking for more is refused
//! max_memory = "8G"
//! disk_slots = 8          # containers that can join a running pod's VM at once
//! free_page_reporting = true  # the guest gives memory it freed back to the host
//! page_reporting_order = 5    #   in free blocks of 2^5 pages (128 KiB) and larger
//! templates = true        # pod VMs restore a saved template VM instead of booting
//! cmdline = ""            # appended to husk's own kernel command line
//!
//! [shim]
//! vmm = "/usr/local/bin/husk-vmm"
//! state_dir = "/run/husk"
//! image_cache_dir = "/var/lib/husk/images"
//! template_dir = "/var/lib/husk/templates"  # template VMs ([vm] templates)
//! image_cache_max_bytes = "10G"  # least recently used images beyond this are removed
//! image_work_dir = "/var/lib/husk/work"  # containers' own (writable) images, on disk
//! agent_vsock_port = 1024
//! boot_timeout_secs = 30
//! virtiofsd = "/usr/local/libexec/husk/virtiofsd"
//! ignore_unsupported = ["process.apparmorProfile"]  # see UNSUPPORTED_OCI_FIELDS
//!
//! [jail]
//! enabled = true          # husk-vmm runs confined (own uid, chroot, namespaces, rlimits)
//! uid_first = 1879048192  # each sandbox's husk-vmm gets one uid (and the same gid) of
//! uid_count = 65536       #   uid_first .. uid_first + uid_count - 1
//! max_open_files = 4096   # RLIMIT_NOFILE of husk-vmm
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Result};
use crate::size::MemSize;
use crate::vm::{validate_memory, validate_vcpus, DEFAULT_INITRAMFS, DEFAULT_KERNEL};

/// Most disk slots a pod's VM may have: the VM's 19 virtio interrupt lines less the sandbox's
/// root disk, vsock, a network card and the shared filesystem. One less with
/// `free_page_reporting` (its balloon device takes a line).
pub const MAX_DISK_SLOTS: u32 = 15;

/// Largest `page_reporting_order` (Linux's MAX_ORDER - 1 on x86: 4 MiB blocks).
pub const MAX_PAGE_REPORTING_ORDER: u32 = 10;

/// OCI spec fields husk cannot honour in its guest: a container whose spec sets one is
/// refused, naming the field, unless `[shim] ignore_unsupported` lists it (then the shim logs
/// a warning and runs the container without it).
pub const UNSUPPORTED_OCI_FIELDS: &[&str] = &[
    "process.apparmorProfile",
    "process.selinuxLabel",
    "linux.mountLabel",
    "linux.uidMappings",
    "linux.gidMappings",
    "linux.namespaces.user",
    "linux.intelRdt",
];

/// Default location of the file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/husk/config.toml";
/// Environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_ENV: &str = "HUSK_CONFIG";

/// The whole file. Every section and field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HuskConfig {
    /// Defaults for every microVM the shim starts.
    #[serde(default)]
    pub vm: VmDefaults,
    /// The shim itself.
    #[serde(default)]
    pub shim: ShimConfig,
    /// How husk-vmm is confined.
    #[serde(default)]
    pub jail: JailConfig,
}

/// First uid (and gid) of the default range: just above the range systemd-nspawn allocates
/// container uids from (524288-1879048191, systemd's UIDS-GIDS.md) and far below 2^31, so no
/// login, system, dynamic or container user of a usual host owns one of them.
pub const DEFAULT_JAIL_UID_FIRST: u32 = 0x7000_0000;
/// Uids in the default range: concurrent sandboxes per host.
pub const DEFAULT_JAIL_UID_COUNT: u32 = 65536;

/// `[jail]`: the confinement of husk-vmm, built by the shim when it starts the VMM (like
/// Firecracker's jailer, without a setuid helper): one uid of the range per sandbox (its gid
/// is the same number), a chroot holding only the VMM's files, new mount, PID and IPC
/// namespaces, rlimits, no new privileges. The shim must run as root (containerd runs it so).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// Confine husk-vmm (turn off only to debug the VMM with host tools).
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// First uid of the range; each running sandbox holds one, and uses the same number as gid.
    #[serde(default = "d_uid_first")]
    pub uid_first: u32,
    /// Uids in the range: at most this many sandboxes run at once.
    #[serde(default = "d_uid_count")]
    pub uid_count: u32,
    /// RLIMIT_NOFILE of husk-vmm (vsock connections, disks and eventfds use descriptors).
    #[serde(default = "d_max_open_files")]
    pub max_open_files: u64,
}

/// `[vm]`: what each sandbox VM gets unless the container asks otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDefaults {
    /// Guest kernel (ELF vmlinux or bzImage).
    #[serde(default = "d_kernel")]
    pub kernel: PathBuf,
    /// Initramfs holding husk-agent as /init.
    #[serde(default = "d_initramfs")]
    pub initramfs: PathBuf,
    /// vCPUs per VM, 1 to 64.
    #[serde(default = "d_vcpus")]
    pub vcpus: u32,
    /// Guest RAM per VM (`256M`, `1G`, or MiB as a number).
    #[serde(default = "d_memory")]
    pub memory: MemSize,
    /// Most vCPUs a pod's VM may get (its base `vcpus` plus its containers' CPU limits).
    #[serde(default = "d_max_vcpus")]
    pub max_vcpus: u32,
    /// Most memory a pod's VM may get (its base `memory` plus its containers' memory limits).
    #[serde(default = "d_max_memory")]
    pub max_memory: MemSize,
    /// Disk slots of each VM: how many containers can join a running pod at once (each joining
    /// container's root filesystem takes one; a deleted container gives it back).
    #[serde(default = "d_disk_slots")]
    pub disk_slots: u32,
    /// Free page reporting: a virtio-balloon device through which the guest kernel reports
    /// memory it has freed (free 2 MiB blocks, starting 2 s after they were freed), and
    /// husk-vmm gives those pages back to the host. Without it, every page a guest ever
    /// touched stays resident on the host until the VM stops. Takes one of the VM's interrupt
    /// lines (so `disk_slots` may be at most 14 with it).
    #[serde(default = "d_true")]
    pub free_page_reporting: bool,
    /// With `free_page_reporting`: the smallest free block the guest reports, as an order
    /// (2^N pages of 4 KiB; 0 to 10). Linux alone reports only 2 MiB blocks, which leaves on the
    /// host what the guest kernel frees at boot in smaller pieces (measured: an idle VM keeps
    /// 32 MiB resident with 9, 25.5 MiB with 5, 3 or 0). Smaller blocks mean more reports,
    /// and more faults when the guest reuses reported memory. The guest's husk-agent sets it.
    #[serde(default = "d_page_reporting_order")]
    pub page_reporting_order: u32,
    /// Extra kernel command line, appended after husk's own.
    #[serde(default)]
    pub cmdline: String,
    /// Start pod VMs from templates: the first pod of a shape (vCPUs, memory, network
    /// interfaces, shared host files) first makes a template VM (booted up to its agent, then
    /// saved with husk-vmm's snapshot under `[shim] template_dir`), and every pod of that
    /// shape restores it instead of booting a kernel, each into its own copy of the memory. A
    /// template is remade when the kernel, initramfs, husk-vmm, the host kernel or this
    /// configuration change. On by default.
    #[serde(default = "d_true")]
    pub templates: bool,
}

/// `[shim]`: paths and timeouts of containerd-shim-husk-v2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimConfig {
    /// The husk-vmm binary.
    #[serde(default = "d_vmm")]
    pub vmm: PathBuf,
    /// Per-sandbox state (sockets, console log) goes to `<state_dir>/<sandbox-id>/`.
    #[serde(default = "d_state")]
    pub state_dir: PathBuf,
    /// Content-addressed cache of rootfs images built from read-only layers.
    #[serde(default = "d_cache")]
    pub image_cache_dir: PathBuf,
    /// Template VMs (`[vm] templates`), one directory per shape: the saved state and memory.
    #[serde(default = "d_templates")]
    pub template_dir: PathBuf,
    /// Most bytes (allocated on disk) the image cache keeps: after each build the least
    /// recently used images beyond it are removed, never one a running container uses.
    /// At least 64M; a running pod's images may hold the cache above it until they stop.
    #[serde(default = "d_cache_max")]
    pub image_cache_max_bytes: MemSize,
    /// Images that belong to one container (a writable rootfs, a snapshot it already wrote
    /// to, a `ctr run --rootfs` directory) go to `<image_work_dir>/<namespace>/<sandbox>/`:
    /// on disk, not in RAM under `state_dir` (a tmpfs). Removed with the container, and by
    /// the next shim start after a crash or reboot.
    #[serde(default = "d_work")]
    pub image_work_dir: PathBuf,
    /// Guest vsock port husk-agent listens on.
    #[serde(default = "d_port")]
    pub agent_vsock_port: u32,
    /// Seconds to wait for the agent to answer after starting the VM.
    #[serde(default = "d_timeout")]
    pub boot_timeout_secs: u64,
    /// The virtiofsd binary serving a pod's shared host files (volumes, CRI's /etc/hosts, ...).
    #[serde(default = "d_virtiofsd")]
    pub virtiofsd: PathBuf,
    /// Fields of [`UNSUPPORTED_OCI_FIELDS`] a spec may set, ignored with a warning. The default
    /// ignores `process.apparmorProfile`, which containerd's CRI sets on every container of a
    /// host with AppArmor enabled (the guest kernel has no AppArmor).
    #[serde(default = "d_ignore_unsupported")]
    pub ignore_unsupported: Vec<String>,
}

fn d_kernel() -> PathBuf {
    DEFAULT_KERNEL.into()
}
fn d_initramfs() -> PathBuf {
    DEFAULT_INITRAMFS.into()
}
fn d_vcpus() -> u32 {
    1
}
fn d_memory() -> MemSize {
    MemSize(256 << 20)
}
fn d_max_vcpus() -> u32 {
    8
}
fn d_max_memory() -> MemSize {
    MemSize(8 << 30)
}
fn d_disk_slots() -> u32 {
    8
}
fn d_page_reporting_order() -> u32 {
    5
}
fn d_vmm() -> PathBuf {
    "/usr/local/bin/husk-vmm".into()
}
fn d_virtiofsd() -> PathBuf {
    "/usr/local/libexec/husk/virtiofsd".into()
}
fn d_ignore_unsupported() -> Vec<String> {
    vec!["process.apparmorProfile".into()]
}
fn d_state() -> PathBuf {
    "/run/husk".into()
}
fn d_cache() -> PathBuf {
    "/var/lib/husk/images".into()
}
fn d_templates() -> PathBuf {
    "/var/lib/husk/templates".into()
}
fn d_cache_max() -> MemSize {
    MemSize(10 << 30)
}
fn d_work() -> PathBuf {
    "/var/lib/husk/work".into()
}
fn d_port() -> u32 {
    1024
}
fn d_timeout() -> u64 {
    30
}
fn d_true() -> bool {
    true
}
fn d_uid_first() -> u32 {
    DEFAULT_JAIL_UID_FIRST
}
fn d_uid_count() -> u32 {
    DEFAULT_JAIL_UID_COUNT
}
fn d_max_open_files() -> u64 {
    4096
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig { enabled: true, uid_first: d_uid_first(), uid_count: d_uid_count(), max_open_files: d_max_open_files() }
    }
}

impl Default for VmDefaults {
    fn default() -> Self {
        VmDefaults {
            kernel: d_kernel(),
            initramfs: d_initramfs(),
            vcpus: d_vcpus(),
            memory: d_memory(),
            max_vcpus: d_max_vcpus(),
            max_memory: d_max_memory(),
            disk_slots: d_disk_slots(),
            free_page_reporting: true,
            page_reporting_order: d_page_reporting_order(),
            templates: true,
            cmdline: String::new(),
        }
    }
}

impl Default for ShimConfig {
    fn default() -> Self {
        ShimConfig {
            vmm: d_vmm(),
            state_dir: d_state(),
            image_cache_dir: d_cache(),
            template_dir: d_templates(),
            image_cache_max_bytes: d_cache_max(),
            image_work_dir: d_work(),
            agent_vsock_port: d_port(),
            boot_timeout_secs: d_timeout(),
            virtiofsd: d_virtiofsd(),
            ignore_unsupported: d_ignore_unsupported(),
        }
    }
}

impl HuskConfig {
    /// Parses and validates TOML text (`origin` names it in errors).
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self> {
        let c: HuskConfig = toml::from_str(text).map_err(|source| ConfigError::Toml { path: origin.into(), source })?;
        c.validate()?;
        Ok(c)
    }

    /// Reads the file at `path`; a missing file at the default path gives the defaults.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml_str(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_CONFIG_PATH) => Ok(Self::default()),
            Err(source) => Err(ConfigError::File { field: "config".into(), path: path.into(), source }),
        }
    }

    /// Path to read: `$HUSK_CONFIG` if set, else [`DEFAULT_CONFIG_PATH`].
    pub fn default_path() -> PathBuf {
        std::env::var_os(CONFIG_ENV).map(PathBuf::from).unwrap_or_else(|| DEFAULT_CONFIG_PATH.into())
    }

    /// Checks values that can be checked without touching the files (the kernel and
    /// initramfs are checked when a VM is started, so a config can be written before install).
    pub fn validate(&self) -> Result<()> {
        validate_vcpus(self.vm.vcpus).map_err(|e| rename(e, "vm.vcpus"))?;
        validate_memory(self.vm.memory).map_err(|e| rename(e, "vm.memory"))?;
        validate_vcpus(self.vm.max_vcpus).map_err(|e| rename(e, "vm.max_vcpus"))?;
        validate_memory(self.vm.max_memory).map_err(|e| rename(e, "vm.max_memory"))?;
        if self.vm.vcpus > self.vm.max_vcpus {
            return Err(ConfigError::invalid("vm.vcpus", self.vm.vcpus, format!("is more than vm.max_vcpus = {}", self.vm.max_vcpus)));
        }
        if self.vm.memory > self.vm.max_memory {
            return Err(ConfigError::invalid("vm.memory", self.vm.memory, format!("is more than vm.max_memory = {}", self.vm.max_memory)));
        }
        if self.vm.page_reporting_order > MAX_PAGE_REPORTING_ORDER {
            return Err(ConfigError::invalid(
                "vm.page_reporting_order",
                self.vm.page_reporting_order,
                format!("must be 0 to {MAX_PAGE_REPORTING_ORDER} (a block of 2^N pages, at most 4 MiB)"),
            ));
        }
        let max_slots = MAX_DISK_SLOTS - u32::from(self.vm.free_page_reporting);
        if self.vm.disk_slots > max_slots {
            let why = if self.vm.free_page_reporting { " with vm.free_page_reporting, whose device takes one" } else { "" };
            return Err(ConfigError::invalid("vm.disk_slots", self.vm.disk_slots, format!("must be at most {max_slots} (interrupt lines of the VM{why})")));
        }
        if self.shim.agent_vsock_port == 0 || self.shim.agent_vsock_port == u32::MAX {
            return Err(ConfigError::invalid("shim.agent_vsock_port", self.shim.agent_vsock_port, "must be 1 to 4294967294"));
        }
        if self.shim.boot_timeout_secs == 0 || self.shim.boot_timeout_secs > 3600 {
            return Err(ConfigError::invalid("shim.boot_timeout_secs", self.shim.boot_timeout_secs, "must be 1 to 3600"));
        }
        if self.shim.image_cache_max_bytes < MIN_IMAGE_CACHE {
            return Err(ConfigError::invalid("shim.image_cache_max_bytes", self.shim.image_cache_max_bytes, format!("must be at least {MIN_IMAGE_CACHE}")));
        }
        self.jail.validate()?;
        if let Some(bad) = self.shim.ignore_unsupported.iter().find(|f| !UNSUPPORTED_OCI_FIELDS.contains(&f.as_str())) {
            return Err(ConfigError::invalid("shim.ignore_unsupported", bad, format!("is not one of {}", UNSUPPORTED_OCI_FIELDS.join(", "))));
        }
        for (field, p) in [
            ("shim.state_dir", &self.shim.state_dir),
            ("shim.image_cache_dir", &self.shim.image_cache_dir),
            ("shim.template_dir", &self.shim.template_dir),
            ("shim.image_work_dir", &self.shim.image_work_dir),
            ("shim.vmm", &self.shim.vmm),
            ("shim.virtiofsd", &self.shim.virtiofsd),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError::invalid(field, p.display(), "must be an absolute path"));
            }
        }
        Ok(())
    }
}

/// Smallest `image_cache_max_bytes`: below a typical image, every build would evict all.
const MIN_IMAGE_CACHE: MemSize = MemSize(64 << 20);

/// Fewest descriptors husk-vmm starts with (its eventfds, epoll, KVM, disks, sockets).
const MIN_OPEN_FILES: u64 = 64;
/// Most descriptors `max_open_files` may grant (the kernel's default `fs.nr_open`).
const MAX_OPEN_FILES: u64 = 1 << 20;

impl JailConfig {
    /// Checks the uid range (never root, never past the last valid uid) and the rlimit.
    pub fn validate(&self) -> Result<()> {
        if self.uid_first == 0 {
            return Err(ConfigError::invalid("jail.uid_first", self.uid_first, "must not be 0: husk-vmm never runs as root when jailed"));
        }
        if self.uid_count == 0 {
            return Err(ConfigError::invalid("jail.uid_count", self.uid_count, "must be at least 1"));
        }
        // (uid_t)-1 means "unchanged" to setresuid and chown: the range must end before it.
        if u64::from(self.uid_first) + u64::from(self.uid_count) > u64::from(u32::MAX) {
            return Err(ConfigError::invalid(
                "jail.uid_count",
                self.uid_count,
                format!("jail.uid_first = {} plus this passes the last uid {}", self.uid_first, u32::MAX - 1),
            ));
        }
        if !(MIN_OPEN_FILES..=MAX_OPEN_FILES).contains(&self.max_open_files) {
            return Err(ConfigError::invalid("jail.max_open_files", self.max_open_files, format!("must be {MIN_OPEN_FILES} to {MAX_OPEN_FILES}")));
        }
        Ok(())
    }

    /// The uid range, as `first..end`.
    pub fn uids(&self) -> std::ops::Range<u32> {
        self.uid_first..self.uid_first.saturating_add(self.uid_count)
    }
}

fn rename(e: ConfigError, field: &str) -> ConfigError {
    match e {
        ConfigError::Invalid { value, reason, .. } => ConfigError::Invalid { field: field.into(), value, reason },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration `make install` writes (husk.toml.in with PREFIX /usr/local), parsed.
    fn shipped() -> HuskConfig {
        let text = include_str!("../husk.toml.in").replace("@PREFIX@", "/usr/local");
        HuskConfig::from_toml_str(&text, Path::new("husk.toml.in")).unwrap()
    }

    #[test]
    fn empty_file_gives_install_defaults() {
        let c = HuskConfig::from_toml_str("", Path::new("t.toml")).unwrap();
        assert_eq!(c.vm.kernel, Path::new("/usr/local/share/husk/vmlinux"));
        assert_eq!(c.vm.initramfs, Path::new("/usr/local/share/husk/initramfs"));
        assert_eq!(c.shim.agent_vsock_port, 1024);
        assert_eq!(c.shim.state_dir, Path::new("/run/husk"));
    }

    #[test]
    fn fields_parse_and_bad_values_name_the_field() {
        let c = HuskConfig::from_toml_str("[vm]\nvcpus = 2\nmemory = \"1G\"\n[shim]\nboot_timeout_secs = 5\n", Path::new("t")).unwrap();
        assert_eq!((c.vm.vcpus, c.vm.memory.bytes(), c.shim.boot_timeout_secs), (2, 1 << 30, 5));
        let e = HuskConfig::from_toml_str("[vm]\nvcpus = 10000\n", Path::new("t")).unwrap_err().to_string();
        assert!(e.contains("vm.vcpus") && e.contains("10000"), "{e}");
        let e = HuskConfig::from_toml_str("[vm]\nmemory = 0\n", Path::new("t")).unwrap_err().to_string();
        assert!(e.contains("vm.memory"), "{e}");
        let e = HuskConfig::from_toml_str("[shim]\nstate_dir = \"rel\"\n", Path::new("t")).unwrap_err().to_string();
        assert!(e.contains("shim.state_dir") && e.contains("rel"), "{e}");
        let e = HuskConfig::from_toml_str("[vm]\nbogus = 1\n", Path::new("t.toml"));
        assert!(format!("{:?}", e.unwrap_err()).contains("bogus"));
    }

    #[test]
    fn jail_section_defaults_and_bad_ranges() {
        let c = HuskConfig::from_toml_str("", Path::new("t")).unwrap();
        assert!(c.jail.enabled);
        assert_eq!(c.jail.uids(), 0x7000_0000..0x7001_0000);
        let c = HuskConfig::from_toml_str("[jail]\nuid_first = 5000\nuid_count = 2\nmax_open_files = 128\n", Path::new("t")).unwrap();
        assert_eq!((c.jail.uids(), c.jail.max_open_files), (5000..5002, 128));
        for (text, field, value) in [
            ("[jail]\nuid_first = 0\n", "jail.uid_first", "0"),
            ("[jail]\nuid_count = 0\n", "jail.uid_count", "0"),
            ("[jail]\nuid_first = 4294967290\nuid_count = 6\n", "jail.uid_count", "6"),
            ("[jail]\nmax_open_files = 3\n", "jail.max_open_files", "3"),
        ] {
            let e = HuskConfig::from_toml_str(text, Path::new("t")).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(value), "{text}: {e}");
        }
        // The last valid uid may be used; (uid_t)-1 may not.
        HuskConfig::from_toml_str("[jail]\nuid_first = 4294967290\nuid_count = 5\n", Path::new("t")).unwrap();
        let e = HuskConfig::from_toml_str("[jail]\nuid = 7\n", Path::new("t")).unwrap_err();
        assert!(format!("{e:?}").contains("uid"), "{e:?}");
    }

    #[test]
    fn unsupported_fields_to_ignore_are_checked_and_apparmor_is_ignored_by_default() {
        let c = HuskConfig::from_toml_str("", Path::new("t")).unwrap();
        assert_eq!(c.shim.ignore_unsupported, ["process.apparmorProfile"]);
        assert_eq!(shipped().shim.ignore_unsupported, c.shim.ignore_unsupported);
        let c = HuskConfig::from_toml_str("[shim]\nignore_unsupported = []\n", Path::new("t")).unwrap();
        assert!(c.shim.ignore_unsupported.is_empty());
        let e = HuskConfig::from_toml_str("[shim]\nignore_unsupported = [\"process.apparmor\"]\n", Path::new("t")).unwrap_err().to_string();
        assert!(e.contains("shim.ignore_unsupported") && e.contains("process.apparmor") && e.contains("linux.mountLabel"), "{e}");
    }

    #[test]
    fn image_cache_bound_and_work_dir() {
        let c = HuskConfig::from_toml_str("", Path::new("t")).unwrap();
        assert_eq!((c.shim.image_cache_max_bytes.bytes(), c.shim.image_work_dir.as_path()), (10 << 30, Path::new("/var/lib/husk/work")));
        let c = HuskConfig::from_toml_str("[shim]\nimage_cache_max_bytes = \"512M\"\nimage_work_dir = \"/srv/husk\"\n", Path::new("t")).unwrap();
        assert_eq!((c.shim.image_cache_max_bytes.bytes(), c.shim.image_work_dir.as_path()), (512 << 20, Path::new("/srv/husk")));
        for (text, field, value) in [
            ("[shim]\nimage_cache_max_bytes = \"1M\"\n", "shim.image_cache_max_bytes", "1M"),
            ("[shim]\nimage_cache_max_bytes = \"lots\"\n", "image_cache_max_bytes", "lots"),
            ("[shim]\nimage_work_dir = \"work\"\n", "shim.image_work_dir", "work"),
        ] {
            let e = HuskConfig::from_toml_str(text, Path::new("t")).unwrap_err();
            let e = format!("{e}: {e:?}");
            assert!(e.contains(field) && e.contains(value), "{text}: {e}");
        }
    }

    #[test]
    fn free_page_reporting_is_on_by_default_and_takes_a_slot_s_line() {
        let c = HuskConfig::from_toml_str("", Path::new("t")).unwrap();
        assert!(c.vm.free_page_reporting);
        assert!(shipped().vm.free_page_reporting);
        let c = HuskConfig::from_toml_str("[vm]\nfree_page_reporting = false\ndisk_slots = 15\n", Path::new("t")).unwrap();
        assert!(!c.vm.free_page_reporting);
        let e = HuskConfig::from_toml_str("[vm]\ndisk_slots = 15\n", Path::new("t")).unwrap_err().to_string();
        assert!(e.contains("vm.disk_slots") && e.contains("15") && e.contains("at most 14") && e.contains("free_page_reporting"), "{e}");
        HuskConfig::from_toml_str("[vm]\ndisk_slots = 14\n", Path::new("t")).unwrap();
    }

    #[test]
    fn page_reporting_order_defaults_to_128k_blocks_and_is_bounded() {
        assert_eq!(HuskConfig::default().vm.page_reporting_order, 5);
        assert_eq!(shipped().vm.page_reporting_order, 5);
        assert_eq!(HuskConfig::from_toml_str("[vm]\npage_reporting_order = 0\n", Path::new("t")).unwrap().vm.page_reporting_order, 0);
        assert_eq!(HuskConfig::from_toml_str("[vm]\npage_reporting_order = 10\n", Path::new("t")).unwrap().vm.page_reporting_order, 10);
        let e = HuskConfig::from_toml_str("[vm]\npage_reporting_order = 11\n", Path::new("t")).unwrap_err().to_string();
        assert!(e.contains("vm.page_reporting_order") && e.contains("11") && e.contains("0 to 10"), "{e}");
    }

    #[test]
    fn the_shipped_configuration_is_the_built_in_default() {
        // `make install` writes husk.toml.in; a value that differs from the built-in default
        // would make an installed husk behave unlike the documented and tested one.
        let shipped = shipped();
        assert_eq!(shipped, HuskConfig::default());
        assert!(shipped.vm.templates);
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let e = HuskConfig::load(Path::new("/nonexistent/husk.toml")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/husk.toml"), "{e}");
    }
}
