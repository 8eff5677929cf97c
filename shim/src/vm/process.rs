//! Spawning `husk-vmm` with its typed VM configuration, in its jail ([`crate::jail`]) unless
//! the configuration turns that off, watching it exit, stopping it.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use husk_config::{Console, VmConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::VmError;
use crate::jail::{self, Jail, Launch};

/// A descriptor husk-vmm inherits at a fixed number.
#[derive(Debug)]
pub struct InheritedFd {
    /// The shim's copy, closed once the VMM runs.
    pub fd: OwnedFd,
    /// What it is, for messages.
    pub what: String,
}

/// Everything needed to start one VM: the VM configuration husk-vmm reads (`--config`), the
/// descriptors it inherits, its jail, and where the shim keeps the VMM's files.
#[derive(Debug)]
pub struct VmPlan {
    /// The husk-vmm binary.
    pub vmm: PathBuf,
    /// The VM, as husk-vmm's TOML configuration (the one typed plan between shim and VMM),
    /// with host paths; the jail translates them to what the VMM sees.
    pub config: VmConfig,
    /// Where the configuration is written for husk-vmm (inside the jail's root if jailed).
    pub config_file: PathBuf,
    /// Where the VMM's own stdout/stderr go.
    pub vmm_log: PathBuf,
    /// Working directory of an unjailed VMM.
    pub work_dir: PathBuf,
    /// `cgroup.procs` files the VMM joins before it runs (the pod's host cgroup).
    pub cgroup_procs: Vec<PathBuf>,
    /// Descriptors the VMM inherits: the i-th at number 3 + i ([`VmPlan::inherit`]).
    pub fds: Vec<InheritedFd>,
    /// The jail (none: husk-vmm runs unconfined, as root).
    pub jail: Option<Arc<Jail>>,
    /// A template to restore (`husk-vmm --config ... --restore DIR`) instead of booting; the
    /// configuration must describe the same VM ([`crate::template`]).
    pub restore: Option<PathBuf>,
}

/// Where a jailed VMM finds the template it restores.
const JAIL_TEMPLATE: &str = "/template";

/// The first descriptor number husk-vmm inherits (0-2 are stdio).
pub const FIRST_INHERITED_FD: RawFd = 3;

impl VmPlan {
    /// Hands `fd` to husk-vmm, which finds it at the returned number (3, 4, ... in the order
    /// of the calls): name that number in the configuration (`NetConfig::fd`, `FsConfig::fd`).
    /// The shim's copy is closed once the VMM runs.
    pub fn inherit(&mut self, fd: OwnedFd, what: impl Into<String>) -> RawFd {
        self.fds.push(InheritedFd { fd, what: what.into() });
        FIRST_INHERITED_FD + self.fds.len() as RawFd - 1
    }

