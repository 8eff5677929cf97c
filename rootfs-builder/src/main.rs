//! `husk-rootfs`: the rootfs builder CLI.
fn main() {}
