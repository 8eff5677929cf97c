//! The control API: HTTP/1.1 (a small subset) with JSON bodies on a unix socket, so
//! `curl --unix-socket SOCK http://localhost/vm` works. Documented in `microvm/API.md`.
//!
//! One thread (`vmm-api`) serves one connection at a time; every response closes the
//! connection. Requests are bounded (8 KiB of headers, 64 KiB of body).

mod http;
mod server;

pub use server::{ApiServer, VmInfo};

/// Starting the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be bound.
    #[error("cannot listen on API socket {0:?}")]
    Bind(std::path::PathBuf, #[source] std::io::Error),
    /// The thread could not be spawned.
    #[error("cannot spawn the API thread")]
    Spawn(#[source] std::io::Error),
}
