//! Per-sandbox state on the host: `<state_dir>/<namespace>/<sandbox-id>/` holds the VMM's
//! sockets, its configuration, the console log, the VMM's own log and `state.json` (read by
//! `husk ps` and by the `delete` action after a shim died). Uncached rootfs images
//! (`rootfs.img` of the sandbox container, `containers/<id>/rootfs.img` of the others) go to
//! the sandbox's [`WorkDir`] on disk once one is attached ([`StateDir::with_images`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Result, ShimError};
use crate::workdir::WorkDir;

/// Name of the file in the bundle that records where the state directory is.
pub const BUNDLE_POINTER: &str = "husk-state-dir";

/// What `state.json` records.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateInfo {
    /// Sandbox id: the pod's sandbox container, or a `ctr run` container that is its own pod.
    pub id: String,
    /// containerd namespace.
    pub namespace: String,
    /// The OCI bundle of the sandbox container.
    pub bundle: PathBuf,
    /// Pid of the shim serving it.
    pub shim_pid: u32,
    /// Pid of husk-vmm (0 before it started).
    pub vmm_pid: u32,
    /// vCPUs and MiB of the VM.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Seconds since the Unix epoch when the VM was created.
    pub created_unix: u64,
    /// The containers in the VM, the sandbox container first.
    #[serde(default)]
    pub containers: Vec<ContainerInfo>,
}

/// One container of a sandbox, as `state.json` records it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// Its OCI bundle.
    pub bundle: PathBuf,
    /// The disk slot its root filesystem is attached to ("" for the sandbox's boot disk).
    pub slot: String,
    /// The rootfs image, and whether it lives in the shared cache (then it is kept).
    pub image: PathBuf,
    /// Whether `image` is a cached image.
    pub image_cached: bool,
}

/// The state directory of one VM.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    /// Where the sandbox's own images go (else into `dir`).
    images: Option<Arc<WorkDir>>,
}

impl StateDir {
    /// The directory of sandbox `id` of containerd namespace `namespace` under `root`.
    pub fn path_of(root: &Path, namespace: &str, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        validate_namespace(namespace)?;
        Ok(root.join(namespace).join(dir_name(id)))
    }

    /// Creates `<root>/<namespace>/<id>/` (mode 0700). Names that are not plain are rejected,
    /// and so is a directory whose sockets would not fit a unix socket path.
    pub fn create(root: &Path, namespace: &str, id: &str) -> Result<StateDir> {
        let dir = Self::path_of(root, namespace, id)?;
        // The longest socket in it.
        let longest = StateDir { dir: dir.clone(), images: None }.vsock();
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ShimError::invalid(
                "state directory",
                format!("{}: its sockets would be longer than the {MAX_SOCKET_PATH} bytes of a unix socket path; set a shorter shim.state_dir", dir.display()),
            ));
        }
        let parent = dir.parent().unwrap_or(root);
        std::fs::create_dir_all(parent).map_err(|e| ShimError::io("create state root", parent, e))?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ShimError::AlreadyExists { kind: "husk VM state directory", id: dir.display().to_string() })
            }
            Err(e) => return Err(ShimError::io("create state directory", &dir, e)),
        }
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(|e| ShimError::io("chmod state directory", &dir, e))?;
        let sd = StateDir { dir, images: None };
        let vmm_dir = sd.vmm_dir();
        if let Err(e) = std::fs::create_dir_all(&vmm_dir) {
            let _ = std::fs::remove_dir_all(&sd.dir);
            return Err(ShimError::io("create the VMM's directory", &vmm_dir, e));
        }
        Ok(sd)
    }

    /// An existing state directory (for cleanup).
    pub fn open(dir: PathBuf) -> StateDir {
        StateDir { dir, images: None }
    }

    /// Puts the sandbox's own images into `work` (on disk) from now on; [`StateDir::remove`]
    /// removes it too.
    pub fn with_images(mut self, work: WorkDir) -> StateDir {
        self.images = Some(Arc::new(work));
        self
    }

    fn image_dir(&self) -> &Path {
        self.images.as_deref().map_or(&self.dir, WorkDir::path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// The root of husk-vmm's jail ([`crate::jail`]).
    pub fn jail_root(&self) -> PathBuf {
        self.dir.join("jail")
    }
    /// The only directory husk-vmm writes: its sockets and the console log.
    pub fn vmm_dir(&self) -> PathBuf {
        self.jail_root().join(crate::jail::RUN_DIR)
    }
    /// VMM control API socket.
    pub fn api_sock(&self) -> PathBuf {
        self.vmm_dir().join("api.sock")
    }
    /// Hybrid vsock socket.
    pub fn vsock(&self) -> PathBuf {
        self.vmm_dir().join("vsock.sock")
    }
    /// Guest console log.
    pub fn console_log(&self) -> PathBuf {
        self.vmm_dir().join("console.log")
    }
    /// The VMM's own stdout/stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    /// Where an uncached rootfs image of the sandbox container is written.
    pub fn rootfs_image(&self) -> PathBuf {
        self.image_dir().join("rootfs.img")
    }
    /// The directory of another container of the sandbox (its uncached rootfs image).
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.image_dir().join("containers").join(id)
    }
    /// husk-vmm's configuration file (in its jail, which it reads it from).
    pub fn vm_config(&self) -> PathBuf {
        self.jail_root().join("vm.toml")
    }
    fn info_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Writes `state.json` atomically.
    pub fn write_info(&self, info: &StateInfo) -> Result<()> {
        let path = self.info_path();
        let tmp = self.dir.join(".state.json.tmp");
        let text = serde_json::to_vec_pretty(info).map_err(|e| ShimError::io("encode", &path, e.into()))?;
        std::fs::write(&tmp, text).map_err(|e| ShimError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| ShimError::io("rename", &path, e))
    }

    /// Reads `state.json`.
    pub fn read_info(&self) -> Result<StateInfo> {
        let path = self.info_path();
        let text = std::fs::read(&path).map_err(|e| ShimError::io("read", &path, e))?;
        serde_json::from_slice(&text).map_err(|e| ShimError::io("parse", &path, e.into()))
    }

    /// Removes the directory and everything in it, the image work directory (uncached
    /// images), and the namespace directory above it once that is empty. Missing is fine.
    pub fn remove(&self) -> Result<()> {
        if let Some(w) = &self.images {
            w.remove()?;
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ShimError::io("remove state directory", &self.dir, e)),
        }
        if let Some(ns) = self.dir.parent() {
            // Fails while another sandbox of the namespace is there: fine.
            let _ = std::fs::remove_dir(ns);
        }
        Ok(())
    }
}

