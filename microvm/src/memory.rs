//! Guest memory: the one type every part of husk-vmm uses to reach it.

/// Guest memory of one microVM (vm-memory, anonymous mmap regions).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
