//! Turns an OCI `Process` into an `ExecPlan`: everything the child needs, checked and converted
//! before the fork so that the child does as little as possible and bad input fails early.
use std::collections::HashSet;
use std::ffi::CString;
use std::sync::Arc;

use nix::sys::resource::Resource;
use oci_spec::runtime::{LinuxCapabilities, PosixRlimit, Process};

use crate::container::seccomp::SeccompPlan;
use crate::container::vsock::{self, VsockGuard};
use crate::error::{AgentError, Result};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const MAX_ARGS: usize = 4096;

/// The capability sets of a process.
#[derive(Debug, Clone, Default)]
pub struct CapsPlan {
    /// Bounding set.
    pub bounding: HashSet<caps::Capability>,
    /// Effective set.
    pub effective: HashSet<caps::Capability>,
    /// Permitted set.
    pub permitted: HashSet<caps::Capability>,
    /// Inheritable set.
    pub inheritable: HashSet<caps::Capability>,
    /// Ambient set.
    pub ambient: HashSet<caps::Capability>,
}

/// What the child does after its namespaces and root are set up.
#[derive(Debug)]
pub struct ExecPlan {
    /// argv; argv[0] is resolved against PATH in the container.
    pub args: Vec<CString>,
    /// The program as given (for messages).
    pub program: String,
    /// envp.
    pub env: Vec<CString>,
    /// PATH used to resolve the program.
    pub path: String,
    /// Working directory (absolute).
    pub cwd: CString,
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// A user name to resolve in the container's /etc/passwd (overrides uid/gid).
    pub username: Option<String>,
    /// umask.
    pub umask: Option<u32>,
    /// (resource, soft, hard).
    pub rlimits: Vec<(Resource, u64, u64)>,
    /// Capabilities; None keeps the agent's (all).
    pub caps: Option<CapsPlan>,
    /// PR_SET_NO_NEW_PRIVS.
    pub no_new_privs: bool,
    /// /proc/self/oom_score_adj.
    pub oom_score_adj: Option<i32>,
    /// Runs on a pty.
    pub terminal: bool,
    /// (width, height) of the pty.
    pub console_size: Option<(u16, u16)>,
    /// The filter that keeps the process off vsock; every plan starts with it, and a
    /// container whose spec grants vsock clears it (see [`crate::container::vsock`]).
    pub vsock_guard: Option<&'static VsockGuard>,
    /// The container's own profile (`linux.seccomp`), set by the container for its init and
    /// every exec.
    pub seccomp: Option<Arc<SeccompPlan>>,
}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| AgentError::InvalidArgument(format!("{what} {s:?} contains a NUL byte")))
}

fn resource(r: &PosixRlimit) -> Result<Resource> {
    let name = r.typ().to_string();
    Ok(match name.as_str() {
        "RLIMIT_CPU" => Resource::RLIMIT_CPU,
        "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
        "RLIMIT_DATA" => Resource::RLIMIT_DATA,
        "RLIMIT_STACK" => Resource::RLIMIT_STACK,
        "RLIMIT_CORE" => Resource::RLIMIT_CORE,
        "RLIMIT_RSS" => Resource::RLIMIT_RSS,
        "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => Resource::RLIMIT_AS,
        "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => Resource::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
        other => return Err(AgentError::InvalidArgument(format!("unsupported rlimit type {other}"))),
    })
}

fn cap_set(which: &str, set: &Option<HashSet<oci_spec::runtime::Capability>>) -> Result<HashSet<caps::Capability>> {
    let mut out = HashSet::new();
    for c in set.iter().flatten() {
        let name = c.to_string();
        let name = if name.starts_with("CAP_") { name } else { format!("CAP_{name}") };
        let cap: caps::Capability = name.parse().map_err(|_| AgentError::InvalidArgument(format!("unknown capability {name} in {which} set")))?;
        out.insert(cap);
    }
    Ok(out)
}

fn caps_plan(c: &LinuxCapabilities) -> Result<CapsPlan> {
    Ok(CapsPlan {
        bounding: cap_set("bounding", c.bounding())?,
        effective: cap_set("effective", c.effective())?,
        permitted: cap_set("permitted", c.permitted())?,
        inheritable: cap_set("inheritable", c.inheritable())?,
        ambient: cap_set("ambient", c.ambient())?,
    })
}

