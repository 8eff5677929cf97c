//! Configuration of one microVM as `husk-vmm` runs it (its `--config` TOML file and flags).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::devices::{DiskConfig, FsConfig, NetConfig, VsockConfig};
use crate::error::{ConfigError, Result};
use crate::size::MemSize;

/// Most vCPUs a VM may have (the guest kernel's NR_CPUS, and MP-table APIC ids stay small).
pub const MAX_VCPUS: u32 = 64;
/// Smallest guest memory that boots the husk kernel and initramfs.
pub const MIN_MEMORY: MemSize = MemSize(16 << 20);
/// Largest guest memory husk-vmm accepts.
pub const MAX_MEMORY: MemSize = MemSize(1 << 40);
/// Kernel command line used when none is given. `reboot=k` and `panic=-1` are what make the
/// exit statuses of husk-vmm meaningful (see the microvm crate's documentation).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";
/// Installed kernel (`make install`).
pub const DEFAULT_KERNEL: &str = "/usr/local/share/husk/vmlinux";
/// Installed initramfs (`make install`).
pub const DEFAULT_INITRAMFS: &str = "/usr/local/share/husk/initramfs";
/// Most virtio devices (disks, disk slots, net, vsock together) one VM can have: each takes
/// one interrupt line, and husk-vmm hands out GSIs 5 to 23 of the 24-pin IOAPIC (0-4 are the
/// PIT, keyboard, cascade and serial ports). The virtio-mmio window range
/// (0xd000_0000-0xfec0_0000, 4 KiB each) holds far more, so the lines are the limit.
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// Default of [`VmConfig::log_max_bytes`].
pub const DEFAULT_LOG_MAX: MemSize = MemSize(1 << 20);
/// Smallest [`VmConfig::log_max_bytes`] (the drop notice and a useful tail must fit).
pub const MIN_LOG_MAX: MemSize = MemSize(16 << 10);
/// API name of disk slot `n` (`slot0`, `slot1`, ...; see [`VmConfig::disk_slots`]).
pub fn slot_name(n: u32) -> String {
    format!("slot{n}")
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Console {
    /// husk-vmm's standard output (and standard input feeds the guest).
    #[default]
    Stdio,
    /// Discarded.
    None,
    /// Appended to this file.
    File(PathBuf),
}

impl Console {
    /// Parses `stdio`, `none` or `file:PATH`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "stdio" => Ok(Console::Stdio),
            "none" => Ok(Console::None),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Console::File(PathBuf::from(p))),
                _ => Err(ConfigError::invalid("console", s, "expected stdio, none or file:PATH")),
            },
        }
    }
}

impl std::fmt::Display for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Console::Stdio => f.write_str("stdio"),
            Console::None => f.write_str("none"),
            Console::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl Serialize for Console {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Console {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Console::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// How husk-vmm raises the interrupt of a virtio device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IrqDelivery {
    /// `KVM_IRQ_LINE` from the thread that used the buffers: KVM sets the IOAPIC pin at once.
    #[default]
    Line,
    /// An irqfd on the device's GSI. KVM cannot set an IOAPIC pin from the eventfd's wake-up,
    /// so each interrupt waits for a kernel worker thread: one more context switch per
    /// interrupt (vsock 1-6% slower than `line` in tests/virtio/bench-irq.sh).
    Irqfd,
}

impl IrqDelivery {
    /// Parses `line` or `irqfd`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "line" => Ok(IrqDelivery::Line),
            "irqfd" => Ok(IrqDelivery::Irqfd),
            _ => Err(ConfigError::invalid("irq_delivery", s, "expected line or irqfd")),
        }
    }
}

/// Format of a kernel image, found from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum KernelFormat {
    /// Uncompressed 64-bit x86 ELF (`vmlinux`).
    Elf,
    /// Linux x86 boot-protocol image (`bzImage`).
    BzImage,
}

