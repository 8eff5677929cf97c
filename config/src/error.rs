//! Errors of the configuration crate.

use std::path::PathBuf;

/// Something in the configuration is wrong; the message names the field and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field holds a value that is not allowed.
    #[error("invalid {field} = {value:?}: {reason}")]
    Invalid {
        /// Name of the field or flag (`vcpus`, `memory`, `disk.path`, ...).
        field: String,
        /// The offending value as the user wrote it.
        value: String,
        /// Why it is not allowed.
        reason: String,
    },
    /// A file the configuration names could not be opened or read.
    #[error("cannot read {field} = {path:?}")]
    File {
        /// Name of the field that names the file.
        field: String,
        /// The path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The TOML file is not valid TOML or does not match the schema.
    #[error("cannot parse configuration file {path:?}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's error (it names the line and the key).
        #[source]
        source: toml::de::Error,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(field: &str, value: impl ToString, reason: impl ToString) -> Self {
        ConfigError::Invalid { field: field.to_string(), value: value.to_string(), reason: reason.to_string() }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ConfigError>;
