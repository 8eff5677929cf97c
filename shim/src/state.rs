//! Per-VM state on the host: `<state_dir>/<id>/` holds the VMM's sockets, the console log, the
//! VMM's own log, an uncached rootfs image and `state.json` (read by `husk ps` and by the
//! `delete` action after a shim died).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, ShimError};

/// Name of the file in the bundle that records where the state directory is.
pub const BUNDLE_POINTER: &str = "husk-state-dir";

/// What `state.json` records.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateInfo {
    /// Container (and VM) id.
    pub id: String,
    /// containerd namespace.
    pub namespace: String,
    /// The OCI bundle.
    pub bundle: PathBuf,
    /// Pid of the shim serving it.
    pub shim_pid: u32,
    /// Pid of husk-vmm (0 before it started).
    pub vmm_pid: u32,
    /// The rootfs image, and whether it lives in the shared cache (then it is kept).
    pub image: Option<PathBuf>,
    /// Whether `image` is a cached image.
    pub image_cached: bool,
    /// Seconds since the Unix epoch when the VM was created.
    pub created_unix: u64,
}

/// The state directory of one VM.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates `<root>/<id>/` (mode 0700). An id that is not a plain name is rejected.
    pub fn create(root: &Path, id: &str) -> Result<StateDir> {
        validate_id(id)?;
        std::fs::create_dir_all(root).map_err(|e| ShimError::io("create state root", root, e))?;
        let dir = root.join(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ShimError::AlreadyExists { kind: "husk VM state directory", id: dir.display().to_string() })
            }
            Err(e) => return Err(ShimError::io("create state directory", &dir, e)),
        }
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| ShimError::io("chmod state directory", &dir, e))?;
        Ok(StateDir { dir })
    }

    /// An existing state directory (for cleanup).
    pub fn open(dir: PathBuf) -> StateDir {
        StateDir { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// VMM control API socket.
    pub fn api_sock(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
    /// Hybrid vsock socket.
    pub fn vsock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    /// Guest console log.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The VMM's own stdout/stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    /// Where an uncached rootfs image is written.
    pub fn rootfs_image(&self) -> PathBuf {
        self.dir.join("rootfs.img")
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

    /// Removes the directory and everything in it (an uncached image included). Missing is fine.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ShimError::io("remove state directory", &self.dir, e)),
        }
    }
}

/// Ids become path components: allow what containerd allows and nothing that escapes.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ShimError::invalid("container id", format!("{id:?}: use 1-128 of [A-Za-z0-9_.-], not starting with '.'")))
    }
}

/// Lists the state directories under `root` with their `state.json` (unreadable ones as errors).
pub fn list(root: &Path) -> Result<Vec<(StateDir, Result<StateInfo>)>> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ShimError::io("read state root", root, e)),
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            let sd = StateDir::open(entry.path());
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
        let sd = StateDir::create(root.path(), "c1").unwrap();
        let info = StateInfo { id: "c1".into(), vmm_pid: 42, ..Default::default() };
        sd.write_info(&info).unwrap();
        assert_eq!(sd.read_info().unwrap(), info);
        let e = StateDir::create(root.path(), "c1").unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let l = list(root.path()).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].1.as_ref().unwrap().vmm_pid, 42);
        sd.remove().unwrap();
        assert!(!root.path().join("c1").exists());
        sd.remove().unwrap();
    }

    #[test]
    fn ids_that_escape_are_rejected() {
        for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        validate_id("abc-1_2.3").unwrap();
    }
}
