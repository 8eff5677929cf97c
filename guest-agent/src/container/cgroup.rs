//! A container's cgroup v2: limits, freezer, kill, statistics.
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::agent::{CpuStats, IoDeviceStats, IoStats, MemoryStats, PidsStats, StatsResponse};
use oci_spec::runtime::LinuxResources;

use crate::error::{AgentError, Result};

/// One container's cgroup directory.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// "key value" lines → value of key.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines().filter_map(|l| l.split_once(' ')).find(|(k, _)| *k == key).and_then(|(_, v)| v.trim().parse().ok()).unwrap_or(0)
}

fn max_value(text: Option<String>) -> u64 {
    text.and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

impl Cgroup {
    /// Creates `<root>/<id>`.
    pub fn create(root: &Path, id: &str) -> Result<Cgroup> {
        let path = root.join(id);
        std::fs::create_dir(&path).map_err(|e| AgentError::io(format!("creating cgroup {}", path.display()), e))?;
        Ok(Cgroup { path })
    }

    fn write(&self, file: &str, value: &str, what: &str) -> Result<()> {
        let p = self.path.join(file);
        if !p.exists() {
            let controller = file.split('.').next().unwrap_or(file);
            return Err(AgentError::InvalidArgument(format!("{what} {value} needs the {controller} cgroup controller, which this guest lacks")));
        }
        std::fs::write(&p, value).map_err(|e| AgentError::io(format!("setting {file}={value}"), e))
    }

    /// Attaches the device filter of `rules` (`linux.resources.devices`, see
    /// [`crate::container::devices`]) to the cgroup.
    pub fn filter_devices(&self, rules: &[oci_spec::runtime::LinuxDeviceCgroup]) -> Result<()> {
        use crate::container::devices;
        let bad = |e: devices::DeviceError| match e {
            devices::DeviceError::Kernel { what, source } => AgentError::io(what, source),
            other => AgentError::InvalidArgument(other.to_string()),
        };
        let prog = devices::program(&devices::rules(rules).map_err(bad)?);
        let fd = devices::bpf::load(&prog).map_err(bad)?;
        devices::bpf::attach(&fd, &self.path).map_err(bad)
    }

    /// Applies a cpuset list (`file` is cpuset.cpus or cpuset.mems) as far as the VM has what it
    /// names (see [`crate::container::cpuset`]); the parent's `<file>.effective` is what the VM has.
    fn apply_cpuset(&self, file: &str, field: &str, list: &str) -> Result<()> {
        use crate::container::cpuset;
        let wanted = cpuset::parse(field, list)?;
        if wanted.is_empty() {
            return Ok(());
        }
        let effective = self.path.parent().map(|p| p.join(format!("{file}.effective")));
        let available = match effective.as_deref().and_then(read) {
            Some(text) => cpuset::parse(file, &text)?,
            None => return self.write(file, list, field),
        };
        match cpuset::fit(&wanted, &available) {
            Some(fit) => {
                if fit != wanted {
                    log::warn!("{field} {list:?}: the VM has only {} of these; applying those", cpuset::format(&fit));
                }
                self.write(file, &cpuset::format(&fit), field)
            }
            None => {
                log::warn!("{field} {list:?} names none of the VM's ({}): not applied, the container uses all of them", cpuset::format(&available));
                Ok(())
            }
        }
    }

    /// Applies memory, cpu, cpuset and pids limits. Huge page limits: the guest reserves no huge
    /// pages (its kernel has hugetlbfs, for page reporting's block size, but no hugetlb cgroup
    /// controller), so a limit of 0 is what it gives anyway and any other is refused.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        for h in r.hugepage_limits().iter().flatten() {
            if h.limit() > 0 {
                return Err(AgentError::InvalidArgument(format!(
                    "linux.resources.hugepageLimits: {} pages of size {} asked for, but this VM has no huge pages",
                    h.limit(),
                    h.page_size()
                )));
            }
        }
        if let Some(m) = r.memory() {
            if let Some(limit) = m.limit().filter(|l| *l > 0) {
                self.write("memory.max", &limit.to_string(), "memory limit")?;
                if let Some(swap) = m.swap().filter(|s| *s > 0) {
                    let swap_only = swap.saturating_sub(limit).max(0);
                    // Guests without swap accounting have no memory.swap.max: nothing to limit.
                    if self.path.join("memory.swap.max").exists() {
                        self.write("memory.swap.max", &swap_only.to_string(), "swap limit")?;
                    }
                }
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(quota) = c.quota().filter(|q| *q > 0) {
                let period = c.period().filter(|p| *p > 0).unwrap_or(100_000);
                self.write("cpu.max", &format!("{quota} {period}"), "cpu quota")?;
            }
            if let Some(cpus) = c.cpus().as_deref() {
                self.apply_cpuset("cpuset.cpus", "linux.resources.cpu.cpus", cpus)?;
            }
            if let Some(mems) = c.mems().as_deref() {
                self.apply_cpuset("cpuset.mems", "linux.resources.cpu.mems", mems)?;
            }
            if let Some(shares) = c.shares().filter(|s| *s > 0) {
                // The conversion runc and crun use: shares 2..=262144 → weight 1..=10000.
                let shares = shares.clamp(2, 262_144);
                let weight = 1 + ((shares - 2) * 9999) / 262_142;
                self.write("cpu.weight", &weight.to_string(), "cpu shares")?;
            }
        }
        if let Some(p) = r.pids() {
            if p.limit() > 0 {
                self.write("pids.max", &p.limit().to_string(), "pids limit")?;
            }
        }
        Ok(())
    }

    /// cgroup.procs opened for writing (the child writes "0" to join).
    pub fn procs_fd(&self) -> Result<OwnedFd> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .map_err(|e| AgentError::io(format!("opening {}/cgroup.procs", self.path.display()), e))?;
        Ok(OwnedFd::from(f))
    }

    /// Pids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        read(&self.path.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Freezes or thaws, waiting (up to 5 s) for the kernel to report the state.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let v = if frozen { "1" } else { "0" };
        std::fs::write(self.path.join("cgroup.freeze"), v).map_err(|e| AgentError::io(format!("writing cgroup.freeze={v}"), e))?;
        let want = if frozen { 1 } else { 0 };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let events = read(&self.path.join("cgroup.events")).unwrap_or_default();
            if keyed(&events, "frozen") == want {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(AgentError::io(format!("cgroup {} did not reach frozen={want}", self.path.display()), std::io::Error::from(std::io::ErrorKind::TimedOut)))
    }

    /// Whether the cgroup is frozen (PauseContainer).
    pub fn is_frozen(&self) -> bool {
        read(&self.path.join("cgroup.freeze")).is_some_and(|s| s.trim() == "1")
    }

    /// Sends `sig` to every process in the cgroup (SIGKILL through cgroup.kill).
    pub fn signal_all(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        if sig == nix::sys::signal::Signal::SIGKILL && std::fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return Ok(());
        }
        for pid in self.pids() {
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => return Err(AgentError::sys(format!("sending {sig} to pid {pid}"), e)),
            }
        }
        Ok(())
    }

    /// Kills everything left and removes the directory (retrying while processes die).
    pub fn remove(&self) -> Result<()> {
        let _ = std::fs::write(self.path.join("cgroup.freeze"), "0");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(AgentError::io(format!("removing cgroup {}", self.path.display()), e)),
                Err(_) => {
                    let _ = self.signal_all(nix::sys::signal::Signal::SIGKILL);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// memory.events oom_kill counter.
    pub fn oom_kills(&self) -> u64 {
        keyed(&read(&self.path.join("memory.events")).unwrap_or_default(), "oom_kill")
    }

    /// Path of memory.events (watched for OOM kills).
    pub fn memory_events(&self) -> PathBuf {
        self.path.join("memory.events")
    }

    /// Statistics; files of controllers the guest lacks read as zero.
    pub fn stats(&self) -> StatsResponse {
        let p = |f: &str| self.path.join(f);
        let cpu_stat = read(&p("cpu.stat")).unwrap_or_default();
        let mut cpu = CpuStats::new();
        cpu.usage_usec = keyed(&cpu_stat, "usage_usec");
        cpu.user_usec = keyed(&cpu_stat, "user_usec");
        cpu.system_usec = keyed(&cpu_stat, "system_usec");
        cpu.nr_periods = keyed(&cpu_stat, "nr_periods");
        cpu.nr_throttled = keyed(&cpu_stat, "nr_throttled");
        cpu.throttled_usec = keyed(&cpu_stat, "throttled_usec");
        let mut memory = MemoryStats::new();
        memory.usage_bytes = max_value(read(&p("memory.current")));
        memory.limit_bytes = max_value(read(&p("memory.max")));
        memory.swap_usage_bytes = max_value(read(&p("memory.swap.current")));
        for line in read(&p("memory.stat")).unwrap_or_default().lines() {
            if let Some((k, v)) = line.split_once(' ') {
                if let Ok(v) = v.trim().parse() {
                    memory.stat.insert(k.to_string(), v);
                }
            }
        }
        let events = read(&p("memory.events")).unwrap_or_default();
        memory.oom_events = keyed(&events, "oom");
        memory.oom_kill_events = keyed(&events, "oom_kill");
        let mut pids = PidsStats::new();
        pids.current = match read(&p("pids.current")) {
            Some(s) => s.trim().parse().unwrap_or(0),
            None => self.pids().len() as u64,
        };
        pids.limit = max_value(read(&p("pids.max")));
        let mut io = IoStats::new();
        for line in read(&p("io.stat")).unwrap_or_default().lines() {
            let mut words = line.split_whitespace();
            let Some((maj, min)) = words.next().and_then(|d| d.split_once(':')) else { continue };
            let mut d = IoDeviceStats::new();
            d.major = maj.parse().unwrap_or(0);
            d.minor = min.parse().unwrap_or(0);
            for w in words {
                let Some((k, v)) = w.split_once('=') else { continue };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => d.read_bytes = v,
                    "wbytes" => d.write_bytes = v,
                    "rios" => d.read_ios = v,
                    "wios" => d.write_ios = v,
                    _ => {}
                }
            }
            io.devices.push(d);
        }
        let mut resp = StatsResponse::new();
        resp.cpu = Some(cpu).into();
        resp.memory = Some(memory).into();
        resp.pids = Some(pids).into();
        resp.io = Some(io).into();
        resp
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fake(name: &str, files: &[(&str, &str)]) -> (PathBuf, Cgroup) {
        let root = std::env::temp_dir().join(format!("husk-cg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let cg = Cgroup::create(&root, "c").unwrap();
        for (f, v) in files {
            std::fs::write(root.join("c").join(f), v).unwrap();
        }
        (root, cg)
    }

    #[test]
    fn stats_are_read_from_cgroup_files() {
        let (root, cg) = fake(
            "stats",
            &[
                ("cpu.stat", "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 5\nnr_throttled 2\nthrottled_usec 9\n"),
                ("memory.current", "4096\n"),
                ("memory.max", "max\n"),
                ("memory.stat", "anon 1024\nfile 2048\n"),
                ("memory.events", "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n"),
                ("pids.current", "7\n"),
                ("pids.max", "64\n"),
                ("io.stat", "254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n"),
                ("cgroup.procs", ""),
            ],
        );
        let s = cg.stats();
        assert_eq!((s.cpu.usage_usec, s.cpu.user_usec, s.cpu.system_usec), (100, 60, 40));
        assert_eq!((s.cpu.nr_periods, s.cpu.nr_throttled, s.cpu.throttled_usec), (5, 2, 9));
        assert_eq!((s.memory.usage_bytes, s.memory.limit_bytes), (4096, 0));
        assert_eq!(s.memory.stat.get("file"), Some(&2048));
        assert_eq!((s.memory.oom_events, s.memory.oom_kill_events), (2, 1));
        assert_eq!((s.pids.current, s.pids.limit), (7, 64));
        let d = &s.io.devices[0];
        assert_eq!((d.major, d.minor, d.read_bytes, d.write_bytes, d.read_ios, d.write_ios), (254, 0, 10, 20, 1, 2));
        assert_eq!(cg.oom_kills(), 1);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn limits_are_written_and_missing_controllers_named() {
        let (root, cg) = fake("limits", &[("memory.max", "max"), ("cpu.max", "max 100000"), ("cpu.weight", "100")]);
        let res: LinuxResources = serde_json::from_str(r#"{"memory":{"limit":1048576},"cpu":{"quota":20000,"period":50000,"shares":1024}}"#).unwrap();
        cg.apply(&res).unwrap();
        let read = |f: &str| std::fs::read_to_string(root.join("c").join(f)).unwrap();
        assert_eq!(read("memory.max"), "1048576");
        assert_eq!(read("cpu.max"), "20000 50000");
        assert_eq!(read("cpu.weight"), "39");
        let res: LinuxResources = serde_json::from_str(r#"{"pids":{"limit":10}}"#).unwrap();
        let err = cg.apply(&res).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(err.to_string().contains("pids cgroup controller"), "{err}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn cpusets_apply_what_the_vm_has_and_huge_pages_are_refused() {
        let (root, cg) = fake("cpuset", &[("cpuset.cpus", ""), ("cpuset.mems", "")]);
        std::fs::write(root.join("cpuset.cpus.effective"), "0-1\n").unwrap();
        std::fs::write(root.join("cpuset.mems.effective"), "0\n").unwrap();
        let read = |f: &str| std::fs::read_to_string(root.join("c").join(f)).unwrap();
        let res = |json: &str| serde_json::from_str::<LinuxResources>(json).unwrap();
        cg.apply(&res(r#"{"cpu":{"cpus":"1-3","mems":"0"}}"#)).unwrap();
        assert_eq!((read("cpuset.cpus").as_str(), read("cpuset.mems").as_str()), ("1", "0"));
        std::fs::write(root.join("c/cpuset.cpus"), "").unwrap();
        cg.apply(&res(r#"{"cpu":{"cpus":"4-7"}}"#)).unwrap();
        assert_eq!(read("cpuset.cpus"), "", "a list naming no CPU of the VM is not applied");
        let e = cg.apply(&res(r#"{"cpu":{"cpus":"0-x"}}"#)).unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(e.to_string().contains("linux.resources.cpu.cpus"), "{e}");
        cg.apply(&res(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":0}]}"#)).unwrap();
        let e = cg.apply(&res(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":4194304}]}"#)).unwrap_err().to_string();
        assert!(e.contains("hugepageLimits") && e.contains("2MB"), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
