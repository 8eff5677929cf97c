//! husk-agent: PID 1 of the husk microVM. The binary (`src/main.rs`) wires these modules
//! together; they are a library so that fuzz targets and tests can reach the request parsers.
pub mod container;
pub mod error;
pub mod fuzz_api;
pub mod init;
pub mod logger;
pub mod network;
pub mod pod;
pub mod process;
pub mod server;
pub mod steps;
#[cfg(test)]
mod test_fork;
