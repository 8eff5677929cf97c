//! Generates the protobuf messages and the sync ttrpc client/server of `proto/agent.proto`
//! with the pure-Rust parser (no `protoc` needed).
//!
//! The generated files start with inner attributes (`#![allow(..)]`), which `include!` cannot
//! take, so this script also writes `modules.rs` declaring them as modules by `#[path]`.
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(std::io::Error::other)?);
    println!("cargo:rerun-if-changed=proto/agent.proto");
    println!("cargo:rerun-if-changed=build.rs");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
        .input("proto/agent.proto")
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize::default())
        .run()?;
    let mut modules = String::new();
    for name in ["agent", "agent_ttrpc"] {
        let path = out_dir.join(format!("{name}.rs"));
        modules.push_str(&format!("#[path = {:?}]\npub mod {name};\n", path.display().to_string()));
    }
    std::fs::write(out_dir.join("modules.rs"), modules)
}
