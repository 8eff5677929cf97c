//! cpuset lists (`linux.resources.cpu.cpus` / `mems`, the kernel's "0-3,8" format) and how a
//! container's cpuset maps onto the VM.
//!
//! The spec names the host's CPUs and memory nodes (kubelet's CPU manager, `ctr run
//! --cpuset-cpus`), the guest has its own vCPUs 0..n and one node. The agent applies what the
//! VM has of the request: the CPUs of the list that exist in the guest, as runc would on a host
//! with that many CPUs; a list naming none of them is not applied (the container keeps every
//! vCPU of the pod) and logged. The same for memory nodes. The list is hostile input: bounded
//! in length and in the CPU numbers it names.

use std::collections::BTreeSet;

use crate::error::{AgentError, Result};

/// Highest CPU or node number a list may name (the kernel's NR_CPUS is at most 8192).
const MAX_ID: u32 = 8191;
/// Longest list accepted, in bytes.
const MAX_LEN: usize = 4096;

/// Parses "0-3,8" (`what` names the field in errors).
pub fn parse(what: &str, list: &str) -> Result<BTreeSet<u32>> {
    let bad = |why: &str| AgentError::InvalidArgument(format!("{what} {list:?} {why}"));
    if list.len() > MAX_LEN {
        return Err(AgentError::InvalidArgument(format!("{what} is longer than {MAX_LEN} bytes")));
    }
    let mut out = BTreeSet::new();
    for part in list.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num =
            |s: &str| s.trim().parse::<u32>().ok().filter(|n| *n <= MAX_ID).ok_or_else(|| bad(&format!("is not a list like 0-3,8 of numbers up to {MAX_ID}")));
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if lo > hi {
            return Err(bad(&format!("has a range {part} that runs backwards")));
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

/// Formats a set as the kernel writes it ("0-3,8").
pub fn format(set: &BTreeSet<u32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    parts.join(",")
}

/// What to write for a request `wanted` when the VM has `available`: the CPUs (or nodes) of
/// the request the VM has, or None when it has none of them.
pub fn fit(wanted: &BTreeSet<u32>, available: &BTreeSet<u32>) -> Option<BTreeSet<u32>> {
    let both: BTreeSet<u32> = wanted.intersection(available).copied().collect();
    (!both.is_empty()).then_some(both)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_format_and_fit() {
        let s = parse("cpus", "0-2, 5,7-8").unwrap();
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 5, 7, 8]);
        assert_eq!(format(&s), "0-2,5,7-8");
        assert_eq!(format(&parse("cpus", "").unwrap()), "");
        let vm = parse("vm", "0-1").unwrap();
        assert_eq!(fit(&parse("cpus", "1-3").unwrap(), &vm).map(|s| format(&s)).as_deref(), Some("1"));
        assert_eq!(fit(&parse("cpus", "4-7").unwrap(), &vm), None);
        for bad in ["x", "3-1", "0-99999", "1--2", "-1"] {
            let e = parse("linux.resources.cpu.cpus", bad).unwrap_err().to_string();
            assert!(e.contains("linux.resources.cpu.cpus") && e.contains(bad), "{bad}: {e}");
        }
        assert!(parse("cpus", &"1,".repeat(3000)).is_err());
    }
}
