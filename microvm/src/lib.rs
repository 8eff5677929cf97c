//! husk-vmm: KVM, guest memory, vCPUs, boot, devices and the control API of one microVM.
//!
//! A VM is built by [`vmm::Vm::new`] (KVM VM with in-kernel irqchip and PIT, guest memory,
//! kernel, serial console, i8042), gets its virtio devices through
//! [`device_manager::DeviceManager::attach_virtio_mmio`], is finished by
//! [`vmm::Vm::finish_boot`] (initrd, command line, zero page, MP table, vCPUs) and run by
//! [`runner::run`]. How the guest's power-off, reboot and panic become exit statuses is
//! described in [`exit`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod arch;
pub mod bounded_log;
pub mod bus;
pub mod device_manager;
pub mod devices;
pub mod exit;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod runner;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod vmm;

/// Stack size of every thread husk-vmm starts (vCPUs, event loop, API, block workers, ...).
/// Rust's default is 2 MiB, and a 2 MiB stack can land 2 MiB-aligned (the first one mapped
/// right below the aligned guest RAM mapping does): on a host with transparent huge pages set
/// to `always`, the thread's first touch then faults in a whole 2 MiB huge page, measured as
/// 2 MiB of resident memory per VM in the testbed. A stack smaller than a huge page can never
/// hold one. Every thread's frames are small (no large arrays on the stack; buffers live on the
/// heap), so 512 KiB leaves a wide margin.
pub const THREAD_STACK_SIZE: usize = 512 << 10;

/// A named thread builder with husk-vmm's stack size.
pub fn thread_builder(name: impl Into<String>) -> std::thread::Builder {
    std::thread::Builder::new().name(name.into()).stack_size(THREAD_STACK_SIZE)
}

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Records the process start time (call first thing in `main`).
pub fn mark_start() {
    let _ = START.set(Instant::now());
}

/// Time since [`mark_start`].
pub fn since_start() -> Duration {
    START.get().map(|s| s.elapsed()).unwrap_or_default()
}

/// Errors of running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building the VM.
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
    /// vCPU threads.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    /// The API.
    #[error(transparent)]
    Api(#[from] api::ApiError),
    /// Seccomp.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// A disk I/O thread could not be confined.
    #[error("cannot confine a disk I/O thread")]
    IoThread(#[source] devices::virtio::block::worker::WorkerError),
    /// The vsock connector thread could not be confined.
    #[error("cannot confine the vsock connector thread")]
    VsockConnector(#[source] devices::virtio::vsock::connector::ConnectorError),
    /// The main thread's seccomp filter could not be installed.
    #[error("cannot install the main thread's seccomp filter")]
    MainSeccomp(#[source] seccompiler::Error),
    /// The SIGSYS handler that reports a refused call could not be installed.
    #[error("cannot install the SIGSYS handler that reports seccomp violations")]
    SigsysHandler(#[source] std::io::Error),
    /// A thread could not be spawned.
    #[error("cannot spawn a VMM thread")]
    Thread(#[source] std::io::Error),
}
