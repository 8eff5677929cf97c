//! Building and running one microVM: KVM VM, memory, kernel, devices, vCPUs, threads.

use std::fs::OpenOptions;
use std::sync::Arc;

use husk_config::{Console, KernelFormat, VmConfig};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{cpuid, mptable, regs};
use crate::bounded_log::BoundedLog;
use crate::device_manager::{DeviceError, DeviceManager};
use crate::devices::legacy::console::{ConsoleOut, ConsoleWriter};
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::legacy::stdin::StdinInput;
use crate::devices::legacy::EventFdTrigger;
use crate::exit::VmExit;
use crate::layout::*;
use crate::loader::{self, LoaderError};
use crate::memory::{create_guest_memory, GuestMemoryMmap, MemoryError};
use crate::snapshot;

/// Address of the 3-page TSS region KVM needs on Intel (inside the MMIO hole, below the IOAPIC).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Parameters describing the emulated i8042 to the guest: no AUX port, no multiplexer, so the
/// driver does not wait for a mouse that is not there.
const I8042_CMDLINE: [&str; 2] = ["i8042.noaux", "i8042.nomux"];

/// Building the VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    /// A VM-level KVM ioctl failed.
    #[error("KVM {0} failed")]
    VmIoctl(&'static str, #[source] kvm_ioctls::Error),
    /// KVM allows fewer vCPUs.
    #[error("vcpus = {wanted}: this host's KVM allows at most {max}")]
    TooManyVcpus {
        /// Asked for.
        wanted: u32,
        /// KVM's limit.
        max: usize,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel, initrd, command line.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// MP table.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// vCPU registers.
    #[error("cannot set up vcpu-{0}")]
    Regs(u8, #[source] regs::RegsError),
    /// Devices.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The console file.
    #[error("cannot open console file {0:?}")]
    ConsoleFile(std::path::PathBuf, #[source] std::io::Error),
    /// An eventfd.
    #[error("cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    /// The devices of a restored VM.
    #[error("cannot attach the devices")]
    Devices(#[source] Box<crate::devices::virtio::wiring::WiringError>),
    /// Restoring a snapshot.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
}

/// The MSRs a snapshot saves: KVM's list of MSRs to save and restore.
fn msrs_to_save(kvm: &Kvm) -> Result<Vec<u32>, VmmError> {
    Ok(kvm.get_msr_index_list().map_err(|e| VmmError::VmIoctl("GET_MSR_INDEX_LIST", e))?.as_slice().to_vec())
}

/// What a restored VM takes from its new process instead of the snapshot.
#[derive(Debug, Default)]
pub struct RestoreOverrides {
    /// The console (default: the saved one).
    pub console: Option<Console>,
    /// The control API socket (none unless given).
    pub api_sock: Option<std::path::PathBuf>,
    /// The vsock device's unix socket (default: the saved path); its CID must be the saved
    /// one (the guest's drivers know it).
    pub vsock: Option<husk_config::VsockConfig>,
    /// New backends for the saved net devices, one per device in order (tap name, fd or
    /// netns); empty: the saved ones. The MAC stays the saved one (the guest read it at boot).
    pub net: Vec<husk_config::NetConfig>,
    /// New backends for the saved virtio-fs devices, one per device in order, with the saved
    /// tags (socket path or inherited connection); empty: the saved ones.
    pub fs: Vec<husk_config::FsConfig>,
    /// The configuration the caller expects the saved VM to have (`--config` with
    /// `--restore`): its shape must be the saved one's (see [`check_shape`]).
    pub expected: Option<VmConfig>,
}

/// Checks that `given` describes the same VM as `saved` (vCPUs, memory, command line, and the
/// devices the guest found at boot); names the first difference.
pub fn check_shape(saved: &VmConfig, given: &VmConfig) -> Result<(), snapshot::SnapshotError> {
    let differs = |field: &str, g: String, s: String| Err(snapshot::SnapshotError::Invalid(format!("the configuration has {field} = {g}, the saved VM {s}")));
    if given.vcpus != saved.vcpus {
        return differs("vcpus", given.vcpus.to_string(), saved.vcpus.to_string());
    }
    if given.memory != saved.memory {
        return differs("memory", given.memory.bytes().to_string(), saved.memory.bytes().to_string());
    }
    if given.cmdline != saved.cmdline {
        return differs("cmdline", format!("{:?}", given.cmdline), format!("{:?}", saved.cmdline));
    }
    if given.disk.len() != saved.disk.len() || given.disk_slots != saved.disk_slots {
        return differs("disks + disk_slots", format!("{} + {}", given.disk.len(), given.disk_slots), format!("{} + {}", saved.disk.len(), saved.disk_slots));
    }
    if given.net.len() != saved.net.len() {
        return differs("net devices", given.net.len().to_string(), saved.net.len().to_string());
    }
    if given.fs.len() != saved.fs.len() {
        return differs("fs devices", given.fs.len().to_string(), saved.fs.len().to_string());
    }
    if given.vsock.is_some() != saved.vsock.is_some() || given.free_page_reporting != saved.free_page_reporting {
        return differs(
            "vsock, free_page_reporting",
            format!("{}, {}", given.vsock.is_some(), given.free_page_reporting),
            format!("{}, {}", saved.vsock.is_some(), saved.free_page_reporting),
        );
    }
    Ok(())
}

/// A built VM, ready to run.
pub struct Vm {
    /// The configuration it was built from.
    pub config: VmConfig,
    /// KVM system handle (kept for the VM's lifetime).
    pub kvm: Kvm,
    /// The KVM VM (shared with the threads that raise device interrupts).
    pub vm: Arc<VmFd>,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// Buses, event manager, counters.
    pub devices: DeviceManager,
    /// Exit coordination.
    pub exit: Arc<VmExit>,
    /// The serial console.
    pub serial: Arc<SerialDevice>,
    /// The keyboard controller (Ctrl-Alt-Del for graceful shutdown).
    pub i8042: Arc<I8042>,
    /// Configured vCPUs, not yet running.
    pub vcpus: Vec<VcpuFd>,
    /// Kernel command line as given to the guest.
    pub cmdline: String,
    /// The MSRs a snapshot saves (KVM's list).
    pub msr_list: Vec<u32>,
    entry: u64,
    kernel: Option<loader::LoadedKernel>,
}

impl Vm {
    /// Creates the KVM VM, guest memory and legacy devices, and loads the kernel and initrd.
    /// Virtio devices are attached afterwards through [`Vm::devices`]; [`Vm::finish_boot`]
    /// then writes the command line, zero page and MP table and creates the vCPUs.
    pub fn new(config: VmConfig, format: KernelFormat) -> Result<Self, VmmError> {
        let mut vm = Self::base(config, None)?;
        let kernel = loader::load_kernel(&vm.mem, &vm.config.kernel, format)?;
        log::debug!("kernel loaded {:?} after process start", crate::since_start());
        vm.entry = kernel.entry;
        vm.kernel = Some(kernel);
        Ok(vm)
    }

    /// A VM continuing the one saved in the snapshot directory `dir` (see [`crate::snapshot`]):
    /// its configuration with `console` and `api_sock` replaced, its memory, KVM state and
    /// legacy devices. Its vCPUs are created and ready to run.
    pub fn restore(dir: &std::path::Path, over: RestoreOverrides) -> Result<Self, VmmError> {
        let snap = snapshot::read_state(dir)?;
        if let Some(given) = &over.expected {
            check_shape(&snap.config, given)?;
        }
        let mut config = snap.config.clone();
        if let Some(c) = over.console {
            config.console = c;
        }
        config.api_sock = over.api_sock;
        match (over.vsock, config.vsock.as_mut()) {
            (Some(new), Some(v)) if new.cid != v.cid => {
                return Err(snapshot::SnapshotError::Invalid(format!("--vsock cid={}: the saved guest has CID {}", new.cid, v.cid)).into())
            }
            (Some(new), Some(v)) => v.uds = new.uds,
            (Some(_), None) => return Err(snapshot::SnapshotError::Invalid("the saved VM has no vsock device to give a socket path".into()).into()),
            (None, _) => {}
        }
        let invalid = |m: String| VmmError::from(snapshot::SnapshotError::Invalid(m));
        if !over.net.is_empty() {
            if over.net.len() != config.net.len() {
                return Err(invalid(format!("{} --net given for the saved VM's {} net devices", over.net.len(), config.net.len())));
            }
            for (saved, new) in config.net.iter_mut().zip(over.net) {
                if new.mac.is_some() && new.mac != saved.mac {
                    return Err(invalid(format!("--net tap={}: the guest has the saved MAC; change it in the guest", new.tap)));
                }
                let mac = saved.mac;
                *saved = husk_config::NetConfig { mac, ..new };
            }
        }
        if !over.fs.is_empty() {
            if over.fs.len() != config.fs.len() {
                return Err(invalid(format!("{} --fs given for the saved VM's {} virtio-fs devices", over.fs.len(), config.fs.len())));
            }
            for (saved, new) in config.fs.iter_mut().zip(over.fs) {
                if new.tag != saved.tag {
                    return Err(invalid(format!("--fs tag={}: the saved device has tag {}", new.tag, saved.tag)));
                }
                *saved = new;
            }
        }
        if let Some(given) = &over.expected {
            // The caller's description of this VM, whose shape is the saved one's: GET /vm shows
            // its paths (a jailed VMM's kernel is at the jail's path, not the template maker's).
            config.kernel = given.kernel.clone();
            config.initrd = given.initrd.clone();
            config.log_max_bytes = given.log_max_bytes;
        }
        config.validate_devices().map_err(snapshot::SnapshotError::Config)?;
        let mut vm = Self::base(config, Some(&snap.serial))?;
        let memory = dir.join(snapshot::MEMORY_FILE);
        // The snapshot's pages are shared copy-on-write instead of copied. No other process
        // can map such RAM: a virtio-fs device relays its backend's requests through memory of
        // its own (devices::virtio::fs::relay).
        vm.mem = snapshot::memory::map(&vm.mem, &memory)?;
        log::debug!("guest memory mapped copy-on-write {:?} after process start", crate::since_start());
        vm.i8042.set_state(snap.i8042.clone()).map_err(snapshot::SnapshotError::Invalid)?;
        snapshot::vm_state::restore(&vm.vm, &snap.vm)?;
        for (id, state) in snap.vcpus.iter().enumerate() {
            let fd = vm.vm.create_vcpu(id as u64).map_err(|e| VmmError::VmIoctl("CREATE_VCPU", e))?;
            snapshot::cpu::restore(&fd, state)?;
            vm.vcpus.push(fd);
        }
        vm.msr_list = msrs_to_save(&vm.kvm)?;
        log::debug!("KVM and vCPU state restored {:?} after process start", crate::since_start());
        crate::devices::virtio::wiring::attach_all(&mut vm).map_err(|e| VmmError::Devices(Box::new(e)))?;
        log::debug!("virtio devices attached {:?} after process start", crate::since_start());
        // The guest found its devices where the command line announced them at boot.
        if let Some(missing) = vm.devices.cmdline_extra().iter().find(|a| !snap.cmdline.split(' ').any(|w| w == a.as_str())) {
            return Err(
                snapshot::SnapshotError::Invalid(format!("the device layout differs from the saved VM's ({missing} was not on its command line)")).into()
            );
        }
        let transports = vm.devices.transports();
        if transports.len() != snap.devices.len() {
            return Err(snapshot::SnapshotError::Invalid(format!("{} saved devices for {} attached", snap.devices.len(), transports.len())).into());
        }
        for ((name, t), (saved_name, st)) in transports.iter().zip(&snap.devices) {
            // A net device is named after its tap, which a restore may replace.
            let both_net = name.starts_with("virtio-net-") && saved_name.starts_with("virtio-net-");
            if name != saved_name && !both_net {
                return Err(snapshot::SnapshotError::Invalid(format!("saved device {saved_name} where this VM has {name}")).into());
            }
            t.restore(st).map_err(|e| snapshot::SnapshotError::Invalid(format!("{name}: {e}")))?;
        }
        vm.cmdline = snap.cmdline;
        Ok(vm)
    }

    /// KVM VM, memory and legacy devices (the serial port continuing from `serial` if given).
    fn base(config: VmConfig, serial_state: Option<&snapshot::SerialState>) -> Result<Self, VmmError> {
        let kvm = Kvm::new().map_err(VmmError::Kvm)?;
        let max = kvm.get_max_vcpus();
        if config.vcpus as usize > max {
            return Err(VmmError::TooManyVcpus { wanted: config.vcpus, max });
        }
        let vm = kvm.create_vm().map_err(|e| VmmError::VmIoctl("CREATE_VM", e))?;
        vm.set_tss_address(KVM_TSS_ADDRESS).map_err(|e| VmmError::VmIoctl("SET_TSS_ADDR", e))?;
        vm.create_irq_chip().map_err(|e| VmmError::VmIoctl("CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        vm.create_pit2(pit).map_err(|e| VmmError::VmIoctl("CREATE_PIT2", e))?;
        log::debug!("KVM VM created {:?} after process start", crate::since_start());

        let mem = create_guest_memory(config.memory.bytes())?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the returned Vm keeps
            // for as long as the KVM VM exists; KVM only accesses it through this range.
            unsafe { vm.set_user_memory_region(r) }.map_err(|e| VmmError::VmIoctl("SET_USER_MEMORY_REGION", e))?;
        }

        log::debug!("guest memory mapped {:?} after process start", crate::since_start());
        let exit = Arc::new(VmExit::default());
        let out = match &config.console {
            Console::Stdio => ConsoleOut::Stdout(std::io::stdout()),
            Console::None => ConsoleOut::Sink,
            Console::File(p) => {
                // Read and write (not append): trimming the log moves its tail to the start.
                let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(p).map_err(|e| VmmError::ConsoleFile(p.clone(), e))?;
                ConsoleOut::File(BoundedLog::new(f, config.log_max_bytes.bytes()).map_err(|e| VmmError::ConsoleFile(p.clone(), e))?)
            }
        };
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::EventFd("serial", e))?;
        vm.register_irqfd(&serial_irq, SERIAL_GSI).map_err(|e| VmmError::VmIoctl("IRQFD (serial)", e))?;
        let writer = ConsoleWriter::new(out, exit.clone());
        let serial = Arc::new(match serial_state {
            Some(st) => SerialDevice::from_state(EventFdTrigger(serial_irq), writer, &st.into()).map_err(snapshot::SnapshotError::Invalid)?,
            None => SerialDevice::new(EventFdTrigger(serial_irq), writer),
        });
        let mut devices = DeviceManager::new(config.irq_delivery);
        if config.console == Console::Stdio {
            if let Some(input) = StdinInput::new(serial.clone()) {
                devices.add_subscriber(Arc::new(std::sync::Mutex::new(input)))?;
            }
        }
        devices.io_bus.insert(serial.clone(), SERIAL_PORT, 8).map_err(|e| DeviceError::Bus("serial".into(), e))?;
        let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::EventFd("i8042", e))?;
        vm.register_irqfd(&kbd_irq, I8042_GSI).map_err(|e| VmmError::VmIoctl("IRQFD (i8042)", e))?;
        let i8042 = Arc::new(I8042::new(EventFdTrigger(kbd_irq), exit.clone()));
        devices.io_bus.insert(i8042.clone(), I8042_PORT, 5).map_err(|e| DeviceError::Bus("i8042".into(), e))?;

        Ok(Vm {
            config,
            kvm,
            vm: Arc::new(vm),
            mem,
            devices,
            exit,
            serial,
            i8042,
            vcpus: Vec::new(),
            cmdline: String::new(),
            msr_list: Vec::new(),
            entry: 0,
            kernel: None,
        })
    }

    /// Loads the initrd, writes the command line (with the device announcements), the zero
    /// page and the MP table, and creates and configures the vCPUs.
    pub fn finish_boot(&mut self) -> Result<(), VmmError> {
        let kernel = self.kernel.take().ok_or(VmmError::VmIoctl("finish_boot called twice", kvm_ioctls::Error::new(libc::EINVAL)))?;
        let initrd = match &self.config.initrd {
            Some(p) => Some(loader::load_initrd(&self.mem, p, &kernel)?),
            None => None,
        };
        let mut extra: Vec<String> = I8042_CMDLINE.iter().map(|s| s.to_string()).collect();
        extra.extend_from_slice(self.devices.cmdline_extra());
        let cmdline = loader::build_cmdline(&self.config.cmdline, &extra)?;
        self.cmdline = cmdline.as_cstring().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
        loader::write_boot_info(&self.mem, &kernel, &cmdline, initrd, self.config.memory.bytes())?;
        let count = self.config.vcpus as u8;
        mptable::setup_mptable(&self.mem, count)?;

        self.msr_list = msrs_to_save(&self.kvm)?;
        let supported = self.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(|e| VmmError::VmIoctl("GET_SUPPORTED_CPUID", e))?;
        let tsc_deadline = self.kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        for id in 0..count {
            let fd = self.vm.create_vcpu(u64::from(id)).map_err(|e| VmmError::VmIoctl("CREATE_VCPU", e))?;
            let mut c = supported.clone();
            cpuid::filter(&mut c, id, count, tsc_deadline);
            fd.set_cpuid2(&c).map_err(|e| VmmError::Regs(id, regs::RegsError::Kvm("SET_CPUID2", e)))?;
            regs::setup_msrs(&fd).map_err(|e| VmmError::Regs(id, e))?;
            regs::setup_fpu(&fd).map_err(|e| VmmError::Regs(id, e))?;
            regs::setup_lapic(&fd).map_err(|e| VmmError::Regs(id, e))?;
            if id == 0 {
                regs::setup_regs(&fd, self.entry).map_err(|e| VmmError::Regs(id, e))?;
                regs::setup_sregs(&self.mem, &fd).map_err(|e| VmmError::Regs(id, e))?;
            }
            self.vcpus.push(fd);
        }
        Ok(())
    }
}
