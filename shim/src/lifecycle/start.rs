//! `start`: spawn the long-lived shim server for this container and print its address (and
//! nothing else: containerd 1.6 reads stdout, which is also our stderr, as the address).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use containerd_shim::Flags;

use super::{io_err, socket_path, LifecycleError};

/// Runs the `start` action.
pub fn run(flags: &Flags) -> Result<(), LifecycleError> {
    if flags.id.is_empty() {
        return Err(LifecycleError::MissingFlag("id"));
    }
    // One shim (and VM) per pod: the containers of a CRI pod carry their sandbox's id (as for
    // runc's shim); any other container is its own group.
    let cwd = std::env::current_dir().map_err(io_err("get", "working directory"))?;
    let group = grouping_id(&cwd, &flags.id);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
    if UnixStream::connect(socket_path(&address)).is_err() {
        spawn_server(flags, &address)?;
    }
    std::fs::write(cwd.join("address"), &address).map_err(io_err("write", cwd.join("address").display()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes()).map_err(io_err("write", "stdout"))?;
    out.flush().map_err(io_err("flush", "stdout"))?;
    Ok(())
}

/// The shim group of the container whose bundle is `bundle`: its pod's sandbox id, or its own
/// id. A bundle without a readable spec groups by id (Create then reports the spec's problem).
fn grouping_id(bundle: &std::path::Path, id: &str) -> String {
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).ok();
    spec.as_ref().and_then(crate::sandbox::spec::sandbox_of).filter(|s| crate::state::validate_id(s).is_ok()).unwrap_or_else(|| id.to_string())
}

fn spawn_server(flags: &Flags, address: &str) -> Result<(), LifecycleError> {
    let exe = std::env::current_exe().map_err(io_err("find", "own executable"))?;
    let mut cmd = Command::new(&exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id, "-address", &flags.address, "-socket", address]);
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    // glibc gives each new thread its own malloc arena, up to 8 per core, and an arena keeps
    // what its thread freed: the shim has tens of mostly idle threads (ttrpc workers, I/O
    // pumps, watchers) whose arenas added up to about 1 MiB resident per pod. Two are plenty
    // for its control-path work. An administrator's own setting wins.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        cmd.env("MALLOC_ARENA_MAX", "2");
    }
    // Its own process group, so signals to containerd's group do not reach it.
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).process_group(0);
    let mut child = cmd.spawn().map_err(io_err("spawn", exe.display()))?;
    // The server closes its stdout once it listens; EOF here means "serving" (or "died").
    if let Some(mut pipe) = child.stdout.take() {
        let mut sink = Vec::new();
        let _ = pipe.read_to_end(&mut sink);
    }
    if let Some(status) = child.try_wait().map_err(io_err("wait for", "shim server"))? {
        if !status.success() {
            return Err(LifecycleError::ServerDied(status));
        }
    }
    Ok(())
}
