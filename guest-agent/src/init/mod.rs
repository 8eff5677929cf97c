//! PID 1 duties: the guest's base mounts, the console, loopback, hostname, kernel command-line
//! options, and powering the VM off; after a restore from a snapshot, the wall clock
//! ([`clock`]) and the kernel's random state ([`entropy`]).
pub mod clock;
pub mod entropy;

use std::path::Path;

use husk_protocol::PAGE_REPORTING_ORDER_CMDLINE_KEY as PAGE_REPORTING_ORDER_KEY;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

/// Errors of PID 1 setup.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A base mount failed.
    #[error("mounting {fstype} on {target}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// errno.
        #[source]
        source: nix::Error,
    },
    /// Creating a mount point failed.
    #[error("creating directory {path}")]
    Mkdir {
        /// The directory.
        path: &'static str,
        /// errno.
        #[source]
        source: nix::Error,
    },
    /// Enabling cgroup controllers failed.
    #[error("enabling cgroup controllers {controllers:?}")]
    Cgroup {
        /// The controllers asked for.
        controllers: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Bringing up `lo` failed.
    #[error("bringing up loopback interface lo")]
    Loopback(#[source] nix::Error),
    /// Setting the hostname failed.
    #[error("setting hostname {0:?}")]
    Hostname(String, #[source] nix::Error),
    /// A kernel command-line option had a bad value.
    #[error("kernel command line option {key}={value:?} is not valid")]
    Cmdline {
        /// The option.
        key: &'static str,
        /// Its value.
        value: String,
    },
}

struct BaseMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const fn base(source: &'static str, target: &'static str, fstype: &'static str, flags: MsFlags, data: Option<&'static str>) -> BaseMount {
    BaseMount { source, target, fstype, flags, data }
}

/// Moves the agent's root off the initramfs' rootfs onto a bind mount of it: pivot_root
/// (used for every container) refuses to run while the caller's root is rootfs itself.
pub fn leave_rootfs() -> Result<(), InitError> {
    let none = None::<&str>;
    let err = |target: &'static str| move |source| InitError::Mount { fstype: "bind", target, source };
    match nix::unistd::mkdir("/.root", Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(nix::Error::EEXIST) => {}
        Err(source) => return Err(InitError::Mkdir { path: "/.root", source }),
    }
    mount(Some("/"), "/.root", none, MsFlags::MS_BIND | MsFlags::MS_REC, none).map_err(err("/.root"))?;
    nix::unistd::chdir("/.root").map_err(err("/.root"))?;
    mount(Some("."), "/", none, MsFlags::MS_MOVE, none).map_err(err("/"))?;
    nix::unistd::chroot(".").map_err(err("/"))?;
    nix::unistd::chdir("/").map_err(err("/"))
}

/// Mounts proc, sysfs, devtmpfs, devpts, /dev/shm, /run, /tmp and cgroup2, and points
/// stdin/stdout/stderr at /dev/console.
pub fn mount_base() -> Result<(), InitError> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts = [
        base("proc", "/proc", "proc", nodev, None),
        base("sysfs", "/sys", "sysfs", nodev, None),
        base("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755")),
        base("devpts", "/dev/pts", "devpts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("newinstance,ptmxmode=0666,mode=0620,gid=5")),
        base("shm", "/dev/shm", "tmpfs", nodev, Some("mode=1777")),
        base("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755")),
        base("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777")),
        base("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, None),
    ];
    for m in &mounts {
        match nix::unistd::mkdir(m.target, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(source) => return Err(InitError::Mkdir { path: m.target, source }),
        }
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            // Already mounted (e.g. devtmpfs by CONFIG_DEVTMPFS_MOUNT).
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => return Err(InitError::Mount { fstype: m.fstype, target: m.target, source }),
        }
        if m.target == "/dev" {
            attach_console();
        }
    }
    // /dev/ptmx must be the one of our devpts instance.
    let _ = std::fs::remove_file("/dev/ptmx");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    for (src, dst) in [("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"), ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr")]
    {
        let _ = std::os::unix::fs::symlink(src, dst);
    }
    enable_cgroup_controllers(Path::new("/sys/fs/cgroup"))
}

