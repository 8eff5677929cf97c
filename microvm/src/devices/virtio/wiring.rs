//! Building the virtio devices from the VM configuration and attaching them to the VM.

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;

use super::balloon::{Balloon, BalloonError};
use super::block::{Block, BlockConfig, BlockError, DiskHandle};
use super::fs::{Fs, FsConfig, FsError};
use super::mmio::{MmioTransport, TransportError};
use super::net::{Net, NetConfig, NetError};
use super::vsock::{Vsock, VsockConfig, VsockError};
use super::VirtioDevice;
use crate::device_manager::{CounterSource, DeviceError};
use crate::vmm::Vm;

/// A configured virtio device could not be built or attached.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    /// A disk could not be set up.
    #[error("--disk number {index} ({path})")]
    Block {
        /// Position in the `--disk` list.
        index: usize,
        /// Image path.
        path: String,
        /// The cause.
        #[source]
        source: BlockError,
    },
    /// A disk slot could not be set up.
    #[error("disk slot {name}")]
    Slot {
        /// The slot's name.
        name: String,
        /// The cause.
        #[source]
        source: BlockError,
    },
    /// A network device could not be set up.
    #[error("--net tap={tap}")]
    Net {
        /// Tap name.
        tap: String,
        /// The cause.
        #[source]
        source: NetError,
    },
    /// The vsock device could not be set up.
    #[error("--vsock")]
    Vsock(#[source] VsockError),
    /// A virtio-fs device could not be set up.
    #[error("--fs tag={tag}")]
    Fs {
        /// Tag.
        tag: String,
        /// The cause.
        #[source]
        source: FsError,
    },
    /// The free page reporting balloon could not be set up.
    #[error("--free-page-reporting")]
    Balloon(#[source] BalloonError),
    /// The transport could not be built.
    #[error("virtio-mmio transport of {name}")]
    Transport {
        /// Device name.
        name: String,
        /// The cause.
        #[source]
        source: TransportError,
    },
    /// The VMM refused the device.
    #[error("attaching {name}")]
    Attach {
        /// Device name.
        name: String,
        /// The cause.
        #[source]
        source: DeviceError,
    },
}

impl CounterSource for super::block::metrics::BlockMetrics {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.pairs()
    }
}

impl CounterSource for super::net::metrics::NetMetrics {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.pairs()
    }
}

impl CounterSource for super::fs::metrics::FsMetrics {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.pairs()
    }
}

impl CounterSource for super::balloon::metrics::BalloonMetrics {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.pairs()
    }
}

impl CounterSource for super::vsock::metrics::VsockMetrics {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.pairs()
    }
}

/// Builds every `--disk`, `--disk-slots`, `--net`, `--vsock`, `--fs` and
/// `--free-page-reporting` device of `vm.config` and attaches it, in that order (disks in the
/// order given, then the empty slots, so they appear as vda, vdb, ... in the guest). Counters
/// are registered as `block.<id>` (slots: `block.slotN`), `net.<tap>`, `vsock`, `fs.<tag>` and
/// `balloon`; every disk and slot gets a [`DiskHandle`] for the control API.
pub fn attach_all(vm: &mut Vm) -> Result<(), WiringError> {
    let disks = vm.config.disk.clone();
    for (index, d) in disks.iter().enumerate() {
        let id = d.id.clone().unwrap_or_else(|| format!("disk{index}"));
        let cfg = BlockConfig { path: d.path.clone(), read_only: d.read_only, id, fd: d.fd };
        let dev = Block::new(cfg).map_err(|source| WiringError::Block { index, path: d.path.display().to_string(), source })?;
        attach_disk(vm, dev)?;
    }
    for n in 0..vm.config.disk_slots {
        let name = husk_config::slot_name(n);
        let dev = Block::new_slot(name.clone()).map_err(|source| WiringError::Slot { name, source })?;
        attach_disk(vm, dev)?;
    }
    let nets = vm.config.net.clone();
    for n in &nets {
        let cfg = NetConfig { tap: n.tap.clone(), mac: n.mac.map(|m| m.0), netns: n.netns.clone(), fd: n.fd };
        let dev = Net::new(cfg).map_err(|source| WiringError::Net { tap: n.tap.clone(), source })?;
        let counters = dev.counters().clone();
        attach(vm, &format!("virtio-net-{}", n.tap), dev)?;
        vm.devices.register_counters(format!("net.{}", n.tap), counters);
    }
    if let Some(v) = vm.config.vsock.clone() {
        let cfg = VsockConfig { guest_cid: u64::from(v.cid), uds_path: v.uds.clone() };
        let dev = Vsock::new(cfg).map_err(WiringError::Vsock)?;
        vm.devices.register_vsock_connector(dev.connector());
        let counters = dev.counters().clone();
        attach(vm, "virtio-vsock", dev)?;
        vm.devices.register_counters("vsock", counters);
    }
    let shares = vm.config.fs.clone();
    for f in &shares {
        let cfg = FsConfig { tag: f.tag.clone(), socket: f.socket.clone(), fd: f.fd };
        let dev = Fs::new(cfg).map_err(|source| WiringError::Fs { tag: f.tag.clone(), source })?;
        let counters = dev.counters().clone();
        attach(vm, &format!("virtio-fs-{}", f.tag), dev)?;
        vm.devices.register_counters(format!("fs.{}", f.tag), counters);
    }
    if vm.config.free_page_reporting {
        let dev = Balloon::new().map_err(WiringError::Balloon)?;
        let counters = dev.counters().clone();
        attach(vm, "virtio-balloon", dev)?;
        vm.devices.register_counters("balloon", counters);
    }
    Ok(())
}

/// Attaches a disk or slot: its I/O thread (for seccomp), counters and API handle.
fn attach_disk(vm: &mut Vm, dev: Block) -> Result<(), WiringError> {
    let name = dev.name().to_string();
    let counters = dev.counters().clone();
    let io_thread = dev.io_thread();
    let (dev, transport) = attach(vm, &format!("virtio-blk-{name}"), dev)?;
    vm.devices.register_io_thread(io_thread);
    vm.devices.register_counters(format!("block.{name}"), counters);
    vm.devices.register_disk(DiskHandle::new(dev, transport));
    Ok(())
}

/// Puts `dev` behind a virtio-mmio transport and attaches it; returns both for callers that
/// act on them at run time.
fn attach<D>(vm: &mut Vm, name: &str, dev: D) -> Result<(Arc<Mutex<D>>, Arc<MmioTransport>), WiringError>
where
    D: VirtioDevice + MutEventSubscriber + Send + 'static,
{
    let dev = Arc::new(Mutex::new(dev));
    let transport = MmioTransport::new(vm.mem.clone(), dev.clone()).map_err(|source| WiringError::Transport { name: name.to_string(), source })?;
    let transport = Arc::new(transport);
    vm.devices
        .attach_virtio_mmio(&vm.vm, name, transport.clone(), transport.interrupt(), transport.queue_events(), dev.clone())
        .map_err(|source| WiringError::Attach { name: name.to_string(), source })?;
    vm.devices.register_transport(name, transport.clone());
    Ok((dev, transport))
}
