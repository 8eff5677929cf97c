//! One husk microVM: the `husk-vmm` process the shim spawns, its files under
//! `<state_dir>/<id>/`, and the hybrid-vsock connection to the agent inside.

mod process;
mod vsock;

use std::path::PathBuf;

pub use process::{ExitWatch, InheritedFd, Vm, VmPlan, FIRST_INHERITED_FD};
pub use vsock::connect_hybrid_vsock;

/// Errors starting, reaching or stopping a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A file the VM needs (kernel, initramfs, VMM binary) is missing.
    #[error("{what} {path:?} not found (set {field} in the husk configuration)")]
    Missing {
        /// "guest kernel", "initramfs", "husk-vmm".
        what: &'static str,
        /// The path looked at.
        path: PathBuf,
        /// The configuration field naming it.
        field: &'static str,
    },
    /// /dev/kvm cannot be opened.
    #[error("KVM is unavailable: cannot open {path:?} (is the kvm module loaded and the device accessible?)")]
    KvmUnavailable {
        /// The device path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The pod's host cgroup cannot be joined.
    #[error("cannot place husk-vmm in cgroup {path:?}")]
    Cgroup {
        /// The cgroup.procs file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM's jail could not be built or entered.
    #[error("cannot confine husk-vmm")]
    Jail(#[from] crate::jail::JailError),
    /// Spawning the VMM failed.
    #[error("cannot start {vmm:?}")]
    Spawn {
        /// The VMM binary.
        vmm: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited before the agent answered.
    #[error("husk-vmm exited during boot with {status}: {reason}")]
    ExitedDuringBoot {
        /// Its exit status as text.
        status: String,
        /// Its last stderr line, or the tail of the guest console.
        reason: String,
    },
    /// The agent did not answer within the boot timeout.
    #[error("the guest agent did not answer on vsock port {port} within {secs} s (last error: {last})")]
    BootTimeout {
        /// The agent's vsock port.
        port: u32,
        /// The timeout.
        secs: u64,
        /// The last connection error.
        last: String,
    },
    /// The hybrid vsock handshake failed.
    #[error("vsock handshake on {uds:?} port {port} failed: {reason}")]
    Handshake {
        /// The VMM's vsock socket.
        uds: PathBuf,
        /// The guest port.
        port: u32,
        /// What was wrong.
        reason: String,
    },
    /// A socket operation on the VMM's vsock socket failed.
    #[error("vsock {op} on {uds:?}")]
    VsockIo {
        /// What was attempted.
        op: &'static str,
        /// The socket.
        uds: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
