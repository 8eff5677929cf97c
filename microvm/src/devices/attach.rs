//! Attaching the virtio devices named in the VM configuration (`--disk`, `--net`, `--vsock`).

use crate::vmm::Vm;

/// Attaching the configured devices failed.
pub type AttachError = crate::devices::virtio::wiring::WiringError;

/// Attaches every configured virtio device to `vm`, in configuration order.
pub fn attach_configured(vm: &mut Vm) -> Result<(), AttachError> {
    crate::devices::virtio::wiring::attach_all(vm)
}
