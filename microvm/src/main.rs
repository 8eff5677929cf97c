//! `husk-vmm`: runs one microVM.
fn main() {}
