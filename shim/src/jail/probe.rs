//! `husk check`'s test of the jail: build one exactly as for a sandbox (a uid of the range,
//! the root with husk-vmm and its libraries, /dev/kvm, the namespaces, limits and identity)
//! and run `husk-vmm --version` in it.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use husk_config::HuskConfig;

use super::{dev_null, spawn, uid_locks, Jail, Launch};

/// Threads `husk-vmm --version` may use.
const PROBE_THREADS: u64 = 8;

/// Builds a jail under the state directory and runs `husk-vmm --version` in it; says what
/// ran where, or what failed (the step and the OS's answer).
pub fn probe(cfg: &HuskConfig) -> Result<String, String> {
    if !cfg.jail.enabled {
        return Ok("disabled ([jail] enabled = false): husk-vmm runs as root, unconfined".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("building the jail needs root (containerd runs the shim as root); run husk check as root".into());
    }
    let dir = cfg.shim.state_dir.join(format!(".jail-check-{}", std::process::id()));
    let r = run_in_jail(cfg, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn run_in_jail(cfg: &HuskConfig, dir: &Path) -> Result<String, String> {
    let chain = |e: &dyn std::error::Error| crate::error::chain(e);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let jail = Jail::prepare(&cfg.jail, &uid_locks(&cfg.shim.state_dir), &dir.join("jail"), &cfg.shim.vmm).map_err(|e| chain(&e))?;
    let out_path = dir.join("out");
    let out = std::fs::File::create(&out_path).map_err(|e| format!("cannot create {}: {e}", out_path.display()))?;
    let err = out.try_clone().map_err(|e| format!("{e}"))?;
    let launch = Launch {
        program: jail.program().to_path_buf(),
        args: vec![cfg.shim.vmm.clone().into_os_string(), "--version".into()],
        env: vec![("PATH".into(), "/".into())],
        cwd: "/".into(),
        stdio: [dev_null().map_err(|e| format!("cannot open /dev/null: {e}"))?, OwnedFd::from(out), OwnedFd::from(err)],
        fds: Vec::new(),
        cgroups: Vec::new(),
        confine: Some(jail.confinement(&[], PROBE_THREADS)),
    };
    let pid = spawn(launch).map_err(|e| chain(&e))?;
    let mut status = 0;
    // SAFETY: waiting for the child just spawned.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    let mut text = String::new();
    let _ = std::fs::File::open(&out_path).and_then(|f| f.take(4096).read_to_string(&mut text));
    let text = text.trim();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 || !text.starts_with("husk-vmm") {
        return Err(format!("husk-vmm --version in the jail ended with status {status:#x}: {text:?}"));
    }
    Ok(format!("{text} ran as uid {} in new mount, PID and IPC namespaces, chrooted to a jail holding only husk-vmm, the libraries it links (none when static) and /dev/kvm", jail.uid()))
}
