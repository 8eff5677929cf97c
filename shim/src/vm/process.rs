//! Spawning `husk-vmm` with its typed VM configuration, watching it exit, stopping it.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use husk_config::{Console, VmConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::VmError;

/// Everything needed to start one VM: the VM configuration husk-vmm reads (`--config`), and
/// where the shim keeps the VMM's files.
#[derive(Debug, Clone)]
pub struct VmPlan {
    /// The husk-vmm binary.
    pub vmm: PathBuf,
    /// The VM, as husk-vmm's TOML configuration (the one typed plan between shim and VMM).
    pub config: VmConfig,
    /// Where the configuration is written for husk-vmm.
    pub config_file: PathBuf,
    /// Where the VMM's own stdout/stderr go.
    pub vmm_log: PathBuf,
    /// Working directory of the VMM.
    pub work_dir: PathBuf,
    /// `cgroup.procs` files the VMM joins before it runs (the pod's host cgroup).
    pub cgroup_procs: Vec<PathBuf>,
    /// Descriptors the VMM inherits at the same numbers (the pod's taps, named by number in
    /// `config.net`). They stay close-on-exec in the shim, so no other child gets them; the
    /// caller keeps them open until [`Vm::spawn`] returns.
    pub inherit_fds: Vec<RawFd>,
}

impl VmPlan {
    /// The husk-vmm arguments for this plan.
    pub fn args(&self) -> Vec<String> {
        vec!["--config".into(), self.config_file.display().to_string()]
    }

    /// Checks that the binaries and boot files exist, naming the missing one.
    pub fn check_files(&self) -> Result<(), VmError> {
        let initrd = self.config.initrd.clone().unwrap_or_default();
        let checks = [
            ("guest kernel", &self.config.kernel, "vm.kernel"),
            ("initramfs", &initrd, "vm.initramfs"),
            ("husk-vmm", &self.vmm, "shim.vmm"),
        ];
        for (what, path, field) in checks {
            if !path.is_file() {
                return Err(VmError::Missing { what, path: path.clone(), field });
            }
        }
        Ok(())
    }

    /// The guest console log, if the console goes to a file.
    pub fn console_log(&self) -> Option<&Path> {
        match &self.config.console {
            Console::File(p) => Some(p),
            _ => None,
        }
    }

    /// The hybrid vsock socket.
    pub fn vsock_uds(&self) -> PathBuf {
        self.config.vsock.as_ref().map(|v| v.uds.clone()).unwrap_or_default()
    }

    fn write_config(&self) -> Result<(), VmError> {
        let spawn_err = |source| VmError::Spawn { vmm: self.vmm.clone(), source };
        let text = toml::to_string(&self.config).map_err(|e| spawn_err(std::io::Error::other(e)))?;
        std::fs::write(&self.config_file, text).map_err(spawn_err)
    }
}

/// The exit status of a VMM once it exited; waitable.
#[derive(Debug, Default)]
pub struct ExitWatch {
    status: Mutex<Option<ExitStatus>>,
    cond: Condvar,
}

impl ExitWatch {
    fn set(&self, st: ExitStatus) {
        let mut g = self.status.lock().unwrap_or_else(|p| p.into_inner());
        *g = Some(st);
        self.cond.notify_all();
    }

