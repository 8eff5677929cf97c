//! husk-vmm: KVM, guest memory, vCPUs, boot, devices and the control API of one microVM.

pub mod devices;
pub mod memory;
