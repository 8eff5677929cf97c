//! husk configuration: one TOML file (`/etc/husk/config.toml` by default), typed and validated.
