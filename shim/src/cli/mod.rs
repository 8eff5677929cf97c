//! The `husk` user CLI: `husk check`, `husk ps`, `husk logs <id>`.

mod check;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use check::{check, Check};

use husk_config::ShimConfig;

use crate::error::{Result, ShimError};
use crate::state;
use crate::workdir::{self, WorkDir};

/// Usage text.
pub const USAGE: &str = "usage: husk [--config FILE] <command>\n\
commands:\n  check        tell whether this host can run husk containers (exit 1 if not)\n  \
ps           list husk VMs (pods) and their containers (from the state directory)\n  \
logs <id>    print the guest console log of a pod's VM (by sandbox id; control characters\n               escaped as \\xNN)\n";

/// `husk ps`: one line per VM (pod) under the state directory (`DISK`: what its own images
/// occupy on disk under `shim.image_work_dir`), then one indented line per container in it;
/// last, what the shared image cache occupies against its bound.
pub fn ps(shim: &ShimConfig, out: &mut dyn Write) -> Result<()> {
    let state_root = &shim.state_dir;
    let w = |e| ShimError::io("write", "stdout", e);
    let mib = |b: u64| format!("{}M", b.div_ceil(1 << 20));
    writeln!(out, "{:<24} {:<12} {:>8} {:<8} {:>5} {:>7} {:>7} CONTAINERS", "POD", "NAMESPACE", "VMM-PID", "STATUS", "VCPUS", "MEMORY", "DISK").map_err(w)?;
    for (sd, info) in state::list(state_root)? {
        let name = sd.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match info {
            Ok(i) => {
                let name = &i.id;
                let alive = i.vmm_pid > 0 && Path::new(&format!("/proc/{}", i.vmm_pid)).exists();
                let status = if i.vmm_pid == 0 {
                    "creating"
                } else if alive {
                    "running"
                } else {
                    "dead"
                };
                let disk = WorkDir::path_of(&shim.image_work_dir, &i.namespace, &i.id).map(|d| workdir::allocated_bytes(&d)).unwrap_or(0);
                writeln!(
                    out,
                    "{:<24} {:<12} {:>8} {:<8} {:>5} {:>6}M {:>7} {}",
                    name,
                    i.namespace,
                    i.vmm_pid,
                    status,
                    i.vcpus,
                    i.memory_mib,
                    mib(disk),
                    i.containers.len()
                )
                .map_err(w)?;
                for c in &i.containers {
                    let disk = if c.slot.is_empty() { "boot disk".to_string() } else { c.slot.clone() };
                    writeln!(out, "  {:<22} {:<10} {}", c.id, disk, c.bundle.display()).map_err(w)?;
                }
            }
            Err(_) => writeln!(out, "{name:<24} {:<12} {:>8} {:<8}", "?", "-", "unknown").map_err(w)?,
        }
    }
    let cache = workdir::allocated_bytes(&shim.image_cache_dir);
    writeln!(out, "image cache {}: {} of {}", shim.image_cache_dir.display(), mib(cache), shim.image_cache_max_bytes).map_err(w)?;
    Ok(())
}

/// `husk logs <id>`: copies the VM's console log to `out`.
pub fn logs(state_root: &Path, id: &str, out: &mut dyn Write) -> Result<()> {
    state::validate_id(id)?;
    let name = state::dir_name(id);
    let found = state::list(state_root)?
        .into_iter()
        .find(|(sd, info)| info.as_ref().map(|i| i.id == id).unwrap_or_else(|_| sd.path().file_name().is_some_and(|n| n.to_string_lossy() == name)));
    let path: PathBuf = match found {
        Some((sd, _)) => sd.console_log(),
        None => return Err(ShimError::NotFound { kind: "husk VM (pod)", id: id.into() }),
    };
    // The file is bounded by husk-vmm (log_max_bytes): read it whole.
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ShimError::NotFound { kind: "husk VM (no console log)", id: format!("{id} ({})", path.display()) },
        _ => ShimError::io("read", &path, e),
    })?;
    // The guest wrote it: no terminal control sequences reach the reader's terminal.
    out.write_all(crate::guest_text::escape_controls(&bytes, true).as_bytes()).map_err(|e| ShimError::io("write", "stdout", e))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::state::{ContainerInfo, StateDir, StateInfo};

    #[test]
    fn ps_lists_vms_and_logs_prints_the_console() {
        let root = tempfile::tempdir().unwrap();
        let sd = StateDir::create(root.path(), "default", "web").unwrap();
        let containers = vec![
            ContainerInfo { id: "web".into(), bundle: "/b/web".into(), ..Default::default() },
            ContainerInfo { id: "sidecar".into(), bundle: "/b/sidecar".into(), slot: "slot0".into(), ..Default::default() },
        ];
        sd.write_info(&StateInfo {
            id: "web".into(),
            namespace: "default".into(),
            vmm_pid: std::process::id(),
            vcpus: 2,
            memory_mib: 384,
            containers,
            ..Default::default()
        })
        .unwrap();
        std::fs::write(sd.console_log(), "Linux version 6.1\nhusk-agent ready\n").unwrap();
        let work = tempfile::tempdir().unwrap();
        let img = work.path().join("default/web/rootfs.img");
        std::fs::create_dir_all(img.parent().unwrap()).unwrap();
        std::fs::write(&img, vec![7u8; 3 << 20]).unwrap();
        let shim =
            ShimConfig { state_dir: root.path().into(), image_work_dir: work.path().into(), image_cache_dir: work.path().join("cache"), ..Default::default() };
        let mut out = Vec::new();
        ps(&shim, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().nth(1).unwrap().contains(" 3M "), "the pod's writable image on disk: {text}");
        assert!(text.lines().last().unwrap().contains("cache") && text.contains("0M of 10G"), "{text}");
        assert!(text.lines().nth(1).unwrap().starts_with("web "), "{text}");
        assert!(text.contains("running") && text.contains("384M"), "{text}");
        assert!(text.lines().nth(2).unwrap().contains("web") && text.lines().nth(2).unwrap().contains("boot disk"), "{text}");
        assert!(text.lines().nth(3).unwrap().contains("sidecar") && text.contains("slot0"), "{text}");
        let mut out = Vec::new();
        logs(root.path(), "web", &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "Linux version 6.1\nhusk-agent ready\n");
        // What a guest writes to its console cannot drive the reader's terminal.
        std::fs::write(sd.console_log(), b"boot\r\n\x1b]2;title\x07\x1b[H\x1b[2Jfake prompt$ \x9b\xff\n").unwrap();
        let mut out = Vec::new();
        logs(root.path(), "web", &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "boot\n\\x1b]2;title\\x07\\x1b[H\\x1b[2Jfake prompt$ \\x9b\\xff\n");
        let e = logs(root.path(), "nope", &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
