//! The shim's error type and its mapping onto the ttrpc status codes containerd understands.

use std::path::PathBuf;

use ttrpc::Code;

/// Everything that can go wrong while serving containerd.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The request names a container or exec id this shim does not have.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// "container" or "exec".
        kind: &'static str,
        /// The id from the request.
        id: String,
    },
    /// The id is already in use.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// "container" or "exec".
        kind: &'static str,
        /// The id from the request.
        id: String,
    },
    /// The request is malformed or asks for something this runtime cannot do.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// What was wrong (a field or a file).
        what: String,
        /// Why.
        reason: String,
    },
    /// The object is in a state the request does not allow.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A feature husk does not implement.
    #[error("{0} is not implemented by the husk runtime")]
    NotImplemented(&'static str),
    /// Reading or parsing the bundle's config.json failed.
    #[error("cannot load OCI spec {path:?}")]
    Spec {
        /// The config.json path.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The husk configuration could not be loaded.
    #[error("cannot load husk configuration {path:?}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// Why.
        #[source]
        source: husk_config::ConfigError,
    },
    /// A file or directory operation failed.
    #[error("{op} {path:?}")]
    Io {
        /// What was attempted ("create state directory", ...).
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Starting or talking to the VMM failed.
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    /// The agent in the guest refused or failed a request.
    #[error("agent {op} failed")]
    Agent {
        /// The agent call.
        op: &'static str,
        /// The ttrpc error (carries the agent's status code and message).
        #[source]
        source: ttrpc::Error,
    },
    /// A request to the VMM's control API failed.
    #[error("husk-vmm could not {op}")]
    Vmm {
        /// What was asked.
        op: &'static str,
        /// The API client's error (carries the VMM's answer).
        #[source]
        source: husk_config::api::ClientError,
    },
    /// The pod's shared file system (virtiofsd, the shared directory) failed.
    #[error("cannot {op}")]
    SharedFs {
        /// What was attempted.
        op: &'static str,
        /// Cause.
        #[source]
        source: crate::sharedfs::SharedFsError,
    },
    /// The pod's network (taps and tc in its namespace, or its guest side) failed.
    #[error("cannot {op}")]
    Network {
        /// What was attempted.
        op: &'static str,
        /// Cause.
        #[source]
        source: crate::network::NetworkError,
    },
    /// An OCI hook of the spec failed.
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    /// Building the container's root filesystem image failed.
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
}

/// Result alias of the shim.
pub type Result<T> = std::result::Result<T, ShimError>;

impl ShimError {
    /// Shorthand for [`ShimError::InvalidArgument`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ShimError::InvalidArgument { what: what.into(), reason: reason.into() }
    }

    /// Shorthand for [`ShimError::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ShimError::Io { op, path: path.into(), source }
    }

    /// The ttrpc code containerd maps to its errdefs (NotFound, AlreadyExists, ...).
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound { .. } => Code::NOT_FOUND,
            ShimError::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            ShimError::InvalidArgument { .. } | ShimError::Spec { .. } | ShimError::Config { .. } => Code::INVALID_ARGUMENT,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::NotImplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Agent { source: ttrpc::Error::RpcStatus(s), .. } => s.code(),
            ShimError::Rootfs(e) if e.is_bad_input() => Code::INVALID_ARGUMENT,
            ShimError::SharedFs { source, .. } if source.is_bad_input() => Code::INVALID_ARGUMENT,
            _ => Code::UNKNOWN,
        }
    }
}

/// The error and all its sources, joined with ": " (what containerd shows the user). Parts
/// can come from the guest (the agent's messages, console lines): control characters are
/// escaped and an agent's message is cut after [`crate::guest_text::MAX_MESSAGE`] bytes.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut cur = err.source();
    while let Some(s) = cur {
        let text = match s.downcast_ref::<ttrpc::Error>() {
            Some(ttrpc::Error::RpcStatus(st)) => crate::guest_text::message(st.message()),
            _ => s.to_string(),
        };
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cur = s.source();
    }
    crate::guest_text::escape_controls(msg.as_bytes(), false)
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        let msg = chain(&e);
        log::warn!("request failed: {msg}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), msg))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_sources_and_status_codes_follow_kind() {
        let e = ShimError::io("open", "/x/y", std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(chain(&e), "open \"/x/y\": No such file or directory (os error 2)");
        assert_eq!(e.code(), Code::UNKNOWN);
        assert_eq!(ShimError::NotFound { kind: "exec", id: "e1".into() }.code(), Code::NOT_FOUND);
        let agent = ShimError::Agent { op: "WaitProcess", source: ttrpc::Error::RpcStatus(ttrpc::get_status(Code::NOT_FOUND, "no such process e9")) };
        assert_eq!(agent.code(), Code::NOT_FOUND);
        assert_eq!(chain(&agent), "agent WaitProcess failed: no such process e9");
    }

    #[test]
    fn guest_text_in_errors_is_escaped_and_bounded() {
        let hostile = format!("container \x1b]0;owned\x07\x1b[2Jgone\r\n{}", "y".repeat(100_000));
        let agent = ShimError::Agent { op: "CreateContainer", source: ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INTERNAL, hostile)) };
        let msg = chain(&agent);
        assert!(msg.starts_with("agent CreateContainer failed: container \\x1b]0;owned\\x07\\x1b[2Jgone\\x0d\\x0ayyy"), "{}", &msg[..80]);
        assert!(!msg.bytes().any(|b| b < 0x20 || b == 0x7f), "control bytes left");
        assert!(msg.len() < 2200 && msg.ends_with("more bytes)"), "{} bytes", msg.len());
        let vm = ShimError::Vm(crate::vm::VmError::ExitedDuringBoot { status: "exit status: 3".into(), reason: "\x1b[31mred".into() });
        assert_eq!(chain(&vm), "husk-vmm exited during boot with exit status: 3: \\x1b[31mred");
    }
}
