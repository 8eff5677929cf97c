//! The three ways containerd runs the shim binary (runtime v2 protocol):
//! `start` (spawn the long-lived server, print its address), `delete` (clean up after a shim
//! that died) and no action (the ttrpc server itself, with `-socket`).

mod delete;
mod serve;
mod start;

pub use delete::run as delete;
pub use serve::run as serve;
pub use start::run as start;

/// Errors of the shim lifecycle actions.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// A required flag is missing.
    #[error("missing -{0} flag")]
    MissingFlag(&'static str),
    /// An unknown action.
    #[error("unknown action {0:?} (expected start, delete or none)")]
    UnknownAction(String),
    /// An OS operation failed.
    #[error("{op} {what}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The spawned server exited before it served.
    #[error("the shim server exited during start with {0}")]
    ServerDied(std::process::ExitStatus),
    /// containerd-shim library error.
    #[error("{0}")]
    Shim(#[from] containerd_shim::Error),
    /// ttrpc server error.
    #[error("ttrpc server")]
    Ttrpc(#[from] ttrpc::Error),
}

pub(crate) fn io_err(op: &'static str, what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> LifecycleError {
    let what = what.to_string();
    move |source| LifecycleError::Io { op, what, source }
}

/// The socket path of a `unix://` address.
pub(crate) fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}