/// One microVM. Every field has the same name in the TOML file as the flag without `--`
/// (`api_sock` for `--api-sock`; `disk`, `net` as arrays of tables).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an uncompressed x86-64 ELF `vmlinux` or a `bzImage`.
    #[serde(default = "default_kernel")]
    pub kernel: PathBuf,
    /// Initramfs (any format the kernel unpacks, e.g. gzip'd newc cpio).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line. husk-vmm appends its own virtio-mmio device announcements.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Number of vCPUs, 1 to 64.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest RAM, `256M`, `1G` (or a plain number of MiB), 16 MiB to 1 TiB.
    #[serde(default = "default_memory")]
    pub memory: MemSize,
    /// Serial console: `stdio`, `none` or `file:PATH`.
    #[serde(default)]
    pub console: Console,
    /// Most bytes husk-vmm keeps in each log file it writes: the console file
    /// (`console = "file:..."`) and its own stderr when that is a regular file. A log about to
    /// grow past this drops its older part and keeps the newest half, under a line saying how
    /// much was dropped. At least 16K; default 1M.
    #[serde(default = "default_log_max")]
    pub log_max_bytes: MemSize,
    /// Unix socket of the control API (see microvm/API.md); none disables the API.
    #[serde(default)]
    pub api_sock: Option<PathBuf>,
    /// Virtio block devices, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub disk: Vec<DiskConfig>,
    /// Empty virtio-blk devices after the `disk` entries, named `slot0`, `slot1`, ... in the
    /// control API, where an image is attached to one later (`PUT /vm/disks/slotN`, see
    /// microvm/API.md). They boot with capacity 0 and an empty serial, and never offer
    /// VIRTIO_BLK_F_RO (features are fixed at boot): a read-only attachment refuses writes in
    /// the device instead (the guest sees an I/O error).
    #[serde(default)]
    pub disk_slots: u32,
    /// Virtio network devices.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// The virtio-vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// How virtio interrupts reach the guest: `line` (default) or `irqfd`.
    #[serde(default)]
    pub irq_delivery: IrqDelivery,
    /// Virtio-fs devices (`[[fs]]` tables), each served by a vhost-user backend.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// A virtio-balloon device offering only free page reporting: the guest kernel reports
    /// free memory (in blocks of its pageblock size, 2 MiB with husk's kernel, or as small as
    /// the guest sets `page_reporting_order` to (husk's agent does, from
    /// `husk.page_reporting_order=`), starting 2 s after memory was freed) and husk-vmm gives
    /// those pages back to the host. Takes one interrupt line. Default off.
    #[serde(default)]
    pub free_page_reporting: bool,
}

fn default_kernel() -> PathBuf {
    PathBuf::from(DEFAULT_KERNEL)
}
fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_vcpus() -> u32 {
    1
}
fn default_memory() -> MemSize {
    MemSize(256 << 20)
}
fn default_log_max() -> MemSize {
    DEFAULT_LOG_MAX
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: default_kernel(),
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: default_vcpus(),
            memory: default_memory(),
            console: Console::default(),
            log_max_bytes: DEFAULT_LOG_MAX,
            api_sock: None,
            disk: Vec::new(),
            disk_slots: 0,
            net: Vec::new(),
            vsock: None,
            irq_delivery: IrqDelivery::default(),
            fs: Vec::new(),
            free_page_reporting: false,
        }
    }
}

impl VmConfig {
    /// Parses a VM TOML file (fields absent from it take their defaults).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File { field: "--config".into(), path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Toml { path: path.to_path_buf(), source })
    }

    /// Checks every field; returns the kernel's format. Nothing is started when this fails.
    pub fn validate(&self) -> Result<KernelFormat> {
        validate_vcpus(self.vcpus)?;
        validate_memory(self.memory)?;
        if self.log_max_bytes < MIN_LOG_MAX {
            return Err(ConfigError::invalid("log_max_bytes", self.log_max_bytes, format!("must be at least {MIN_LOG_MAX}")));
        }
        if self.cmdline.contains('\0') || self.cmdline.len() > 4000 {
            return Err(ConfigError::invalid("cmdline", &self.cmdline, "must be at most 4000 bytes without NUL"));
        }
        let format = kernel_format(&self.kernel)?;
        if let Some(initrd) = &self.initrd {
            let size = file_size("initrd", initrd)?;
            // The initrd goes below the kernel's lowmem limit, above the kernel; it must at
            // least fit in half of guest RAM.
            if size > self.memory.bytes() / 2 {
                return Err(ConfigError::invalid(
                    "initrd",
                    initrd.display(),
                    format!("{size} bytes do not fit in guest memory of {} (at most half of it)", self.memory),
                ));
            }
        }
        self.validate_device_count()?;
        let mut ids = std::collections::HashSet::new();
        for d in &self.disk {
            d.validate()?;
            if let Some(id) = &d.id {
                if !ids.insert(id.clone()) {
                    return Err(ConfigError::invalid("disk.id", id, "used by two disks"));
                }
                if let Some(n) = id.strip_prefix("slot").and_then(|n| n.parse::<u32>().ok()).filter(|&n| n < self.disk_slots && *id == slot_name(n)) {
                    return Err(ConfigError::invalid("disk.id", id, format!("is the API name of disk slot {n} (disk_slots = {})", self.disk_slots)));
                }
            }
        }
        self.validate_devices()?;
        Ok(format)
    }

    /// The devices' part of [`VmConfig::validate`], which a restored VM's configuration (new
    /// backends for saved devices) must pass too: each inherited descriptor, tap and tag goes
    /// to one device only, and every path fits.
    pub fn validate_devices(&self) -> Result<()> {
        // Each inherited descriptor goes to one device only.
        let (mut fds, mut taps) = (std::collections::HashSet::new(), std::collections::HashSet::new());
        if let Some(fd) = self.disk.iter().filter_map(|d| d.fd).find(|fd| !fds.insert(*fd)) {
            return Err(ConfigError::invalid("disk.fd", fd, "used by two devices"));
        }
        for n in &self.net {
            n.validate()?;
            if let Some(fd) = n.fd.filter(|fd| !fds.insert(*fd)) {
                return Err(ConfigError::invalid("net.fd", fd, "used by two devices"));
            }
            if !taps.insert(n.tap.as_str()) {
                return Err(ConfigError::invalid("net.tap", &n.tap, "used by two net devices"));
            }
        }
        if let Some(v) = &self.vsock {
            v.validate()?;
        }
        let mut tags = std::collections::HashSet::new();
        for f in &self.fs {
            f.validate()?;
            if !tags.insert(f.tag.as_str()) {
                return Err(ConfigError::invalid("fs.tag", &f.tag, "used by two fs devices"));
            }
            if let Some(fd) = f.fd.filter(|fd| !fds.insert(*fd)) {
                return Err(ConfigError::invalid("fs.fd", fd, "used by two devices"));
            }
        }
        if let Some(a) = &self.api_sock {
            if a.as_os_str().len() >= 108 {
                return Err(ConfigError::invalid("api_sock", a.display(), "unix socket paths are limited to 107 bytes"));
            }
        }
        Ok(())
    }
}

