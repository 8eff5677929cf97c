//! x86-64 specifics: CPUID, registers and page tables for 64-bit entry, the MP table and the
//! Linux zero page.

pub mod boot_params;
pub mod cpuid;
pub mod mptable;
pub mod regs;
