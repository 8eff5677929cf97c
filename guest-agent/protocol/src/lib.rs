//! The husk agent API shared by the shim (client) and the agent (server).
//!
//! The API is defined in `proto/agent.proto` (package `husk.agent.v1`); read its comments for
//! the semantics of every call, the error codes and the stdio guarantee. This crate holds the
//! generated message types ([`agent`]) and the sync ttrpc client and server ([`agent_ttrpc`]):
//!
//! ```no_run
//! use husk_protocol::{agent, agent_ttrpc::AgentClient};
//! # fn main() -> Result<(), ttrpc::Error> {
//! let client = AgentClient::new(ttrpc::Client::connect("unix:///run/agent.sock")?);
//! let version = client.version(ttrpc::context::with_timeout(1_000_000_000), &agent::VersionRequest::new())?;
//! assert_eq!(version.api_version, husk_protocol::API_VERSION);
//! # Ok(())
//! # }
//! ```

#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::undocumented_unsafe_blocks, unused_qualifications)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/modules.rs"));
}

/// Generated protobuf messages of `husk.agent.v1`.
pub use generated::agent;
/// Generated sync ttrpc client (`AgentClient`) and server (`Agent` trait, `create_agent`).
pub use generated::agent_ttrpc;

/// The API version of this crate's `.proto` (`husk.agent.v1`), reported by `Version`.
pub const API_VERSION: u32 = 1;

/// Default vsock port the agent listens on (kernel cmdline `husk.agent_port=N` overrides).
pub const DEFAULT_AGENT_PORT: u32 = 1024;

/// Kernel command-line key that overrides [`DEFAULT_AGENT_PORT`].
pub const AGENT_PORT_CMDLINE_KEY: &str = "husk.agent_port";

/// Kernel command-line key: the order (2^N pages) of the smallest free block the guest
/// reports to the host through free page reporting; the agent sets it in the guest kernel.
pub const PAGE_REPORTING_ORDER_CMDLINE_KEY: &str = "husk.page_reporting_order";

/// Largest `data` accepted by `WriteStdin` and largest `max_bytes` of a read (1 MiB).
pub const MAX_STDIO_CHUNK: u32 = 1 << 20;

/// `max_bytes` used by reads that pass 0.
pub const DEFAULT_READ_CHUNK: u32 = 64 << 10;

/// Directory under which the agent mounts a container's extra disks:
/// `<DISKS_DIR>/<container_id>/<disk name>`.
pub const DISKS_DIR: &str = "/run/husk/disks";

/// The pod's directory in the guest: the agent's state of the pod (its /dev/shm tmpfs, the
/// host's shared files). Bind-mount sources of a spec must lie below it or below the
/// container's disk directory ([`DISKS_DIR`]).
pub const POD_DIR: &str = "/run/husk/pod";

/// The pod's /dev/shm: a tmpfs the agent mounts when the pod's sandbox container is created.
/// The shim points a spec's bind mount of the host's sandbox shm (containerd's CRI plugin
/// gives one to every container of a pod) here.
pub const POD_SHM_DIR: &str = "/run/husk/pod/shm";

/// Where the pod's shared host files appear in the guest (virtio-fs).
pub const POD_SHARED_DIR: &str = "/run/husk/pod/shared";

/// Kubernetes emptyDir volumes of the pod: `<POD_EMPTY_DIR>/<name>`, directories in guest
/// memory the agent creates on first use, shared by the pod's containers.
pub const POD_EMPTY_DIR: &str = "/run/husk/pod/emptydir";

/// Fewest bytes of `entropy` a SyncAfterRestore request carries (256 bits, what the kernel's
/// CRNG needs to count as seeded).
pub const MIN_RESTORE_ENTROPY: usize = 32;

/// Most bytes of `entropy` a SyncAfterRestore request carries.
pub const MAX_RESTORE_ENTROPY: usize = 512;

/// Earliest `realtime_ns` a SyncAfterRestore request may carry: 2020-01-01T00:00:00Z. An
/// earlier host clock is wrong and would only make the guest's wall clock wrong too.
pub const MIN_RESTORE_REALTIME_NS: i64 = 1_577_836_800 * 1_000_000_000;

/// Latest `realtime_ns` a SyncAfterRestore request may carry (exclusive): 2200-01-01T00:00:00Z,
/// well inside what Linux accepts for CLOCK_REALTIME.
pub const MAX_RESTORE_REALTIME_NS: i64 = 7_258_118_400 * 1_000_000_000;
