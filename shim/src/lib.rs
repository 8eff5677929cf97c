//! containerd-shim-husk-v2 (runtime `io.containerd.husk.v2`): runs each pod (or each `ctr run`
//! container) in its own husk microVM, and the `husk` user CLI.
//!
//! * [`lifecycle`]: the `start` / `delete` / serve actions containerd runs the binary with;
//!   `start` groups the containers of a pod onto one shim.
//! * [`task`]: the containerd Task API (create, start, exec, kill, wait, delete, ...), which
//!   only translates requests onto the objects below.
//! * [`sandbox`]: the pod's VM (husk-vmm, agent, disk slots, cgroup, state);
//!   [`container`]: a container in it and its processes.
//! * [`vm`]: spawning `husk-vmm` and the hybrid vsock to the guest; [`jail`]: its confinement;
//!   [`agent`]: the agent client.
//! * [`io`]: containerd's stdio FIFOs bridged to the agent's streams.
//! * [`network`]: the pod's CNI interfaces carried to the guest through taps and tc redirects;
//!   [`hooks`]: the spec's OCI hooks that run on the host.
//! * [`rootfs`], [`state`], [`options`]: rootfs images, per-sandbox state, configuration.
//! * [`cli`]: `husk check`, `husk ps`, `husk logs`; [`guest_text`]: guest text made safe for a
//!   terminal.

// Errors travel only on cold paths (a failed RPC or action); their size does not matter.
#![allow(clippy::result_large_err)]

pub mod agent;
pub mod cli;
pub mod container;
pub mod error;
pub mod guest_text;
pub mod hooks;
pub mod io;
pub mod jail;
pub mod lifecycle;
pub mod network;
pub mod options;
pub mod rootfs;
pub mod sandbox;
pub mod sharedfs;
pub mod state;
pub mod task;
pub mod template;
pub mod unsupported;
pub mod vm;
pub mod workdir;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";
