//! Snapshots of a paused VM, and VMs restored from them.
//!
//! A snapshot is a directory: `state.json` (the VM configuration, the command line the guest
//! booted with, KVM's VM and vCPU state, the legacy devices' registers) and `memory` (guest
//! RAM, sparse; see [`memory`]). One snapshot can be restored any number of times, each into
//! its own process with its own copy of the memory: a template.
//!
//! Virtio devices are saved as their transport's registers and each queue's configuration
//! and progress (see [`crate::devices::virtio::mmio::TransportState`]); a device that holds
//! nothing of the guest's at that moment can be saved: empty disk slots, vsock without
//! connections, the balloon, virtio-fs devices the guest has not used yet (not mounted),
//! net devices. Boot disks are refused for now, with the device named.

pub mod cpu;
pub mod memory;
pub mod vm_state;

use std::path::{Path, PathBuf};

use husk_config::VmConfig;
use serde::{Deserialize, Serialize};

use crate::devices::legacy::i8042;
use crate::devices::virtio::mmio::TransportState;

/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state.json";
/// The memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// The format of `state.json` this husk-vmm writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest `state.json` read (a few vCPUs take tens of KiB).
const MAX_STATE_BYTES: u64 = 16 << 20;

/// Saving or restoring a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A KVM ioctl.
    #[error("{op} failed")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM did not take a saved MSR.
    #[error("KVM refused the saved value of MSR {0:#x}")]
    Msr(u32),
    /// File I/O.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was done.
        op: &'static str,
        /// With which file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// `state.json` is not a snapshot this husk-vmm can restore.
    #[error("{path:?} is not a usable snapshot state")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The restored VM's configuration (the saved one with the new backends).
    #[error("the restored VM's configuration is not usable")]
    Config(#[source] husk_config::ConfigError),
    /// Inconsistent or unsupported content.
    #[error("snapshot: {0}")]
    Invalid(String),
    /// The VM has a device whose state cannot be saved yet.
    #[error("cannot snapshot a VM with {0}: their state cannot be saved yet")]
    Unsupported(&'static str),
    /// The snapshot directory is not usable.
    #[error("snapshot directory {0:?}: {1}")]
    Dir(PathBuf, &'static str),
    /// The memory file could not be mapped as guest RAM.
    #[error("cannot map {path:?} as guest memory")]
    Map {
        /// The memory file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: crate::memory::MemoryError,
    },
}

/// vm-superio's `SerialState`, which has no serde.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for vm_superio::serial::SerialState {
    fn from(s: &SerialState) -> Self {
        vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// What `state.json` holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The saved VM's configuration.
    pub config: VmConfig,
    /// The command line its guest booted with.
    pub cmdline: String,
    /// Interrupt controllers, PIT, clock.
    pub vm: vm_state::VmState,
    /// One per vCPU, in order.
    pub vcpus: Vec<cpu::VcpuState>,
    /// COM1.
    pub serial: SerialState,
    /// The keyboard controller.
    pub i8042: i8042::State,
    /// The virtio devices' transports, in attach order, by device name.
    pub devices: Vec<(String, TransportState)>,
}

/// The first kind of device of `config` a snapshot cannot hold yet. Disk slots (empty at
/// the snapshot), vsock (without connections), the balloon, virtio-fs devices (before the
/// guest used them; see `Fs::save_progress`) and net devices (restored onto a new tap with
/// `--net`; see `Net::save_queues`) can be saved.
pub fn unsupported_device(config: &VmConfig) -> Option<&'static str> {
    if !config.disk.is_empty() {
        Some("boot disks (--disk; use empty --disk-slots)")
    } else {
        None
    }
}

/// Checks that `dir` is an existing empty directory to save into.
pub fn check_target(dir: &Path) -> Result<(), SnapshotError> {
    if !dir.is_absolute() {
        return Err(SnapshotError::Dir(dir.to_path_buf(), "not an absolute path"));
    }
    let mut entries = std::fs::read_dir(dir).map_err(|source| SnapshotError::Io { op: "read the directory", path: dir.to_path_buf(), source })?;
    if entries.next().is_some() {
        return Err(SnapshotError::Dir(dir.to_path_buf(), "not empty"));
    }
    Ok(())
}

/// Writes `snap` as `dir/state.json` (after the memory: a directory with a state file is
/// complete).
pub fn write_state(dir: &Path, snap: &Snapshot) -> Result<(), SnapshotError> {
    use std::io::Write;
    let path = dir.join(STATE_FILE);
    let io = |op: &'static str| {
        let path = path.clone();
        move |source| SnapshotError::Io { op, path, source }
    };
    let json = serde_json::to_vec(snap).map_err(|e| SnapshotError::Invalid(format!("cannot encode the state: {e}")))?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(io("create"))?;
    f.write_all(&json).map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))?;
    Ok(())
}

/// Reads and checks `dir/state.json`.
pub fn read_state(dir: &Path) -> Result<Snapshot, SnapshotError> {
    use std::io::Read;
    let path = dir.join(STATE_FILE);
    let f = std::fs::File::open(&path).map_err(|source| SnapshotError::Io { op: "open", path: path.clone(), source })?;
    let mut text = Vec::new();
    f.take(MAX_STATE_BYTES + 1).read_to_end(&mut text).map_err(|source| SnapshotError::Io { op: "read", path: path.clone(), source })?;
    if text.len() as u64 > MAX_STATE_BYTES {
        return Err(SnapshotError::Invalid(format!("{path:?} is larger than {MAX_STATE_BYTES} bytes")));
    }
    let snap: Snapshot = serde_json::from_slice(&text).map_err(|source| SnapshotError::Parse { path: path.clone(), source })?;
    if snap.version != FORMAT_VERSION {
        return Err(SnapshotError::Invalid(format!("{path:?} has format version {} (this husk-vmm reads {FORMAT_VERSION})", snap.version)));
    }
    if snap.vcpus.len() != snap.config.vcpus as usize || snap.vcpus.is_empty() {
        return Err(SnapshotError::Invalid(format!("{path:?} holds {} vCPU states for {} vCPUs", snap.vcpus.len(), snap.config.vcpus)));
    }
    if let Some(d) = unsupported_device(&snap.config) {
        return Err(SnapshotError::Unsupported(d));
    }
    Ok(snap)
}