    /// The husk-vmm arguments for this plan, unjailed.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["--config".into(), self.config_file.display().to_string()];
        if let Some(dir) = &self.restore {
            a.extend(["--restore".into(), dir.display().to_string()]);
        }
        a
    }

    /// Checks that the binaries and boot files exist, naming the missing one.
    pub fn check_files(&self) -> Result<(), VmError> {
        let initrd = self.config.initrd.clone().unwrap_or_default();
        let checks = [("guest kernel", &self.config.kernel, "vm.kernel"), ("initramfs", &initrd, "vm.initramfs"), ("husk-vmm", &self.vmm, "shim.vmm")];
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

    fn write_config(&self, config: &VmConfig) -> Result<(), VmError> {
        let spawn_err = |source| VmError::Spawn { vmm: self.vmm.clone(), source };
        let text = toml::to_string(config).map_err(|e| spawn_err(std::io::Error::other(e)))?;
        std::fs::write(&self.config_file, text).map_err(spawn_err)
    }

    /// What to execute, with which argv, and how confined: writes the configuration the VMM
    /// reads (translated into the jail's paths when jailed).
    fn launch_parts(&self) -> Result<(PathBuf, Vec<OsString>, Option<jail::Confinement>), VmError> {
        let Some(jail) = &self.jail else {
            self.write_config(&self.config)?;
            let mut args = vec![self.vmm.clone().into_os_string()];
            args.extend(self.args().into_iter().map(OsString::from));
            return Ok((self.vmm.clone(), args, None));
        };
        let mut confined = jail.confine(&self.config)?;
        let inside = jail.inside(&self.config_file).ok_or_else(|| jail::JailError::Unsupported {
            what: format!("configuration file {}", self.config_file.display()),
            reason: format!("it must be in the jail's root {}", jail.root().display()),
        })?;
        self.write_config(&confined.config)?;
        // argv[0] is the VMM's path on the host (in the sandbox's state directory), so ps and
        // the cleanup of a dead shim's sandbox recognise it.
        let argv0 = jail::host_path(jail.root(), jail.program()).into_os_string();
        let mut args = vec![argv0, "--config".into(), inside.into_os_string()];
        if let Some(dir) = &self.restore {
            // The template's files, read-only, at fixed paths inside the jail.
            for f in [crate::template::STATE_FILE, crate::template::MEMORY_FILE] {
                confined.binds.push(jail.bind_file(&dir.join(f), &format!("{JAIL_TEMPLATE}/{f}"))?);
            }
            args.extend(["--restore".into(), JAIL_TEMPLATE.into()]);
        }
        Ok((jail.program().to_path_buf(), args, Some(jail.confinement(&confined.binds, confined.threads))))
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
    /// Spawns the VMM (in its jail if the plan has one). The child is spawned and reaped by
    /// one dedicated thread, so the VMM's parent-death signal (SIGKILL) fires exactly when
    /// the shim process goes away. The inherited descriptors are closed in the shim once the
    /// VMM has them.
    pub fn spawn(mut plan: VmPlan) -> Result<Vm, VmError> {
        plan.check_files()?;
        let fds: Vec<OwnedFd> = std::mem::take(&mut plan.fds).into_iter().map(|f| f.fd).collect();
        let (program, args, confine) = plan.launch_parts()?;
        let spawn_err = |source| VmError::Spawn { vmm: plan.vmm.clone(), source };
        // Readable too: husk-vmm keeps a stderr that is a regular file within its
        // log_max_bytes by moving the newest part to the start (microvm bounded_log).
        let log = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&plan.vmm_log).map_err(spawn_err)?;
        let log2 = log.try_clone().map_err(spawn_err)?;
        // Opened here (O_CLOEXEC, so the VMM does not keep them); the child writes "0" to each
        // before anything else, so the VMM and every thread it starts live in the pod's cgroup.
        let cgroups: Vec<OwnedFd> = plan
            .cgroup_procs
            .iter()
            .map(|p| std::fs::OpenOptions::new().write(true).open(p).map(OwnedFd::from).map_err(|source| VmError::Cgroup { path: p.clone(), source }))
            .collect::<Result<_, _>>()?;
        let mut env = vec![(OsString::from("PATH"), OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"))];
        if let Some(level) = std::env::var_os("HUSK_LOG") {
            env.push(("HUSK_LOG".into(), level));
        }
        let launch = Launch {
            program,
            args,
            env,
            cwd: plan.work_dir.clone(),
            stdio: [jail::dev_null().map_err(spawn_err)?, OwnedFd::from(log), OwnedFd::from(log2)],
            fds,
            cgroups,
            confine,
        };
        let exit = Arc::new(ExitWatch::default());
        let watch = exit.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("vmm-reaper".into())
            .spawn(move || match jail::spawn(launch) {
                Ok(pid) => {
                    let _ = tx.send(Ok(pid));
                    match wait_exit(pid) {
                        Ok(st) => watch.set(st),
                        Err(e) => log::error!("waiting for husk-vmm pid {pid} failed: {e}"),
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(spawn_err)?;
        let pid = rx.recv().map_err(|_| spawn_err(std::io::Error::other("spawner thread died")))??;
        match &plan.jail {
            Some(j) => log::info!("started husk-vmm pid {pid} as uid {} jailed in {}", j.uid(), j.root().display()),
            None => log::info!("started husk-vmm pid {pid} unjailed: {:?}", plan.args()),
        }
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

/// Waits for `pid` (our child) to end; its exit status.
fn wait_exit(pid: u32) -> std::io::Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child; `status` outlives the call.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r >= 0 {
            return Ok(ExitStatus::from_raw(status));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
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
    let lines: Vec<String> =
        buf.split(|&b| b == b'\n').map(|l| l.trim_ascii()).filter(|l| !l.is_empty()).map(|l| crate::guest_text::escape_controls(l, false)).collect();
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
            disk: vec![husk_config::DiskConfig { path: dir.join("r.img"), id: Some("rootfs".into()), read_only: true, fd: None }],
            vsock: Some(husk_config::VsockConfig { cid: 3, uds: dir.join("vsock.sock") }),
            ..Default::default()
        };
        VmPlan {
            vmm: vmm.into(),
            config,
            config_file: dir.join("vm.toml"),
            vmm_log: dir.join("vmm.log"),
            work_dir: dir.into(),
            cgroup_procs: Vec::new(),
            fds: Vec::new(),
            jail: None,
            restore: None,
        }
    }

    #[test]
    fn a_restoring_vmm_gets_the_template_after_its_configuration() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("fake-vmm");
        std::fs::write(
            &script,
            "#!/bin/sh
echo \"$@\" >&2
",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut p = plan(d.path(), script.to_str().unwrap());
        p.restore = Some(d.path().join("tpl"));
        let vm = Vm::spawn(p).unwrap();
        vm.exit_watch().wait(Some(Duration::from_secs(10))).unwrap();
        let log = std::fs::read_to_string(d.path().join("vmm.log")).unwrap();
        assert_eq!(log.trim(), format!("--config {} --restore {}", d.path().join("vm.toml").display(), d.path().join("tpl").display()));
    }

    #[test]
    fn the_vmm_gets_its_configuration_as_a_file_it_can_parse() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("fake-vmm");
        std::fs::write(&script, "#!/bin/sh\n[ \"$1\" = --config ] && cat \"$2\" >&2\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let p = plan(d.path(), script.to_str().unwrap());
        let (config_file, config) = (p.config_file.clone(), p.config.clone());
        let vm = Vm::spawn(p).unwrap();
        vm.exit_watch().wait(Some(Duration::from_secs(10))).unwrap();
        let written = VmConfig::from_toml_file(&config_file).unwrap();
        assert_eq!(written, config);
        assert!(std::fs::read_to_string(d.path().join("vmm.log")).unwrap().contains("vsock"));
    }

    #[test]
    fn inherited_descriptors_arrive_at_the_numbers_the_plan_gives_and_leave_the_shim() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("fake-vmm");
        std::fs::write(&script, "#!/bin/sh\nreadlink /proc/$$/fd/3 /proc/$$/fd/4 >&2\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut p = plan(d.path(), script.to_str().unwrap());
        let passwd = std::fs::File::open("/etc/passwd").unwrap();
        // Close-on-exec, as every descriptor of the shim: a child another test spawns meanwhile
        // must not get a copy of the write end (the EOF below would then not come).
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        assert_eq!(p.inherit(passwd.into(), "a file"), 3);
        assert_eq!(p.inherit(w, "a pipe"), 4);
        let vm = Vm::spawn(p).unwrap();
        vm.exit_watch().wait(Some(Duration::from_secs(10))).unwrap();
        let log = std::fs::read_to_string(d.path().join("vmm.log")).unwrap();
        assert!(log.starts_with("/etc/passwd\npipe:["), "{log}");
        // The shim's copy of the pipe's write end is closed: with the VMM gone, the reader sees
        // EOF, not "would block".
        let flags = nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
        assert_eq!(nix::unistd::read(&r, &mut [0u8; 8]), Ok(0), "the shim kept a copy of an inherited descriptor");
    }

    #[test]
    fn exit_reasons_from_the_console_are_escaped() {
        let d = tempfile::tempdir().unwrap();
        let p = plan(d.path(), "/bin/true");
        std::fs::write(d.path().join("console.log"), b"a\r\n\x1b[2J\x1b]0;x\x07panic\r\n").unwrap();
        assert_eq!(last_lines(p.console_log().unwrap(), 3), "a | \\x1b[2J\\x1b]0;x\\x07panic");
    }

    #[test]
    fn the_vmm_alone_inherits_the_descriptors_it_is_given() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("fake-vmm");
        std::fs::write(&script, "#!/bin/sh\nls /proc/$$/fd >&2\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        // Close-on-exec, as the shim keeps its descriptors: no other one reaches the VMM.
        let other = std::fs::File::open("/proc/self/status").unwrap();
        let mut p = plan(d.path(), script.to_str().unwrap());
        let given = p.inherit(std::fs::File::open("/proc/self/status").unwrap().into(), "a file");
        let vm = Vm::spawn(p).unwrap();
        vm.exit_watch().wait(Some(Duration::from_secs(10))).unwrap();
        let fds: Vec<String> = std::fs::read_to_string(d.path().join("vmm.log")).unwrap().lines().map(str::to_string).collect();
        assert!(fds.contains(&given.to_string()), "{fds:?}");
        let other = std::os::fd::AsRawFd::as_raw_fd(&other);
        assert!(other == given || !fds.contains(&other.to_string()), "{fds:?}");
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
