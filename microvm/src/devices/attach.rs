//! Attaching the virtio devices named in the VM configuration (`--disk`, `--net`, `--vsock`).

use crate::vmm::Vm;

/// Attaching the configured devices failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// This build has no virtio device wiring yet.
    #[error("{0} requested, but this husk-vmm build cannot attach virtio devices yet")]
    Unsupported(&'static str),
}

/// Attaches every configured virtio device to `vm`, in configuration order.
pub fn attach_configured(vm: &mut Vm) -> Result<(), AttachError> {
    if !vm.config.disk.is_empty() {
        return Err(AttachError::Unsupported("--disk"));
    }
    if !vm.config.net.is_empty() {
        return Err(AttachError::Unsupported("--net"));
    }
    if vm.config.vsock.is_some() {
        return Err(AttachError::Unsupported("--vsock"));
    }
    Ok(())
}
