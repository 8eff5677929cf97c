//! A classic-BPF interpreter for the instructions seccompiler emits, so tests can ask what a
//! compiled filter answers for a given syscall and arguments without installing it (the
//! kernel's verdict is checked too, by the fork tests). Written here because no maintained
//! crate evaluates seccomp cBPF programs; an instruction outside the modelled set fails the
//! test instead of being guessed.

use seccompiler::sock_filter;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGT_K: u16 = 0x25;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

/// `AUDIT_ARCH_X86_64`.
pub const ARCH_X86_64: u32 = 0xc000_003e;
/// `SECCOMP_RET_ALLOW`.
pub const ALLOW: u32 = 0x7fff_0000;
/// `SECCOMP_RET_KILL_PROCESS`.
pub const KILL_PROCESS: u32 = 0x8000_0000;
/// `SECCOMP_RET_TRAP` (its low 16 bits, `SECCOMP_RET_DATA`, are 0 in our filters).
pub const TRAP: u32 = 0x0003_0000;

/// `struct seccomp_data` as the filter sees it, in bytes.
fn seccomp_data(arch: u32, nr: i64, args: [u64; 6]) -> [u8; 64] {
    let mut d = [0u8; 64];
    d[0..4].copy_from_slice(&(nr as i32).to_le_bytes());
    d[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        d[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    d
}

/// What `prog` returns for syscall `nr` with `args` on architecture `arch`.
pub fn run(prog: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
    let data = seccomp_data(arch, nr, args);
    let (mut acc, mut pc) = (0u32, 0usize);
    // A seccomp program has no backward jumps, so it ends within its length.
    for _ in 0..=prog.len() {
        let ins = prog.get(pc).unwrap_or_else(|| panic!("jumped out of the program at {pc}"));
        pc += 1;
        let taken = |cond: bool| usize::from(if cond { ins.jt } else { ins.jf });
        match ins.code {
            BPF_LD_W_ABS => {
                let at = ins.k as usize;
                let word = data.get(at..at + 4).unwrap_or_else(|| panic!("load beyond seccomp_data at {at}"));
                acc = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            }
            BPF_ALU_AND_K => acc &= ins.k,
            BPF_JMP_JA => pc += ins.k as usize,
            BPF_JMP_JEQ_K => pc += taken(acc == ins.k),
            BPF_JMP_JGT_K => pc += taken(acc > ins.k),
            BPF_JMP_JGE_K => pc += taken(acc >= ins.k),
            BPF_JMP_JSET_K => pc += taken(acc & ins.k != 0),
            BPF_RET_K => return ins.k,
            other => panic!("BPF instruction {other:#x} at {} is not modelled", pc - 1),
        }
    }
    panic!("the program did not return");
}