impl ExecPlan {
    /// Checks and converts an OCI process.
    pub fn from_oci(p: &Process) -> Result<ExecPlan> {
        let args = p.args().as_deref().unwrap_or_default();
        let Some(program) = args.first() else {
            return Err(AgentError::InvalidArgument("process.args is empty".into()));
        };
        if program.is_empty() {
            return Err(AgentError::InvalidArgument("process.args[0] is empty".into()));
        }
        if args.len() > MAX_ARGS {
            return Err(AgentError::InvalidArgument(format!("process.args has {} entries, more than {MAX_ARGS}", args.len())));
        }
        let args = args.iter().map(|a| cstring("argument", a)).collect::<Result<Vec<_>>>()?;
        let env_strs = p.env().as_deref().unwrap_or_default();
        let mut path = DEFAULT_PATH.to_string();
        let mut env = Vec::with_capacity(env_strs.len());
        for e in env_strs {
            if !e.contains('=') {
                return Err(AgentError::InvalidArgument(format!("environment entry {e:?} has no '='")));
            }
            if let Some(v) = e.strip_prefix("PATH=") {
                path = v.to_string();
            }
            env.push(cstring("environment entry", e)?);
        }
        let cwd = p.cwd().to_string_lossy().into_owned();
        if !cwd.starts_with('/') {
            return Err(AgentError::InvalidArgument(format!("process.cwd {cwd:?} is not an absolute path")));
        }
        let user = p.user();
        let rlimits = p.rlimits().iter().flatten().map(|r| Ok((resource(r)?, r.soft(), r.hard()))).collect::<Result<Vec<_>>>()?;
        let caps = p.capabilities().as_ref().map(caps_plan).transpose()?;
        let console_size = p.console_size().map(|b| (b.width().min(u16::MAX as u64) as u16, b.height().min(u16::MAX as u64) as u16));
        Ok(ExecPlan {
            program: program.clone(),
            args,
            env,
            path,
            cwd: cstring("cwd", &cwd)?,
            uid: user.uid(),
            gid: user.gid(),
            groups: user.additional_gids().clone().unwrap_or_default(),
            username: user.username().clone().filter(|u| !u.is_empty()),
            umask: user.umask(),
            rlimits,
            caps,
            no_new_privs: p.no_new_privileges().unwrap_or(false),
            oom_score_adj: p.oom_score_adj(),
            terminal: p.terminal().unwrap_or(false),
            console_size,
            vsock_guard: Some(vsock::guard()?),
            seccomp: None,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn process(json: &str) -> Process {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn converts_a_full_process() {
        let p = process(
            r#"{"terminal":true,"user":{"uid":1000,"gid":100,"additionalGids":[5]},
               "args":["sh","-c","echo hi"],"env":["A=1","PATH=/bin"],"cwd":"/tmp",
               "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"]},
               "rlimits":[{"type":"RLIMIT_NOFILE","hard":10,"soft":5}],
               "noNewPrivileges":true,"consoleSize":{"height":24,"width":80}}"#,
        );
        let plan = ExecPlan::from_oci(&p).unwrap();
        assert_eq!(plan.program, "sh");
        assert_eq!(plan.path, "/bin");
        assert_eq!((plan.uid, plan.gid, plan.groups.as_slice()), (1000, 100, &[5][..]));
        assert!(plan.terminal && plan.no_new_privs);
        assert_eq!(plan.console_size, Some((80, 24)));
        assert_eq!(plan.rlimits, vec![(Resource::RLIMIT_NOFILE, 5, 10)]);
        let caps = plan.caps.unwrap();
        assert!(caps.bounding.contains(&caps::Capability::CAP_KILL));
        assert!(caps.permitted.is_empty());
    }

    #[test]
    fn rejects_bad_processes() {
        for (json, needle) in [
            (r#"{"user":{"uid":0,"gid":0},"args":[],"cwd":"/"}"#, "args is empty"),
            (r#"{"user":{"uid":0,"gid":0},"args":["x"],"cwd":"rel"}"#, "\"rel\""),
            (r#"{"user":{"uid":0,"gid":0},"args":["x"],"env":["NOEQ"],"cwd":"/"}"#, "NOEQ"),
            (r#"{"user":{"uid":0,"gid":0},"args":["a\u0000b"],"cwd":"/"}"#, "NUL"),
        ] {
            let err = ExecPlan::from_oci(&process(json)).unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
            assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        }
    }
}
