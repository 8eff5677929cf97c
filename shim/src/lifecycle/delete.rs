//! `delete`: containerd runs this in the bundle after the shim server died (or never came
//! up). It kills the VMM that may still run, removes the state directory, the uncached image
//! and the shim socket, and reports the task as killed (137, as runc's shim does).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_shim::Flags;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::DeleteResponse;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{io_err, socket_path, LifecycleError};
use crate::container::now;
use crate::state::{StateDir, BUNDLE_POINTER};
use crate::workdir::WorkDir;

/// Exit status reported for a task whose shim died: killed (128 + SIGKILL).
const KILLED: u32 = 128 + 9;

/// Runs the `delete` action.
pub fn run(flags: &Flags) -> Result<(), LifecycleError> {
    let bundle = if flags.bundle.is_empty() { std::env::current_dir().map_err(io_err("get", "working directory"))? } else { PathBuf::from(&flags.bundle) };
    // containerd also runs `delete` when its connection for one container of a pod closes,
    // while the pod's shim still serves the others on the same socket: then the shim is alive
    // and owns its state, and nothing here may touch it (removing the socket would orphan it;
    // the next container of the pod would get a new shim without the pod).
    let address = std::fs::read_to_string(bundle.join("address")).ok();
    let alive = address.as_deref().is_some_and(|a| shim_answers(a.trim(), &flags.id));
    if alive {
        eprintln!("the shim serving {} still answers: it keeps its state", flags.id);
    } else {
        cleanup(&bundle, &flags.namespace, &flags.id);
        if let Some(addr) = address {
            let _ = std::fs::remove_file(socket_path(addr.trim()));
        }
    }
    let resp = DeleteResponse { pid: 0, exit_status: KILLED, exited_at: Some(now()).into(), ..Default::default() };
    let bytes = resp.write_to_bytes().map_err(|e| LifecycleError::Io { op: "encode", what: "DeleteResponse".into(), source: std::io::Error::other(e) })?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes).map_err(io_err("write", "stdout"))?;
    out.flush().map_err(io_err("flush", "stdout"))
}

/// Whether a shim serves `address` and answers a Task API call in time (a socket whose
/// server is exiting still accepts connections into its backlog: that is not an answer).
fn shim_answers(address: &str, id: &str) -> bool {
    let Ok(stream) = UnixStream::connect(socket_path(address)) else { return false };
    let Ok(client) = ttrpc::Client::new(std::os::fd::IntoRawFd::into_raw_fd(stream)) else { return false };
    let client = containerd_shim_protos::shim_sync::TaskClient::new(client);
    let req = containerd_shim_protos::api::ConnectRequest { id: id.into(), ..Default::default() };
    client.connect(ttrpc::context::with_timeout(Duration::from_secs(2).as_nanos() as i64), &req).is_ok()
}

/// Removes what a dead shim left for container `id` of `bundle` in containerd namespace
/// `namespace`: the sandbox the bundle points at (its VMM, which died with the shim unless
/// something kept it, and its state), or the sandbox named `id`. Never fails: every step is
/// attempted and problems are reported on stderr (containerd logs it).
pub fn cleanup(bundle: &Path, namespace: &str, id: &str) {
    let mut dirs = Vec::new();
    if let Ok(p) = std::fs::read_to_string(bundle.join(BUNDLE_POINTER)) {
        dirs.push(PathBuf::from(p.trim()));
    }
    let cfg = crate::options::load_config(None).ok().map(|(_, c)| c);
    if let Some(cfg) = &cfg {
        if let Ok(d) = StateDir::path_of(&cfg.shim.state_dir, namespace, id) {
            dirs.push(d);
        }
    }
    dirs.dedup();
    let mut left_alone = false;
    for dir in dirs {
        if !dir.is_dir() {
            continue;
        }
        let sd = StateDir::open(dir.clone());
        if let Ok(info) = sd.read_info() {
            let ours = info.id == id || info.containers.iter().any(|c| c.id == id);
            if !ours || info.namespace != namespace {
                eprintln!(
                    "state directory {dir:?} belongs to sandbox {:?} of namespace {:?}, not to {id:?} of {namespace:?}: left alone",
                    info.id, info.namespace
                );
                left_alone = true;
                continue;
            }
            kill_vmm(info.vmm_pid, &dir);
            // The sandbox's own images, on disk (left alone while a live shim holds them).
            if let Some(w) = cfg.as_ref().and_then(|c| WorkDir::path_of(&c.shim.image_work_dir, &info.namespace, &info.id).ok()) {
                if let Err(e) = crate::workdir::remove_abandoned(&w) {
                    eprintln!("{}", crate::error::chain(&e));
                }
            }
        }
        if let Err(e) = sd.remove() {
            eprintln!("{}", crate::error::chain(&e));
        }
    }
    if !left_alone {
        let _ = std::fs::remove_file(bundle.join(BUNDLE_POINTER));
    }
}

/// SIGKILLs `pid` if it still is the VMM of `state_dir` (its command line names the state
/// directory, so a recycled pid is never hit), and waits until it is gone.
fn kill_vmm(pid: u32, state_dir: &Path) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 1 {
        return;
    }
    let cmdline = match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) => c,
        Err(_) => return,
    };
    let needle = state_dir.as_os_str().as_encoded_bytes();
    if !cmdline.windows(needle.len().max(1)).any(|w| w == needle) {
        return;
    }
    let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        // A zombie (parent not reaping) still has /proc/<pid>; it holds no resources.
        if std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(false) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::state::StateInfo;

    /// Right after spawn the child's /proc cmdline can still be empty (exec in progress).
    fn wait_exec(pid: u32) {
        for _ in 0..500 {
            if std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| !c.is_empty()).unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn cleanup_kills_the_vmm_of_the_state_dir_and_removes_everything() {
        use std::os::unix::process::CommandExt;
        let root = tempfile::tempdir().unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let sd = StateDir::create(root.path(), "ns1", "c9").unwrap();
        // A stand-in VMM whose command line names the state directory.
        let mut child = std::process::Command::new("sleep").arg0(sd.path()).arg("100").spawn().unwrap();
        wait_exec(child.id());
        sd.write_info(&StateInfo { id: "c9".into(), namespace: "ns1".into(), vmm_pid: child.id(), ..Default::default() }).unwrap();
        std::fs::write(bundle.path().join(BUNDLE_POINTER), sd.path().as_os_str().as_encoded_bytes()).unwrap();
        std::fs::write(sd.rootfs_image(), b"img").unwrap();
        // Another namespace's container of the same id is not this one.
        cleanup(bundle.path(), "other", "c9");
        assert!(sd.path().exists());
        assert!(child.try_wait().unwrap().is_none());
        cleanup(bundle.path(), "ns1", "c9");
        let st = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
        assert!(!sd.path().exists());
        assert!(!bundle.path().join(BUNDLE_POINTER).exists());
    }

    #[test]
    fn a_pid_that_is_not_the_vmm_is_left_alone() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        wait_exec(child.id());
        kill_vmm(child.id(), Path::new("/run/husk/ns/definitely-not-this"));
        assert!(child.try_wait().unwrap().is_none());
        kill_vmm(child.id(), Path::new("30"));
        let st = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    }
}
