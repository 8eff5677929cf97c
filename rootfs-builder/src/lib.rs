//! Builds what the husk guest boots (initramfs) and mounts (container block images).
//!
//! * [`build_initramfs`]: a reproducible cpio "newc" archive (gzip-compressed or plain) with
//!   the statically linked husk-agent as `/init`.
//! * [`image_from_dir`], [`image_from_layers`], [`image_from_mounts`]: ext4 or erofs block images
//!   of a directory, a stack of OCI layer tarballs, or the rootfs mounts containerd hands a shim.
//!   Images of read-only content are cached by content key, so the second container of an image
//!   builds (and copies) nothing.

pub mod image;
pub mod initramfs;

pub use image::{
    image_from_dir, image_from_layers, image_from_mounts, prune_cache, sweep_dead_builders, BuiltImage, FsType, ImageError, ImageLease, ImageOptions,
    LayerSpec, MountSpec, PruneReport, Tools,
};
pub use initramfs::{build_initramfs, InitramfsError, InitramfsReport, InitramfsSpec};
