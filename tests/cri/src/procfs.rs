//! What the kernel says about processes, mounts and loop devices (/proc, /sys), read directly:
//! the suite's counts never come from a runtime's own state files.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Reading /proc or /sys failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no {field} in it")]
    Parse { path: PathBuf, field: &'static str },
}

fn read(path: &Path) -> Result<String, ProcError> {
    fs::read_to_string(path).map_err(|source| ProcError::Read { path: path.to_path_buf(), source })
}

/// One process, as /proc showed it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// The state letter of /proc/PID/stat (R, S, Z, ...).
    pub state: char,
    pub argv: Vec<String>,
}

impl Proc {
    /// The basename of argv[0] (kernel threads: empty).
    pub fn name(&self) -> &str {
        self.argv.first().map(|a| a.rsplit('/').next().unwrap_or(a)).unwrap_or("")
    }

    /// The argument after `flag`, if any.
    pub fn arg_after(&self, flag: &str) -> Option<&str> {
        self.argv.iter().position(|a| a == flag).and_then(|i| self.argv.get(i + 1)).map(String::as_str)
    }

    /// argv joined with spaces, for messages.
    pub fn cmdline(&self) -> String {
        self.argv.join(" ")
    }
}

fn read_proc(pid: u32) -> Option<Proc> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: the fields after it start behind the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    Some(Proc { pid, ppid, state, argv })
}

/// Every process visible now. Processes that exit while being read are left out.
pub fn processes() -> Result<Vec<Proc>, ProcError> {
    let dir = Path::new("/proc");
    let entries = fs::read_dir(dir).map_err(|source| ProcError::Read { path: dir.into(), source })?;
    Ok(entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter_map(read_proc).collect())
}

/// The processes below `root` (children, grandchildren, ...), not `root` itself.
pub fn descendants(procs: &[Proc], root: u32) -> Vec<&Proc> {
    let mut found: HashSet<u32> = HashSet::from([root]);
    // Parents may have higher pids than children (pid wrap): repeat until nothing is added,
    // at most once per process.
    for _ in 0..procs.len() {
        let before = found.len();
        for p in procs {
            if found.contains(&p.ppid) {
                found.insert(p.pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    procs.iter().filter(|p| p.pid != root && found.contains(&p.pid)).collect()
}

/// The shim processes of a pod: containerd-shim-* serving `address` for task `id`.
pub fn shims<'a>(procs: &'a [Proc], address: &str, id: &str) -> Vec<&'a Proc> {
    procs.iter().filter(|p| p.name().starts_with("containerd-shim") && p.arg_after("-address") == Some(address) && p.arg_after("-id") == Some(id)).collect()
}

/// The proportional set size of a process in KiB, from /proc/PID/smaps_rollup.
pub fn pss_kib(pid: u32) -> Result<u64, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps_rollup"));
    let text = read(&path)?;
    text.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).ok_or(ProcError::Parse { path, field: "Pss" })
}

/// The cgroup paths of a process, one per hierarchy line of /proc/PID/cgroup.
pub fn cgroups(pid: u32) -> Vec<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|t| t.lines().filter_map(|l| l.splitn(3, ':').nth(2)).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Mount points (field 2 of /proc/self/mounts), octal escapes decoded.
pub fn mount_points() -> Result<Vec<String>, ProcError> {
    let text = read(Path::new("/proc/self/mounts"))?;
    Ok(text.lines().filter_map(|l| l.split(' ').nth(1)).map(unescape_mount).collect())
}

fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(char::from(b)),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Attached loop devices: (device name, backing file).
pub fn loop_devices() -> Result<Vec<(String, String)>, ProcError> {
    let dir = Path::new("/sys/block");
    let entries = fs::read_dir(dir).map_err(|source| ProcError::Read { path: dir.into(), source })?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        // Only attached devices have loop/backing_file.
        if let Ok(file) = fs::read_to_string(e.path().join("loop/backing_file")) {
            out.push((name, file.trim_end().to_string()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, argv: &[&str]) -> Proc {
        Proc { pid, ppid, state: 'S', argv: argv.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn descendants_follow_the_tree_whatever_the_pid_order() {
        let procs = vec![p(10, 1, &["shim"]), p(5, 10, &["/usr/bin/husk-vmm"]), p(3, 5, &["child"]), p(20, 1, &["other"])];
        let d: Vec<u32> = descendants(&procs, 10).iter().map(|p| p.pid).collect();
        assert_eq!(d, vec![5, 3]);
        assert_eq!(procs[1].name(), "husk-vmm");
    }

    #[test]
    fn shims_match_address_and_id() {
        let shim = |pid, sock| p(pid, 0, &["/bin/containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", "abc", "-address", sock]);
        let procs = vec![shim(1, "/x/c.sock"), shim(2, "/y/c.sock")];
        assert_eq!(shims(&procs, "/x/c.sock", "abc").len(), 1);
        assert_eq!(shims(&procs, "/y/c.sock", "abc").len(), 1);
        assert!(shims(&procs, "/x/c.sock", "abd").is_empty());
    }

    #[test]
    fn mount_escapes_are_decoded() {
        assert_eq!(unescape_mount(r"/a\040b\011c"), "/a b\tc");
        assert_eq!(unescape_mount(r"/a\xyz"), r"/a\xyz");
    }
}
