//! A container's own seccomp profile (`linux.seccomp`), translated into BPF with seccompiler
//! before the fork and installed by the child (see [`crate::process::child`]) where runc
//! installs it: without no_new_privs before the credentials change (installing a filter then
//! needs CAP_SYS_ADMIN), with no_new_privs as late as possible, right before execve.
//!
//! seccompiler builds filters with one action on a match and one on a mismatch, while an OCI
//! profile has a default action and one action per rule. The profile becomes a stack of filters
//! whose combined result is the profile's:
//! - a base filter: a call that matches any rule of the profile gets ALLOW, any other call the
//!   default action (left out when the default action is ALLOW);
//! - one filter per distinct rule action other than ALLOW (an ERRNO with another errno is
//!   another action): a call matching one of its rules gets that action, any other ALLOW.
//!
//! The kernel runs every filter of the stack and keeps the most restrictive result
//! (KILL_PROCESS, KILL_THREAD, TRAP, ERRNO, TRACE, LOG, ALLOW); between two results of the same
//! kind (say two ERRNO values) it keeps the one of the filter installed last. So a call
//! matching no rule gets the default action, a call matching rules gets the most restrictive of
//! their actions; between two rules of the same kind (two errno values) the one whose action
//! first appears later in the profile wins (its filter is installed later). The base filter
//! goes last, so that the filters before it let the next seccomp() call through; a profile
//! that needs several filters and has a rule restricting `seccomp` itself is refused. A rule
//! whose action is the default action is left out, as runc does.
//!
//! Syscall names are those of the guest's architecture (x86_64); a name it does not know is
//! skipped, as libseccomp and runc do. Argument comparisons are on all 64 bits; several
//! comparisons in one rule must all hold, except when two of them test the same argument: then
//! each comparison is a rule of its own (runc's rule). The architectures list is not needed: a
//! filter only passes x86_64 calls, anything else (i386 `int 0x80`) kills the process, as the
//! vsock guard does. SCMP_ACT_NOTIFY (a seccomp agent on the host) is refused.
use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall};
use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};

use crate::process::child::{ChildError, ChildResult};

/// Most rules a profile may have (containerd's default has 11, Docker's about 30).
pub const MAX_RULES: usize = 1024;
/// Most syscall names over all rules (every syscall of x86_64 is about 460 names).
pub const MAX_NAMES: usize = 4096;
/// Longest syscall name taken.
pub const MAX_NAME_LEN: usize = 64;
/// Most filters a profile may turn into: the base filter and one per distinct action.
pub const MAX_FILTERS: usize = 16;
/// The kernel's bound on the instructions of all filters of a process (MAX_INSNS_PER_PATH,
/// each filter counted 4 more); the agent's vsock guard takes a few hundred of it.
const MAX_TOTAL_INSNS: usize = 30_000;
/// The highest errno a filter may return.
const MAX_ERRNO: u32 = 4095;

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile is larger than the bounds above.
    #[error("linux.seccomp: {0}")]
    TooLarge(String),
    /// An action husk cannot carry out.
    #[error("linux.seccomp: {0} needs a seccomp agent on the host (listenerPath), which husk does not support")]
    Notify(String),
    /// A flag husk cannot honour.
    #[error("linux.seccomp: flag {0} is not supported")]
    Flag(String),
    /// A bad value.
    #[error("linux.seccomp: {0}")]
    Invalid(String),
    /// seccompiler refused a rule or a filter.
    #[error("linux.seccomp: compiling {what}")]
    Compile {
        /// Which rule or filter.
        what: String,
        /// seccompiler's error.
        #[source]
        source: seccompiler::BackendError,
    },
}

/// The compiled profile: filters installed in order (the action filters, then the base
/// filter), with the profile's flags.
#[derive(Debug)]
pub struct SeccompPlan {
    filters: Vec<BpfProgram>,
    flags: libc::c_ulong,
}

/// Which calls a filter matches: a syscall is matched whatever its arguments (an empty rule
/// list, seccompiler's convention) or when one of its rules holds.
type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn add(rules: &mut Rules, nr: i64, rule: &[SeccompRule]) {
    let entry = rules.entry(nr);
    match entry {
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(rule.to_vec());
        }
        // Already matched whatever the arguments: stays so.
        std::collections::btree_map::Entry::Occupied(o) if o.get().is_empty() => {}
        std::collections::btree_map::Entry::Occupied(mut o) => {
            if rule.is_empty() {
                o.get_mut().clear();
            } else {
                o.get_mut().extend_from_slice(rule);
            }
        }
    }
}

