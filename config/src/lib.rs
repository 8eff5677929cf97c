//! husk configuration: typed, validated, with defaults that work after `make install`.
//!
//! What lives here:
//! - [`VmConfig`]: one microVM as `husk-vmm` runs it (`husk-vmm --config FILE.toml` plus flags
//!   that override the file), including the virtio device configs [`DiskConfig`],
//!   [`NetConfig`], [`VsockConfig`] and [`FsConfig`].
//! - [`api`]: the bodies of husk-vmm's control API and a blocking client for it.
//! - [`HuskConfig`]: `/etc/husk/config.toml` (or `$HUSK_CONFIG`), read by the shim: `[vm]`
//!   defaults, `[shim]` settings and the `[jail]` of husk-vmm.
//!
//! Every error names the field and the offending value ([`ConfigError`]).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod devices;
pub mod error;
pub mod husk;
pub mod size;
pub mod vm;

pub use devices::{DiskConfig, FsConfig, MacAddr, NetConfig, VsockConfig};
pub use error::{ConfigError, Result};
pub use husk::{HuskConfig, JailConfig, ShimConfig, VmDefaults};
pub use size::MemSize;
pub use vm::{kernel_format, slot_name, Console, IrqDelivery, KernelFormat, VmConfig, MAX_VIRTIO_DEVICES};
