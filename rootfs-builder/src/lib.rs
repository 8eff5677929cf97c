//! Builds what the husk guest boots (initramfs) and mounts (container block images).
