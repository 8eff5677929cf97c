//! Template VMs: a pod's VM restored from a saved one instead of booting a kernel.
//!
//! A template is a VM of one shape (vCPUs, memory, network interfaces, shared host files)
//! booted with husk's kernel and initramfs up to its agent's first answer, and saved with
//! husk-vmm's snapshot (`PUT /vm/snapshot`, microvm/API.md) before anything of a pod reaches
//! it: no container, no network configuration, no virtio-fs mount (the guest never mounted
//! it), no open vsock connection. A pod of that shape then starts with `husk-vmm --restore`:
//! its own memory (the template's memory file mapped copy-on-write, shared with the other
//! pods of the template; husk-vmm relays virtiofsd's requests through memory of its own),
//! its own taps, virtiofsd connection and sockets; its sandbox
//! container's root disk goes into a disk slot; the agent sets the guest's wall clock and
//! reseeds its random number generator before anything else ([`crate::agent::sync_after_restore`]).
//!
//! Templates live under `<shim.template_dir>/<key>/`, where the key hashes what the
//! template depends on ([`key_text`]: the kernel, initramfs and husk-vmm files, the command
//! line and the device layout). The first pod of a shape makes its template ([`make`]) before
//! its VM starts (a few seconds, once per shape and installation) and then restores it like
//! every later pod; a lock file keeps two shims from making the same one at once (the second
//! boots its pod the usual way), and a template that cannot be made leaves the pod to boot.

mod make;

use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use husk_config::{HuskConfig, MemSize};

pub use make::make;

/// The file in a template directory that holds its key text.
const KEY_FILE: &str = "key";
/// The snapshot's state file (husk-vmm's `snapshot::STATE_FILE`).
pub const STATE_FILE: &str = "state.json";
/// The snapshot's memory file (husk-vmm's `snapshot::MEMORY_FILE`).
pub const MEMORY_FILE: &str = "memory";

/// What a template is made for: VMs of this shape restore it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory.
    pub memory: MemSize,
    /// Network interfaces (taps).
    pub nics: usize,
    /// Whether the pod's shared host files are served (a virtio-fs device).
    pub shared_fs: bool,
}

/// The MAC of the template's `i`-th network device (locally administered), which every pod
/// restored from it keeps on its device: the agent finds the interface by it and gives it
/// the pod's MAC.
pub fn guest_mac(i: usize) -> [u8; 6] {
    [0x02, 0x48, 0x55, 0x53, 0x4b, i as u8]
}

/// Disk slots of a template and of the pods restored from it: one more than `[vm]
/// disk_slots`, since the sandbox container's root disk goes into a slot too (a booted pod
/// has it as a boot disk), so the same number of containers can join.
pub fn disk_slots(cfg: &HuskConfig) -> u32 {
    cfg.vm.disk_slots + 1
}

/// Where templates are kept.
pub fn root(cfg: &HuskConfig) -> PathBuf {
    cfg.shim.template_dir.clone()
}

/// The host kernel, as `uname` gives it: a template's vCPU state is what this KVM saved.
fn host_kernel() -> String {
    match nix::sys::utsname::uname() {
        Ok(u) => format!("{} {}", u.release().to_string_lossy(), u.version().to_string_lossy()),
        Err(_) => "unknown".into(),
    }
}

/// A file as the key sees it: path, size and modification time (a rebuilt kernel or
/// initramfs, a reinstalled husk-vmm make another key).
fn file_id(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!("{}:{}:{}.{}", path.display(), m.len(), m.mtime(), m.mtime_nsec()),
        Err(_) => format!("{}:missing", path.display()),
    }
}

/// Everything a template depends on, as text: two VMs with the same text have the same
/// guest (kernel, initramfs, command line), the same device layout and the same VMM.
pub fn key_text(cfg: &HuskConfig, shape: &Shape) -> String {
    format!(
        "husk template 1\nhost {}\nkernel {}\ninitramfs {}\nvmm {}\ncmdline {}\nvcpus {}\nmemory {}\ndisk_slots {}\nnics {}\nshared_fs {}\nfree_page_reporting {}\n",
        host_kernel(),
        file_id(&cfg.vm.kernel),
        file_id(&cfg.vm.initramfs),
        file_id(&cfg.shim.vmm),
        crate::sandbox::kernel_cmdline(cfg),
        shape.vcpus,
        shape.memory.bytes(),
        disk_slots(cfg),
        shape.nics,
        shape.shared_fs,
        cfg.vm.free_page_reporting,
    )
}

/// The directory name of a key.
fn key_name(text: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The directory of the template of `shape`, complete or not.
pub fn dir_of(cfg: &HuskConfig, shape: &Shape) -> PathBuf {
    root(cfg).join(key_name(&key_text(cfg, shape)))
}

/// The template of `shape`, if one is complete and made for exactly this configuration.
pub fn find(cfg: &HuskConfig, shape: &Shape) -> Option<PathBuf> {
    if !cfg.vm.templates {
        return None;
    }
    let text = key_text(cfg, shape);
    let dir = root(cfg).join(key_name(&text));
    let stored = std::fs::read_to_string(dir.join(KEY_FILE)).ok()?;
    (stored == text && dir.join(STATE_FILE).is_file() && dir.join(MEMORY_FILE).is_file()).then_some(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(state: &Path) -> HuskConfig {
        let mut c = HuskConfig::default();
        c.shim.template_dir = state.to_path_buf();
        c.vm.templates = true;
        c
    }

    fn shape() -> Shape {
        Shape { vcpus: 1, memory: MemSize(256 << 20), nics: 1, shared_fs: true }
    }

    #[test]
    fn a_template_is_found_only_complete_and_for_the_same_configuration() {
        let state = tempfile::tempdir().unwrap();
        let c = cfg(state.path());
        assert_eq!(find(&c, &shape()), None);
        let dir = dir_of(&c, &shape());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(KEY_FILE), key_text(&c, &shape())).unwrap();
        std::fs::write(dir.join(STATE_FILE), "{}").unwrap();
        assert_eq!(find(&c, &shape()), None, "no memory file yet");
        std::fs::write(dir.join(MEMORY_FILE), "").unwrap();
        assert_eq!(find(&c, &shape()), Some(dir.clone()));
        // Another shape, another command line, templates off: not this one.
        assert_eq!(find(&c, &Shape { nics: 2, ..shape() }), None);
        let mut other = c.clone();
        other.vm.cmdline = "quiet".into();
        assert_eq!(find(&other, &shape()), None);
        assert_ne!(dir_of(&other, &shape()), dir);
        let mut off = c.clone();
        off.vm.templates = false;
        assert_eq!(find(&off, &shape()), None);
        // A stale key text in the directory (a hash collision, or a changed format).
        std::fs::write(dir.join(KEY_FILE), "something else").unwrap();
        assert_eq!(find(&c, &shape()), None);
    }

    #[test]
    fn the_key_follows_the_files_it_names() {
        let state = tempfile::tempdir().unwrap();
        let mut c = cfg(state.path());
        let kernel = state.path().join("vmlinux");
        std::fs::write(&kernel, "one").unwrap();
        c.vm.kernel = kernel.clone();
        let before = key_text(&c, &shape());
        std::fs::write(&kernel, "a rebuilt kernel").unwrap();
        assert_ne!(key_text(&c, &shape()), before);
        assert!(before.contains("nics 1") && before.contains(&format!("disk_slots {}", c.vm.disk_slots + 1)), "{before}");
    }
}
