//! The agent's request error: every failure of a request becomes one of these, and is sent to
//! the host as a ttrpc status with a gRPC code and a message naming what was wrong.
use ttrpc::Code;

/// A failed agent request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Unknown container or process.
    #[error("{0}")]
    NotFound(String),
    /// Id already in use.
    #[error("{0}")]
    AlreadyExists(String),
    /// Malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// Object in the wrong state for the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The guest kernel refused an operation.
    #[error("{what}")]
    Internal {
        /// What failed, with which input.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The agent is shutting down.
    #[error("agent is shutting down")]
    Unavailable,
}

/// Result of agent operations.
pub type Result<T> = std::result::Result<T, AgentError>;

impl AgentError {
    /// An `Internal` error from an errno.
    pub fn sys(what: impl Into<String>, errno: nix::Error) -> Self {
        AgentError::Internal { what: what.into(), source: std::io::Error::from(errno) }
    }

    /// An `Internal` error from an I/O error.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Internal { what: what.into(), source }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            AgentError::NotFound(_) => Code::NOT_FOUND,
            AgentError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            AgentError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            AgentError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            AgentError::Internal { .. } => Code::INTERNAL,
            AgentError::Unavailable => Code::UNAVAILABLE,
        }
    }
}

/// Full message: the error and its chained sources.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        ttrpc::error::get_rpc_status(e.code(), chain(&e))
    }
}

/// Checks a container or exec id: `[A-Za-z0-9_.-]`, 1..=128 chars, not starting with '.'.
pub fn check_id(kind: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty() && id.len() <= 128 && !id.starts_with('.') && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!("invalid {kind} {id:?}: must be 1..=128 chars of [A-Za-z0-9_.-], not starting with '.'")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("container id", "abc-1.2_x").is_ok());
        for bad in ["", ".x", "a/b", "..", "a b", &"x".repeat(129)] {
            let err = check_id("container id", bad).unwrap_err();
            assert_eq!(err.code(), Code::INVALID_ARGUMENT, "{bad}");
        }
    }

    #[test]
    fn status_carries_code_and_chained_message() {
        let e = AgentError::sys("mount /x", nix::Error::ENOENT);
        let t: ttrpc::Error = e.into();
        match t {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::INTERNAL);
                assert!(s.message().starts_with("mount /x: "), "{}", s.message());
            }
            other => panic!("{other:?}"),
        }
    }
}
