//! `husk check`: can this host run husk containers, and if not, why.

use std::path::Path;

use husk_config::HuskConfig;

/// One readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found (or why it failed).
    pub detail: String,
}

fn item(name: &'static str, r: Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check { name, ok: true, detail },
        Err(detail) => Check { name, ok: false, detail },
    }
}

/// `KVM_GET_API_VERSION` must return this.
const KVM_API_VERSION: i32 = 12;

fn kvm() -> Result<String, String> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e} (load kvm_intel or kvm_amd, check permissions)"))?;
    let v = kvm.get_api_version();
    if v != KVM_API_VERSION {
        return Err(format!("KVM_GET_API_VERSION returned {v}, expected {KVM_API_VERSION}"));
    }
    Ok(format!("/dev/kvm opened, API version {v}"))
}

fn cpu_virt(cpuinfo: &str) -> Result<String, String> {
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    if has("vmx") {
        Ok("CPU has vmx (Intel VT-x)".into())
    } else if has("svm") {
        Ok("CPU has svm (AMD-V)".into())
    } else {
        Err("CPU has neither vmx nor svm: /dev/kvm (if any) is not hardware virtualization (e.g. kvm_pvm); Linux guests will not boot".into())
    }
}

fn rw_device(path: &str, hint: &str) -> Result<String, String> {
    std::fs::OpenOptions::new().read(true).write(true).open(path).map(|_| format!("{path} usable")).map_err(|e| format!("cannot open {path}: {e} ({hint})"))
}

fn cgroup_v2() -> Result<String, String> {
    let p = Path::new("/sys/fs/cgroup/cgroup.controllers");
    std::fs::read_to_string(p)
        .map(|c| format!("cgroup v2 mounted (controllers: {})", c.trim()))
        .map_err(|e| format!("{} unreadable ({e}): cgroup v2 is not mounted at /sys/fs/cgroup", p.display()))
}

fn file(path: &Path, field: &str) -> Result<String, String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() > 0 => Ok(format!("{} ({} bytes)", path.display(), m.len())),
        Ok(_) => Err(format!("{} is empty or not a file (set {field})", path.display())),
        Err(e) => Err(format!("{}: {e} (set {field} or run make install)", path.display())),
    }
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn vmm(configured: &Path) -> Result<String, String> {
    if executable(configured) {
        return Ok(format!("{} (shim.vmm)", configured.display()));
    }
    let on_path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join("husk-vmm")).find(|c| executable(c))).unwrap_or_default();
    match on_path {
        Some(p) => Err(format!("{} is not executable; husk-vmm found at {} (set shim.vmm to it)", configured.display(), p.display())),
        None => Err(format!("husk-vmm not found at {} (shim.vmm) nor on PATH", configured.display())),
    }
}

/// Runs every check against the configuration at `config_path`.
pub fn check(config_path: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let cfg = match HuskConfig::load(config_path) {
        Ok(c) => {
            out.push(item("config", Ok(format!("{} loaded", config_path.display()))));
            c
        }
        Err(e) => {
            out.push(item("config", Err(format!("{}; using defaults", crate::error::chain(&e)))));
            HuskConfig::default()
        }
    };
    out.push(item("kvm", kvm()));
    out.push(item("cpu", std::fs::read_to_string("/proc/cpuinfo").map_err(|e| format!("/proc/cpuinfo: {e}")).and_then(|c| cpu_virt(&c))));
    out.push(item("tun", rw_device("/dev/net/tun", "load the tun module")));
    out.push(item("cgroups", cgroup_v2()));
    out.push(item("kernel", file(&cfg.vm.kernel, "vm.kernel")));
    out.push(item("initramfs", file(&cfg.vm.initramfs, "vm.initramfs")));
    let vmm_ok = vmm(&cfg.shim.vmm);
    let jail = match &vmm_ok {
        Ok(_) => crate::jail::probe::probe(&cfg),
        Err(_) => Err("not tried: husk-vmm is missing".into()),
    };
    out.push(item("husk-vmm", vmm_ok));
    out.push(item("jail", jail));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_flags_decide_hardware_virtualization() {
        assert!(cpu_virt("flags\t\t: fpu vme svm sse").unwrap().contains("AMD-V"));
        assert!(cpu_virt("flags\t\t: fpu vmx").unwrap().contains("VT-x"));
        assert!(cpu_virt("flags\t\t: fpu sse").unwrap_err().contains("neither vmx nor svm"));
    }

    fn config_with_vmm(d: &Path, vmm: &str, jail: &str) -> std::path::PathBuf {
        let cfg = d.join("c.toml");
        let text = format!("[shim]\nvmm = \"{vmm}\"\nstate_dir = \"{0}/state\"\n[jail]\n{jail}\n", d.display());
        std::fs::write(&cfg, text).unwrap();
        cfg
    }

    #[test]
    fn the_jail_is_built_and_the_vmm_run_in_it() {
        assert!(nix::unistd::geteuid().is_root(), "husk check builds a real jail: run as root");
        let d = tempfile::tempdir().unwrap();
        let get = |r: &[Check]| r.iter().find(|c| c.name == "jail").unwrap().clone();
        // Not husk-vmm, but a real dynamic program: it ran in the jail (its loader and
        // libraries were there) and printed its own version, which the check rejects.
        let r = check(&config_with_vmm(d.path(), "/bin/echo", "uid_first = 1900000000\nuid_count = 4"));
        let j = get(&r);
        assert!(!j.ok && j.detail.contains("GNU coreutils") && j.detail.contains("--version"), "{j:?}");
        assert!(!d.path().join("state").join(".jail-check").exists());
        assert_eq!(std::fs::read_dir(d.path().join("state")).unwrap().count(), 0, "the probe leaves nothing in the state directory");
        let r = check(&config_with_vmm(d.path(), "/bin/echo", "enabled = false"));
        let j = get(&r);
        assert!(j.ok && j.detail.contains("disabled"), "{j:?}");
        let r = check(&config_with_vmm(d.path(), "/nonexistent/husk-vmm", ""));
        let j = get(&r);
        assert!(!j.ok && j.detail.contains("husk-vmm is missing"), "{j:?}");
    }

    #[test]
    fn missing_boot_files_and_vmm_are_named() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("c.toml");
        std::fs::write(&cfg, format!("[vm]\nkernel = \"{0}/vmlinux\"\ninitramfs = \"{0}/initramfs\"\n[shim]\nvmm = \"{0}/husk-vmm\"\n", d.path().display()))
            .unwrap();
        std::fs::write(d.path().join("initramfs"), b"x").unwrap();
        let r = check(&cfg);
        let get = |n: &str| r.iter().find(|c| c.name == n).unwrap().clone();
        assert!(get("config").ok);
        let k = get("kernel");
        assert!(!k.ok && k.detail.contains("vmlinux") && k.detail.contains("vm.kernel"), "{k:?}");
        assert!(get("initramfs").ok);
        let v = get("husk-vmm");
        assert!(!v.ok && v.detail.contains("husk-vmm"), "{v:?}");
    }
}