impl VmConfig {
    /// Virtio devices this configuration asks for: disks, disk slots, net devices, vsock, fs
    /// devices and the free page reporting balloon.
    pub fn virtio_device_count(&self) -> usize {
        self.disk
            .len()
            .saturating_add(self.disk_slots as usize)
            .saturating_add(self.net.len())
            .saturating_add(usize::from(self.vsock.is_some()))
            .saturating_add(self.fs.len())
            .saturating_add(usize::from(self.free_page_reporting))
    }

    /// Checks that the virtio devices fit the VM's interrupt lines ([`MAX_VIRTIO_DEVICES`]).
    fn validate_device_count(&self) -> Result<()> {
        let total = self.virtio_device_count();
        if total <= MAX_VIRTIO_DEVICES {
            return Ok(());
        }
        let others = total.saturating_sub(self.disk_slots as usize);
        let what = format!(
            "{} disks, {} disk slots, {} net, {} vsock, {} fs and {} balloon devices make {total} virtio devices; a VM has interrupt lines (GSI 5-23) for {MAX_VIRTIO_DEVICES}",
            self.disk.len(),
            self.disk_slots,
            self.net.len(),
            usize::from(self.vsock.is_some()),
            self.fs.len(),
            usize::from(self.free_page_reporting),
        );
        if self.disk_slots > 0 {
            let room = MAX_VIRTIO_DEVICES.saturating_sub(others);
            return Err(ConfigError::invalid("disk_slots", self.disk_slots, format!("{what}, so at most {room} slots fit")));
        }
        Err(ConfigError::invalid("disk", self.disk.len(), what))
    }
}

/// Checks a vCPU count.
pub fn validate_vcpus(vcpus: u32) -> Result<()> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(ConfigError::invalid("vcpus", vcpus, format!("must be between 1 and {MAX_VCPUS}")));
    }
    Ok(())
}

/// Checks a guest memory size.
pub fn validate_memory(memory: MemSize) -> Result<()> {
    if memory < MIN_MEMORY || memory > MAX_MEMORY {
        return Err(ConfigError::invalid("memory", memory, format!("must be between {MIN_MEMORY} and {MAX_MEMORY}")));
    }
    if !memory.bytes().is_multiple_of(4096) {
        return Err(ConfigError::invalid("memory", memory, "must be a multiple of 4K"));
    }
    Ok(())
}

fn file_size(field: &str, path: &Path) -> Result<u64> {
    let md = std::fs::metadata(path).map_err(|source| ConfigError::File { field: field.into(), path: path.into(), source })?;
    if !md.is_file() {
        return Err(ConfigError::invalid(field, path.display(), "not a regular file"));
    }
    Ok(md.len())
}

/// Reads the head of `path` and tells whether it is an x86-64 ELF or a bzImage.
pub fn kernel_format(path: &Path) -> Result<KernelFormat> {
    file_size("kernel", path)?;
    let mut head = [0u8; 0x210];
    let mut f = std::fs::File::open(path).map_err(|source| ConfigError::File { field: "kernel".into(), path: path.into(), source })?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(source) => return Err(ConfigError::File { field: "kernel".into(), path: path.into(), source }),
        }
    }
    // ELF: magic, ELFCLASS64, little endian, e_machine EM_X86_64 (62).
    if n >= 20 && head[..4] == *b"\x7fELF" {
        if head[4] == 2 && head[5] == 1 && head[18] == 62 && head[19] == 0 {
            return Ok(KernelFormat::Elf);
        }
        return Err(ConfigError::invalid("kernel", path.display(), "ELF file is not a 64-bit x86 executable"));
    }
    // bzImage: "HdrS" at 0x202 (boot protocol header).
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(ConfigError::invalid("kernel", path.display(), "neither an ELF vmlinux nor a bzImage"))
}
