//! Device access of a container: the cgroup v2 device filter built from
//! `linux.resources.devices` (a BPF_PROG_TYPE_CGROUP_DEVICE program attached to the container's
//! cgroup, as runc's cgroup v2 device filter) and the device nodes of `linux.devices`
//! ([`nodes`]).
//!
//! The rules are those of the spec followed by runc's default allowed devices (mknod of any
//! char or block device; null, zero, full, random, urandom, tty, console, ptmx, /dev/pts/*,
//! /dev/net/tun), which runc appends to every container's rules. The last rule that matches
//! an access decides; an access no rule matches is denied. A rule matches when its type is `a`
//! or the device's, its major and minor are absent, -1 or the device's, and the access asked
//! for (r, w, m) is within the rule's access. The program checks the rules from the last one
//! back and returns at the first match.
//!
//! No well-kept crate emits a cgroup-device program without libbpf and a C toolchain (aya
//! and libbpf-rs load programs compiled elsewhere), and the program is a dozen instructions
//! per rule: [`program`] writes them by hand and [`bpf`] makes the two bpf(2) calls.
pub mod bpf;
pub mod nodes;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// Most device rules a spec may have.
pub const MAX_RULES: usize = 1024;

/// Access bits of the kernel's `bpf_cgroup_dev_ctx.access_type` (upper 16 bits).
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
/// Device types (lower 16 bits).
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// Why the device rules cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A bad rule.
    #[error("linux.resources.devices[{index}]: {reason}")]
    Rule {
        /// Its index in the spec.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Too many rules.
    #[error("linux.resources.devices has {0} rules, more than {MAX_RULES}")]
    TooMany(usize),
    /// A bad device node.
    #[error("linux.devices[{index}] ({path}): {reason}")]
    Node {
        /// Its index in the spec.
        index: usize,
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The kernel refused the program or the attachment.
    #[error("{what}")]
    Kernel {
        /// What failed.
        what: String,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// One checked rule: type (None = any), major and minor (None = any), access bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Allow (true) or deny.
    pub allow: bool,
    /// DEV_BLOCK, DEV_CHAR or None for any.
    pub typ: Option<i32>,
    /// Major number, None for any.
    pub major: Option<u32>,
    /// Minor number, None for any.
    pub minor: Option<u32>,
    /// ACC_* bits.
    pub access: i32,
}

impl Rule {
    const fn allow(typ: i32, major: Option<u32>, minor: Option<u32>, access: i32) -> Rule {
        Rule { allow: true, typ: Some(typ), major, minor, access }
    }
    /// Matches every access of every device.
    fn matches_all(&self) -> bool {
        self.typ.is_none() && self.major.is_none() && self.minor.is_none() && self.access == ACC_MKNOD | ACC_READ | ACC_WRITE
    }
}

const RWM: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// runc's default allowed devices, appended after the spec's rules.
pub const RUNC_DEFAULTS: [Rule; 12] = [
    Rule::allow(DEV_CHAR, None, None, ACC_MKNOD),
    Rule::allow(DEV_BLOCK, None, None, ACC_MKNOD),
    Rule::allow(DEV_CHAR, Some(1), Some(3), RWM),    // /dev/null
    Rule::allow(DEV_CHAR, Some(1), Some(8), RWM),    // /dev/random
    Rule::allow(DEV_CHAR, Some(1), Some(7), RWM),    // /dev/full
    Rule::allow(DEV_CHAR, Some(5), Some(0), RWM),    // /dev/tty
    Rule::allow(DEV_CHAR, Some(1), Some(5), RWM),    // /dev/zero
    Rule::allow(DEV_CHAR, Some(1), Some(9), RWM),    // /dev/urandom
    Rule::allow(DEV_CHAR, Some(5), Some(1), RWM),    // /dev/console
    Rule::allow(DEV_CHAR, Some(136), None, RWM),     // /dev/pts/*
    Rule::allow(DEV_CHAR, Some(5), Some(2), RWM),    // /dev/ptmx
    Rule::allow(DEV_CHAR, Some(10), Some(200), RWM), // /dev/net/tun
];

fn number(index: usize, what: &str, v: Option<i64>) -> Result<Option<u32>, DeviceError> {
    match v {
        None | Some(-1) => Ok(None),
        // Device numbers fit 20 bits; the program compares with 32-bit signed immediates.
        Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(DeviceError::Rule { index, reason: format!("{what} {n} is not a device number or -1") }),
    }
}

/// Checks the spec's rules and appends runc's defaults.
pub fn rules(spec_rules: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, DeviceError> {
    if spec_rules.len() > MAX_RULES {
        return Err(DeviceError::TooMany(spec_rules.len()));
    }
    let mut out = Vec::with_capacity(spec_rules.len() + RUNC_DEFAULTS.len());
    for (index, r) in spec_rules.iter().enumerate() {
        let typ = match r.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(DEV_BLOCK),
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DEV_CHAR),
            // The device cgroup does not see fifos (runc skips such rules too).
            LinuxDeviceType::P => continue,
        };
        let mut access = 0;
        for c in r.access().as_deref().unwrap_or("rwm").chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                other => return Err(DeviceError::Rule { index, reason: format!("access {:?} has {other:?}: only r, w and m", r.access()) }),
            };
        }
        if access == 0 {
            access = RWM;
        }
        out.push(Rule { allow: r.allow(), typ, major: number(index, "major", r.major())?, minor: number(index, "minor", r.minor())?, access });
    }
    out.extend_from_slice(&RUNC_DEFAULTS);
    Ok(out)
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

// Opcodes (linux/bpf.h, linux/bpf_common.h).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const RSH_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
const MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// The program: r2 = type, r3 = access, r4 = major, r5 = minor, then one block per rule from
/// the last rule back, each returning 1 (allow) or 0 (deny) when its rule matches and jumping
/// to the next block otherwise, then 0. A rule matching everything ends the program (the
/// verifier refuses unreachable instructions).
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        let mut tests: Vec<Vec<Insn>> = Vec::new();
        if let Some(t) = r.typ {
            tests.push(vec![insn(JNE_K, 2, 0, 0, t)]);
        }
        if r.access != RWM {
            // The access asked for must lie within the rule's: (access & rule) == access.
            tests.push(vec![insn(MOV_X, 1, 3, 0, 0), insn(AND_K, 1, 0, 0, r.access), insn(JNE_X, 1, 3, 0, 0)]);
        }
        if let Some(m) = r.major {
            tests.push(vec![insn(JNE_K, 4, 0, 0, m as i32)]);
        }
        if let Some(m) = r.minor {
            tests.push(vec![insn(JNE_K, 5, 0, 0, m as i32)]);
        }
        let mut block: Vec<Insn> = tests.into_iter().flatten().collect();
        block.push(insn(MOV_K, 0, 0, 0, i32::from(r.allow)));
        block.push(insn(EXIT, 0, 0, 0, 0));
        // Each jump skips to the end of this block.
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JNE_K || ins.code == JNE_X {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
        if r.matches_all() {
            return p;
        }
    }
    p.push(insn(MOV_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// What the rules decide for an access (the model the program implements, for tests).
pub fn decide(rules: &[Rule], typ: i32, major: u32, minor: u32, access: i32) -> bool {
    rules
        .iter()
        .rev()
        .find(|r| r.typ.is_none_or(|t| t == typ) && r.major.is_none_or(|m| m == major) && r.minor.is_none_or(|m| m == minor) && access & r.access == access)
        .is_some_and(|r| r.allow)
}

#[cfg(test)]
mod tests;
