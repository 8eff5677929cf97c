//! containerd-shim-husk-v2 (runtime `io.containerd.husk.v2`): runs each container in its own
//! husk microVM, and the `husk` user CLI.
//!
//! * [`lifecycle`]: the `start` / `delete` / serve actions containerd runs the binary with.
//! * [`task`]: the containerd Task API (create, start, exec, kill, wait, delete, ...).
//! * [`vm`]: spawning `husk-vmm` and the hybrid vsock to the guest; [`agent`]: the agent client.
//! * [`io`]: containerd's stdio FIFOs bridged to the agent's streams.
//! * [`rootfs`], [`state`], [`options`]: rootfs image, per-VM state directory, configuration.
//! * [`cli`]: `husk check`, `husk ps`, `husk logs`.

// Errors travel only on cold paths (a failed RPC or action); their size does not matter.
#![allow(clippy::result_large_err)]

pub mod agent;
pub mod cli;
pub mod error;
pub mod io;
pub mod lifecycle;
pub mod options;
pub mod rootfs;
pub mod sharedfs;
pub mod state;
pub mod task;
pub mod vm;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";