/// Points fds 0, 1 and 2 at /dev/console (the kernel leaves them closed when the initramfs has
/// no /dev/console node).
fn attach_console() {
    use std::os::fd::AsRawFd;
    let Ok(console) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/console") else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard fds; `console` is a valid open fd for the whole call.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}

/// Enables in `dir`'s subtree every controller `dir` has (cgroup.controllers).
pub fn enable_cgroup_controllers(dir: &Path) -> Result<(), InitError> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map_err(|source| InitError::Cgroup { controllers: "(reading cgroup.controllers)".into(), source })?;
    let wanted: Vec<String> = available.split_whitespace().map(|c| format!("+{c}")).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let controllers = wanted.join(" ");
    std::fs::write(dir.join("cgroup.subtree_control"), &controllers).map_err(|source| InitError::Cgroup { controllers, source })
}

/// Brings up the loopback interface.
pub fn loopback_up() -> Result<(), InitError> {
    crate::network::set_up("lo", true).map_err(InitError::Loopback)
}

/// Sets the hostname.
pub fn set_hostname(name: &str) -> Result<(), InitError> {
    nix::unistd::sethostname(name).map_err(|e| InitError::Hostname(name.to_string(), e))
}

/// Value of `key=value` on a kernel command line (the last one wins, like the kernel).
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().rev().filter_map(|w| w.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// The vsock port from `husk.agent_port=N`, or the default.
pub fn agent_port(cmdline: &str) -> Result<u32, InitError> {
    match cmdline_value(cmdline, husk_protocol::AGENT_PORT_CMDLINE_KEY) {
        None => Ok(husk_protocol::DEFAULT_AGENT_PORT),
        Some(v) => {
            v.parse::<u32>().ok().filter(|p| *p > 0 && *p != u32::MAX).ok_or(InitError::Cmdline { key: husk_protocol::AGENT_PORT_CMDLINE_KEY, value: v.into() })
        }
    }
}

/// Where Linux keeps that order (a parameter of the built-in page_reporting code).
const PAGE_REPORTING_ORDER_PARAM: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
/// The largest order Linux 6.1 accepts there (MAX_ORDER - 1).
const PAGE_REPORTING_ORDER_MAX: u32 = 10;

/// The order from `husk.page_reporting_order=N`, if given.
pub fn page_reporting_order(cmdline: &str) -> Result<Option<u32>, InitError> {
    match cmdline_value(cmdline, PAGE_REPORTING_ORDER_KEY) {
        None => Ok(None),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|o| *o <= PAGE_REPORTING_ORDER_MAX)
            .map(Some)
            .ok_or(InitError::Cmdline { key: PAGE_REPORTING_ORDER_KEY, value: v.into() }),
    }
}

/// Sets the order of free page reporting. Linux 6.1 overwrites an order given on its own command
/// line when the balloon driver registers (with the huge page order, 2 MiB), so the memory the
/// kernel frees at boot in smaller pieces (the initramfs archive, init sections, early
/// allocations) would stay on the host for the VM's life: PID 1 sets it after the driver is up.
/// Without the balloon device the parameter does not exist and nothing is reported anyway.
pub fn set_page_reporting_order(order: u32) -> std::io::Result<()> {
    std::fs::write(PAGE_REPORTING_ORDER_PARAM, order.to_string())
}

/// Powers the VM off: the one place that decides how. Per microvm/API.md: `sync()`, then
/// `reboot(RB_POWER_OFF)`; the kernel has no ACPI, so it halts and prints `reboot: Power down` /
/// `reboot: System halted`, which husk-vmm takes as "guest powered off" (exit status 0). If that
/// syscall fails, fall back to a reboot, which also ends husk-vmm (exit status 1).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    log::error!("power off failed: {err:?}; rebooting instead");
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn agent_port_from_cmdline() {
        assert_eq!(agent_port("console=ttyS0 quiet").unwrap(), 1024);
        assert_eq!(agent_port("husk.agent_port=2000 x=1").unwrap(), 2000);
        assert_eq!(agent_port("husk.agent_port=1 husk.agent_port=7").unwrap(), 7);
        let err = agent_port("husk.agent_port=abc").unwrap_err().to_string();
        assert!(err.contains("husk.agent_port=\"abc\""), "{err}");
        assert!(agent_port("husk.agent_port=0").is_err());
    }

    #[test]
    fn page_reporting_order_from_cmdline() {
        assert_eq!(page_reporting_order("console=ttyS0").unwrap(), None);
        assert_eq!(page_reporting_order("husk.page_reporting_order=0").unwrap(), Some(0));
        assert_eq!(page_reporting_order("husk.page_reporting_order=10").unwrap(), Some(10));
        let err = page_reporting_order("husk.page_reporting_order=11").unwrap_err().to_string();
        assert!(err.contains("husk.page_reporting_order=\"11\""), "{err}");
        assert!(page_reporting_order("husk.page_reporting_order=-1").is_err());
    }
}