/// The seccompiler action of an OCI action (`what` names it in errors).
fn action(what: &str, a: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<SeccompAction, SeccompError> {
    let errno = || -> Result<u32, SeccompError> {
        let e = errno_ret.unwrap_or(libc::EPERM as u32);
        if e > MAX_ERRNO {
            return Err(SeccompError::Invalid(format!("{what}: errnoRet {e} is not an errno (at most {MAX_ERRNO})")));
        }
        Ok(e)
    };
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno()?),
        // libseccomp's SCMP_ACT_KILL is SCMP_ACT_KILL_THREAD.
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => SeccompAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        // As runc: the tracer gets errnoRet (EPERM by default) as the event message.
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno()?),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => return Err(SeccompError::Notify(format!("{what}: SCMP_ACT_NOTIFY"))),
    })
}

fn condition(what: &str, a: &LinuxSeccompArg) -> Result<SeccompCondition, SeccompError> {
    let index =
        u8::try_from(a.index()).ok().filter(|i| *i < 6).ok_or_else(|| SeccompError::Invalid(format!("{what}: argument index {} (0..=5)", a.index())))?;
    let (op, value) = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
        // libseccomp: (arg & value) == valueTwo.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (SeccompCmpOp::MaskedEq(a.value()), a.value_two().unwrap_or(0)),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|source| SeccompError::Compile { what: what.to_string(), source })
}

/// The rules of one OCI rule's comparisons (empty: the syscall whatever its arguments).
fn rules_of(what: &str, args: &[LinuxSeccompArg]) -> Result<Vec<SeccompRule>, SeccompError> {
    if args.len() > 6 {
        return Err(SeccompError::TooLarge(format!("{what} has {} argument comparisons, more than 6", args.len())));
    }
    if args.is_empty() {
        return Ok(Vec::new());
    }
    let conds = args.iter().map(|a| condition(what, a)).collect::<Result<Vec<_>, _>>()?;
    let mut indices: Vec<usize> = args.iter().map(|a| a.index()).collect();
    indices.sort_unstable();
    indices.dedup();
    let rule = |c: Vec<SeccompCondition>| SeccompRule::new(c).map_err(|source| SeccompError::Compile { what: what.to_string(), source });
    if indices.len() < args.len() {
        // Two comparisons of one argument: each one is a rule of its own, as runc does.
        conds.into_iter().map(|c| rule(vec![c])).collect()
    } else {
        Ok(vec![rule(conds)?])
    }
}

fn flag_bits(flags: &[LinuxSeccompFilterFlag]) -> Result<libc::c_ulong, SeccompError> {
    let mut bits = 0;
    for f in flags {
        bits |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            // The child is single-threaded when it installs the filters: nothing to sync.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
            // Only meaningful with a notify listener, which is refused.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => return Err(SeccompError::Flag(f.to_string())),
        };
    }
    Ok(bits)
}

