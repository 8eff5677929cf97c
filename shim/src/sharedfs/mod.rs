//! Host files and volumes for a pod's guest, over virtio-fs.
//!
//! Each pod sandbox has one shared directory, `<state dir>/shared`, and one upstream
//! virtiofsd serving exactly that directory to the guest (husk-vmm's `--fs tag=...,socket=...`
//! device). A volume reaches the guest by being bind-mounted under the shared directory
//! ([`SharedDir::share`]): a directory or a single file (such as `/etc/hosts`), read-only ones
//! remounted read-only, never copied. The shared directory is a shared mount, so a bind mount
//! made after virtiofsd started propagates into virtiofsd's own mount namespace (its
//! `--sandbox namespace` copy of the tree is a slave of ours).
//!
//! - [`SharedFs`]: the two together for one sandbox: [`SharedFs::start`], `share`, `unshare`,
//!   [`SharedFs::stop`] (also run on drop).
//! - [`SharedDir`]: the directory and its bind mounts.
//! - [`Virtiofsd`]: the daemon: spawned sandboxed (its own mount, pid and net namespaces,
//!   seccomp kill), killed if the shim dies (`PR_SET_PDEATHSIG`), stopped and reaped.

mod dir;
mod source;
mod virtiofsd;

#[cfg(test)]
mod tests;

pub use dir::SharedDir;
pub use source::{resolve_source, SourceKind};
pub use virtiofsd::{CacheMode, Virtiofsd, VirtiofsdConfig, DEFAULT_VIRTIOFSD};

use std::path::{Path, PathBuf};

/// Name of the shared directory inside a sandbox's state directory.
pub const SHARED_DIR: &str = "shared";
/// Name of virtiofsd's vhost-user socket inside a sandbox's state directory.
pub const SOCKET: &str = "virtiofsd.sock";
/// Name of virtiofsd's log (its stderr) inside a sandbox's state directory.
pub const LOG: &str = "virtiofsd.log";

/// What can go wrong with a sandbox's shared file system.
#[derive(Debug, thiserror::Error)]
pub enum SharedFsError {
    /// A volume source does not exist or cannot be resolved.
    #[error("volume source {source_path:?} cannot be shared: it does not exist or cannot be resolved")]
    SourceMissing {
        /// The source as given.
        source_path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A volume source is neither a directory nor a regular file.
    #[error("volume source {source_path:?} (resolved to {resolved:?}) is a {kind}: only directories and regular files can be shared")]
    SourceKind {
        /// The source as given.
        source_path: PathBuf,
        /// What its symlinks resolve to.
        resolved: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A volume source lies inside the shared directory itself.
    #[error("volume source {source_path:?} (resolved to {resolved:?}) is inside the shared directory {shared:?}")]
    SourceInShared {
        /// The source as given.
        source_path: PathBuf,
        /// What its symlinks resolve to.
        resolved: PathBuf,
        /// The shared directory.
        shared: PathBuf,
    },
    /// No share has this name.
    #[error("no volume is shared as {0:?}")]
    NotShared(String),
    /// A mount operation failed.
    #[error("cannot {op} {target:?}")]
    Mount {
        /// What was attempted.
        op: &'static str,
        /// The mount point.
        target: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// A file operation failed.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The virtiofsd binary is not there.
    #[error("virtiofsd not found at {0:?} (make deps installs it)")]
    MissingBinary(PathBuf),
    /// virtiofsd could not be started.
    #[error("cannot start {binary:?}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// virtiofsd ended before its socket appeared.
    #[error("virtiofsd exited ({status}) before creating its socket {socket:?}; its log says: {log}")]
    Exited {
        /// How it ended.
        status: String,
        /// The socket it was to create.
        socket: PathBuf,
        /// The end of its log.
        log: String,
    },
    /// virtiofsd did not create its socket in time (it was killed).
    #[error("virtiofsd did not create its socket {socket:?} within {timeout_ms} ms; its log says: {log}")]
    SocketTimeout {
        /// The socket.
        socket: PathBuf,
        /// How long it was given.
        timeout_ms: u128,
        /// The end of its log.
        log: String,
    },
}

impl SharedFsError {
    /// Whether the request named something that cannot be shared (rather than the host failing).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, SharedFsError::SourceMissing { .. } | SharedFsError::SourceKind { .. } | SharedFsError::SourceInShared { .. })
    }
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, SharedFsError>;

/// One sandbox's shared directory and the virtiofsd serving it.
#[derive(Debug)]
pub struct SharedFs {
    dir: SharedDir,
    daemon: Option<Virtiofsd>,
}

impl SharedFs {
    /// Creates `<state_dir>/shared` and starts virtiofsd on it with its socket at
    /// `<state_dir>/virtiofsd.sock` and its log at `<state_dir>/virtiofsd.log`; returns once
    /// the socket exists. On error nothing is left (no process, no mount, no directory).
    pub fn start(state_dir: &Path, cfg: &VirtiofsdConfig) -> Result<Self> {
        let mut dir = SharedDir::create(&state_dir.join(SHARED_DIR))?;
        match Virtiofsd::start(cfg, dir.path(), &state_dir.join(SOCKET), &state_dir.join(LOG)) {
            Ok(daemon) => Ok(Self { dir, daemon: Some(daemon) }),
            Err(e) => {
                if let Err(t) = dir.teardown() {
                    log::error!("sharedfs: cleaning up after a failed start: {t}");
                }
                Err(e)
            }
        }
    }

    /// The vhost-user socket husk-vmm connects to (`--fs tag=...,socket=...`).
    pub fn socket(&self) -> Option<&Path> {
        self.daemon.as_ref().map(|d| d.socket())
    }

    /// The shared directory.
    pub fn dir(&self) -> &SharedDir {
        &self.dir
    }

    /// Exposes `source` to the guest; see [`SharedDir::share`].
    pub fn share(&mut self, source: &Path, read_only: bool) -> Result<String> {
        self.dir.share(source, read_only)
    }

    /// Removes a share; see [`SharedDir::unshare`].
    pub fn unshare(&mut self, name: &str) -> Result<()> {
        self.dir.unshare(name)
    }

    /// Stops virtiofsd (and reaps it), then removes every bind mount and the directory.
    /// Both steps are attempted; the first error is returned.
    pub fn stop(mut self) -> Result<()> {
        self.stop_both()
    }

    fn stop_both(&mut self) -> Result<()> {
        let stopped = self.daemon.take().map_or(Ok(()), |d| d.stop());
        let removed = self.dir.teardown();
        stopped.and(removed)
    }
}

impl Drop for SharedFs {
    fn drop(&mut self) {
        if self.daemon.is_some() || self.dir.is_mounted() {
            if let Err(e) = self.stop_both() {
                log::error!("sharedfs: cleaning up {:?}: {e}", self.dir.path());
            }
        }
    }
}
