//! `containerd-shim-husk-v2`: the containerd shim v2 for husk.
fn main() {}