fn compile(what: &str, rules: Rules, mismatch: SeccompAction, on_match: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let arch = if cfg!(target_arch = "aarch64") { TargetArch::aarch64 } else { TargetArch::x86_64 };
    let err = |source| SeccompError::Compile { what: what.to_string(), source };
    let filter = SeccompFilter::new(rules, mismatch, on_match, arch).map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// The guest's number of a syscall name; None for a name this architecture does not have.
pub fn syscall_number(name: &str) -> Option<i64> {
    syscalls::Sysno::from_str(name).ok().map(|s| i64::from(s.id()))
}

impl SeccompPlan {
    /// Translates and compiles a profile (before the fork).
    pub fn from_oci(profile: &LinuxSeccomp) -> Result<SeccompPlan, SeccompError> {
        if profile.listener_path().is_some() {
            return Err(SeccompError::Notify("listenerPath".into()));
        }
        let flags = flag_bits(profile.flags().as_deref().unwrap_or_default())?;
        let default = action("defaultAction", profile.default_action(), profile.default_errno_ret())?;
        let syscalls: &[LinuxSyscall] = profile.syscalls().as_deref().unwrap_or_default();
        if syscalls.len() > MAX_RULES {
            return Err(SeccompError::TooLarge(format!("{} rules, more than {MAX_RULES}", syscalls.len())));
        }
        let names: usize = syscalls.iter().map(|s| s.names().len()).sum();
        if names > MAX_NAMES {
            return Err(SeccompError::TooLarge(format!("{names} syscall names, more than {MAX_NAMES}")));
        }
        // Every call some rule matches (the base filter allows them), and per action the calls
        // its rules match, actions in the order of their first rule.
        let mut any = Rules::new();
        let mut by_action: Vec<(SeccompAction, Rules)> = Vec::new();
        for (i, s) in syscalls.iter().enumerate() {
            let what = format!("rule {i} ({})", s.names().join(",").chars().take(80).collect::<String>());
            if let Some(long) = s.names().iter().find(|n| n.len() > MAX_NAME_LEN) {
                return Err(SeccompError::Invalid(format!("{what}: syscall name of {} bytes, more than {MAX_NAME_LEN}", long.len())));
            }
            let act = action(&what, s.action(), s.errno_ret())?;
            let rules = rules_of(&what, s.args().as_deref().unwrap_or_default())?;
            if act == default {
                continue;
            }
            let numbers: Vec<i64> = s.names().iter().filter_map(|n| syscall_number(n)).collect();
            if numbers.is_empty() {
                continue;
            }
            let slot = match by_action.iter().position(|(a, _)| *a == act) {
                Some(p) => p,
                None => {
                    by_action.push((act.clone(), Rules::new()));
                    by_action.len() - 1
                }
            };
            for nr in numbers {
                add(&mut any, nr, &rules);
                if act != SeccompAction::Allow {
                    add(&mut by_action[slot].1, nr, &rules);
                }
            }
        }
        by_action.retain(|(a, _)| *a != SeccompAction::Allow);
        if by_action.len() + usize::from(default != SeccompAction::Allow) > MAX_FILTERS {
            return Err(SeccompError::TooLarge(format!("{} distinct rule actions, more than {}", by_action.len(), MAX_FILTERS - 1)));
        }
        // Each filter but the last must let the next seccomp() through. The action filters
        // answer ALLOW to every call none of their rules match, and the base filter goes last.
        let seccomp_nr = libc::SYS_seccomp;
        if by_action.len() + usize::from(default != SeccompAction::Allow) > 1 {
            if let Some((act, _)) = by_action.iter().find(|(_, rules)| rules.contains_key(&seccomp_nr)) {
                return Err(SeccompError::Invalid(format!(
                    "a rule with action {act:?} restricts the seccomp syscall; husk installs this profile as several filters, which needs seccomp allowed between them"
                )));
            }
        }
        // Ties between action filters go to the one installed last: they go in the order in
        // which their actions first appear in the profile. The base filter never ties with
        // them (it answers ALLOW where they answer anything else).
        let mut filters = Vec::with_capacity(by_action.len() + 1);
        for (act, rules) in by_action {
            filters.push(compile(&format!("the filter of action {act:?}"), rules, SeccompAction::Allow, act)?);
        }
        if default != SeccompAction::Allow {
            filters.push(compile("the default action's filter", any, default, SeccompAction::Allow)?);
        }
        let total: usize = filters.iter().map(|f| f.len() + 4).sum();
        if total > MAX_TOTAL_INSNS {
            return Err(SeccompError::TooLarge(format!("the filters have {total} instructions, more than {MAX_TOTAL_INSNS}")));
        }
        Ok(SeccompPlan { filters, flags })
    }

    /// Installs the filters in the calling (single-threaded, forked) process. Needs
    /// no_new_privs or CAP_SYS_ADMIN.
    pub fn install(&self) -> ChildResult<()> {
        for prog in &self.filters {
            // Lengths are bounded by seccompiler (at most 4096 instructions per filter).
            let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
            // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) copies the program `fprog` points to
            // (alive for the whole call: `self` borrows it) and keeps no reference to it.
            // seccompiler's sock_filter is #[repr(C)] with the kernel's layout.
            let r = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, self.flags, &fprog as *const libc::sock_fprog) };
            nix::errno::Errno::result(r).map_err(|e| ChildError::sys("installing the container's seccomp profile (linux.seccomp)", e))?;
        }
        Ok(())
    }

    /// How many filters the profile became.
    pub fn filter_count(&self) -> usize {
        self.filters.len()
    }
}

#[cfg(test)]
mod tests;