    /// The exit status if the VMM exited.
    pub fn get(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` (forever if `None`) for the exit.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitStatus> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.status.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(st) = *g {
                return Some(st);
            }
            match deadline {
                None => g = self.cond.wait(g).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    g = self.cond.wait_timeout(g, d - now).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
        }
    }
}

/// A running (or exited) husk-vmm process.
#[derive(Debug)]
pub struct Vm {
    pid: u32,
    exit: Arc<ExitWatch>,
    plan: VmPlan,
}

impl Vm {
    /// Spawns the VMM. The child is spawned and reaped by one dedicated thread, so the VMM's
    /// parent-death signal (SIGKILL) fires exactly when the shim process goes away.
    pub fn spawn(plan: VmPlan) -> Result<Vm, VmError> {
        plan.check_files()?;
        plan.write_config()?;
        let spawn_err = |source| VmError::Spawn { vmm: plan.vmm.clone(), source };
        // Readable too: husk-vmm keeps a stderr that is a regular file within its
        // log_max_bytes by moving the newest part to the start (microvm bounded_log).
        let log = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&plan.vmm_log).map_err(spawn_err)?;
        let log2 = log.try_clone().map_err(spawn_err)?;
        // Opened here (O_CLOEXEC, so the VMM does not keep them); the child writes "0" to each
        // before exec, so the VMM and every thread it starts live in the pod's cgroup.
        let procs: Vec<OwnedFd> = plan
            .cgroup_procs
            .iter()
            .map(|p| std::fs::OpenOptions::new().write(true).open(p).map(OwnedFd::from).map_err(|source| VmError::Cgroup { path: p.clone(), source }))
            .collect::<Result<_, _>>()?;
        let raw: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
        let inherit = plan.inherit_fds.clone();
        let mut cmd = Command::new(&plan.vmm);
        cmd.args(plan.args())
            .current_dir(&plan.work_dir)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        if let Ok(level) = std::env::var("HUSK_LOG") {
            cmd.env("HUSK_LOG", level);
        }
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // write(2) and fcntl(2) on descriptors opened before the fork, which are
        // async-signal-safe; it touches no memory of the parent beyond reading `raw` and
        // `inherit`.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for fd in &raw {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Only this child: clearing close-on-exec after the fork.
                for fd in &inherit {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let exit = Arc::new(ExitWatch::default());
        let watch = exit.clone();
        let (tx, rx) = mpsc::channel();
        let vmm = plan.vmm.clone();
        std::thread::Builder::new()
            .name("vmm-reaper".into())
            .spawn(move || match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id()));
                    match child.wait() {
                        Ok(st) => watch.set(st),
                        Err(e) => log::error!("waiting for husk-vmm failed: {e}"),
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|source| VmError::Spawn { vmm: vmm.clone(), source })?;
        let pid = rx
            .recv()
            .map_err(|_| VmError::Spawn { vmm: vmm.clone(), source: std::io::Error::other("spawner thread died") })?
            .map_err(|source| VmError::Spawn { vmm, source })?;
        drop(procs);
        log::info!("started husk-vmm pid {pid}: {:?}", plan.args());
        Ok(Vm { pid, exit, plan })
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit watch (shared with monitor threads).
    pub fn exit_watch(&self) -> Arc<ExitWatch> {
        self.exit.clone()
    }

    /// The plan the VM was started with.
    pub fn plan(&self) -> &VmPlan {
        &self.plan
    }

    /// SIGKILLs the VMM (if still running) and waits up to `timeout` for it to be reaped.
    pub fn kill(&self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.get().is_none() {
            if let Ok(pid) = i32::try_from(self.pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        self.exit.wait(Some(timeout))
    }

    /// Why the VMM ended, for error messages: its last stderr line, else the console tail.
    pub fn exit_reason(&self) -> String {
        let own = last_lines(&self.plan.vmm_log, 1);
        if !own.is_empty() {
            return own;
        }
        let console = self.plan.console_log().map(|p| last_lines(p, 3)).unwrap_or_default();
        if console.is_empty() {
            "no output".into()
        } else {
            format!("guest console: {console}")
        }
    }
}

/// The last `n` non-empty lines of a file (at most 4 KiB read), joined with " | ", with
/// control characters escaped (the console is the guest's; these go into error messages).
pub fn last_lines(path: &Path, n: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut buf = Vec::new();
    let _ = f.take(4096).read_to_end(&mut buf);
    let lines: Vec<String> = buf
        .split(|&b| b == b'\n')
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty())
        .map(|l| crate::guest_text::escape_controls(l, false))
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn plan(dir: &Path, vmm: &str) -> VmPlan {
        std::fs::write(dir.join("k"), b"k").unwrap();
        std::fs::write(dir.join("i"), b"i").unwrap();
        let config = VmConfig {
            kernel: dir.join("k"),
            initrd: Some(dir.join("i")),
            cmdline: "console=ttyS0 quiet".into(),
            memory: husk_config::MemSize(128 << 20),
            console: Console::File(dir.join("console.log")),
            api_sock: Some(dir.join("api.sock")),
            disk: vec![husk_config::DiskConfig { path: dir.join("r.img"), id: Some("rootfs".into()), read_only: true }],
            vsock: Some(husk_config::VsockConfig { cid: 3, uds: dir.join("vsock.sock") }),
            ..Default::default()
        };
        VmPlan { vmm: vmm.into(), config, config_file: dir.join("vm.toml"), vmm_log: dir.join("vmm.log"), work_dir: dir.into(), cgroup_procs: Vec::new(), inherit_fds: Vec::new() }
    }

    #[test]
    fn the_vmm_alone_inherits_the_descriptors_it_is_given() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("fake-vmm");
        std::fs::write(&script, "#!/bin/sh\nls /proc/$$/fd >&2\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        // Both close-on-exec, as the shim keeps them.
        let given = std::fs::File::open("/proc/self/status").unwrap();
        let other = std::fs::File::open("/proc/self/status").unwrap();
        let mut p = plan(d.path(), script.to_str().unwrap());
        p.inherit_fds = vec![given.as_raw_fd()];
        let vm = Vm::spawn(p).unwrap();
        vm.exit_watch().wait(Some(Duration::from_secs(10))).unwrap();
        let fds: Vec<String> = std::fs::read_to_string(d.path().join("vmm.log")).unwrap().lines().map(str::to_string).collect();
        assert!(fds.contains(&given.as_raw_fd().to_string()), "{fds:?}");
        assert!(!fds.contains(&other.as_raw_fd().to_string()), "{fds:?}");
        let flags = nix::fcntl::fcntl(&given, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "still close-on-exec in the shim");
    }

    #[test]
    fn the_vmm_gets_its_configuration_as_a_file_it_can_parse() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("fake-vmm");
        std::fs::write(&script, "#!/bin/sh\n[ \"$1\" = --config ] && cat \"$2\" >&2\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let p = plan(d.path(), script.to_str().unwrap());
        let vm = Vm::spawn(p.clone()).unwrap();
        vm.exit_watch().wait(Some(Duration::from_secs(10))).unwrap();
        let written = VmConfig::from_toml_file(&p.config_file).unwrap();
        assert_eq!(written, p.config);
        assert!(std::fs::read_to_string(d.path().join("vmm.log")).unwrap().contains("vsock"));
    }

    #[test]
    fn exit_reasons_from_the_console_are_escaped() {
        let d = tempfile::tempdir().unwrap();
        let p = plan(d.path(), "/bin/true");
        std::fs::write(d.path().join("console.log"), b"a\r\n\x1b[2J\x1b]0;x\x07panic\r\n").unwrap();
        assert_eq!(last_lines(p.console_log().unwrap(), 3), "a | \\x1b[2J\\x1b]0;x\\x07panic");
    }

    #[test]
    fn missing_kernel_is_named() {
        let d = tempfile::tempdir().unwrap();
        let mut p = plan(d.path(), "/bin/true");
        p.config.kernel = "/nonexistent/vmlinux".into();
        let e = Vm::spawn(p).unwrap_err().to_string();
        assert!(e.contains("guest kernel") && e.contains("/nonexistent/vmlinux") && e.contains("vm.kernel"), "{e}");
    }

    #[test]
    fn exit_status_and_reason_are_captured() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("fake-vmm");
        std::fs::write(&script, "#!/bin/sh\necho 'invalid memory = \"0\": too small' >&2\nexit 2\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let vm = Vm::spawn(plan(d.path(), script.to_str().unwrap())).unwrap();
        let st = vm.exit_watch().wait(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(st.code(), Some(2));
        assert_eq!(vm.exit_reason(), "invalid memory = \"0\": too small");
    }

    #[test]
    fn kill_stops_a_running_vmm() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("fake-vmm");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 100\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let vm = Vm::spawn(plan(d.path(), script.to_str().unwrap())).unwrap();
        assert!(vm.exit_watch().wait(Some(Duration::from_millis(200))).is_none());
        let st = vm.kill(Duration::from_secs(5)).unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    }
}