/// Longest path of a unix socket (sun_path less the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Longest sandbox directory name: the VMM's sockets live in the directory, and CRI's 64-hex
/// sandbox ids would leave little room for `state_dir` in a unix socket path.
const MAX_DIR_NAME: usize = 28;

/// The directory name of sandbox `id`: the id itself, or for a long id its first 19
/// characters and a hash of the whole (`state.json` keeps the full id).
pub fn dir_name(id: &str) -> String {
    if id.len() <= MAX_DIR_NAME {
        return id.to_string();
    }
    // FNV-1a: stable across builds and Rust versions, which std's hasher does not promise.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}-{:08x}", &id[..MAX_DIR_NAME - 9], h as u32)
}

/// containerd namespaces become path components: the same rules as ids.
pub fn validate_namespace(ns: &str) -> Result<()> {
    validate_id(ns).map_err(|_| ShimError::invalid("containerd namespace", format!("{ns:?}: use 1-128 of [A-Za-z0-9_.-], not starting with '.'")))
}

/// Ids become path components: allow what containerd allows and nothing that escapes.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty() && id.len() <= 128 && !id.starts_with('.') && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ShimError::invalid("container id", format!("{id:?}: use 1-128 of [A-Za-z0-9_.-], not starting with '.'")))
    }
}

/// Lists the sandbox directories under `root` (`<namespace>/<id>`) with their `state.json`
/// (unreadable ones as errors).
pub fn list(root: &Path) -> Result<Vec<(StateDir, Result<StateInfo>)>> {
    let dirs = |p: &Path| -> Result<Vec<PathBuf>> {
        match std::fs::read_dir(p) {
            Ok(rd) => Ok(rd.flatten().filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false)).map(|e| e.path()).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ShimError::io("read state directory", p, e)),
        }
    };
    let mut out = Vec::new();
    for ns in dirs(root)? {
        for dir in dirs(&ns)? {
            let sd = StateDir::open(dir);
            let info = sd.read_info();
            out.push((sd, info));
        }
    }
    out.sort_by(|a, b| a.0.path().cmp(b.0.path()));
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn create_write_read_list_remove() {
        let root = tempfile::tempdir().unwrap();
        let sd = StateDir::create(root.path(), "default", "c1").unwrap();
        let info = StateInfo { id: "c1".into(), vmm_pid: 42, ..Default::default() };
        sd.write_info(&info).unwrap();
        assert_eq!(sd.read_info().unwrap(), info);
        let e = StateDir::create(root.path(), "default", "c1").unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        // The same id in another containerd namespace is another sandbox.
        let other = StateDir::create(root.path(), "k8s.io", "c1").unwrap();
        let l = list(root.path()).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].1.as_ref().unwrap().vmm_pid, 42);
        sd.remove().unwrap();
        assert!(!root.path().join("default/c1").exists());
        assert!(other.path().exists());
        sd.remove().unwrap();
    }

    #[test]
    fn ids_that_escape_are_rejected() {
        for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        validate_id("abc-1_2.3").unwrap();
        assert!(StateDir::create(Path::new("/tmp"), "../x", "c").is_err());
    }

    #[test]
    fn long_ids_get_short_distinct_directories() {
        let a = format!("{}1", "f".repeat(63));
        let b = format!("{}2", "f".repeat(63));
        assert_eq!(dir_name("short-id"), "short-id");
        assert_eq!(dir_name(&a).len(), MAX_DIR_NAME);
        assert_ne!(dir_name(&a), dir_name(&b));
        assert_eq!(dir_name(&a), dir_name(&a.clone()));
        let root = tempfile::tempdir().unwrap();
        let sd = StateDir::create(root.path(), "k8s.io", &a).unwrap();
        assert_eq!(sd.path(), StateDir::path_of(root.path(), "k8s.io", &a).unwrap());
    }

    #[test]
    fn a_state_dir_too_long_for_its_sockets_is_refused_by_name() {
        let root = tempfile::tempdir().unwrap();
        let long = root.path().join("x".repeat(70));
        let e = StateDir::create(&long, "k8s.io", &"a".repeat(64)).unwrap_err().to_string();
        assert!(e.contains("shorter shim.state_dir"), "{e}");
        assert!(!long.exists());
    }
}
