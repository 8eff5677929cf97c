//! The two bpf(2) calls of the device filter: load a BPF_PROG_TYPE_CGROUP_DEVICE program and
//! attach it to a cgroup with BPF_CGROUP_DEVICE. libc has no `union bpf_attr`: the two
//! layouts used are declared here, zero-padded as the kernel requires.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::{DeviceError, Insn};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
/// Size of the verifier's log kept for an error message.
const LOG_SIZE: usize = 16 << 10;

/// `bpf_attr` for BPF_PROG_LOAD (the fields up to kern_version; the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    pad: [u64; 8],
}

/// `bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    pad: [u32; 11],
}

fn kernel(what: String) -> impl FnOnce(std::io::Error) -> DeviceError {
    move |source| DeviceError::Kernel { what, source }
}

/// Loads the program; the verifier's complaint, if any, is in the error. The verifier runs
/// without its log first (writing the log slows it down several times over, in every
/// container's create); only a program it refuses is loaded again with the log, for the error.
pub fn load(program: &[Insn]) -> Result<OwnedFd, DeviceError> {
    if let Ok(fd) = load_with_log(program, None) {
        return Ok(fd);
    }
    let mut log = vec![0u8; LOG_SIZE];
    load_with_log(program, Some(&mut log)).map_err(|err| {
        let text = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).chars().rev().take(300).collect::<String>();
        let text: String = text.chars().rev().collect();
        DeviceError::Kernel { what: format!("loading the device filter ({} instructions): {}", program.len(), text.trim()), source: err }
    })
}

/// BPF_PROG_LOAD of `program`, with the verifier's log written to `log` if given.
fn load_with_log(program: &[Insn], log: Option<&mut [u8]>) -> std::io::Result<OwnedFd> {
    let license = c"Apache";
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        ..Default::default()
    };
    // SAFETY: BPF_PROG_LOAD reads `attr` and the instructions and license it points to, and
    // writes at most log_size bytes into the log buffer when one is given (log_buf 0 and
    // log_size 0 otherwise); all live across the call. The kernel checks the program with its
    // verifier.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoad, std::mem::size_of::<ProgLoad>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: bpf returned a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches a loaded program to the cgroup directory `cgroup`.
pub fn attach(program: &OwnedFd, cgroup: &Path) -> Result<(), DeviceError> {
    let dir = std::fs::File::open(cgroup).map_err(kernel(format!("opening cgroup {}", cgroup.display())))?;
    let attr = ProgAttach {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: BPF_PROG_ATTACH reads `attr` only; both descriptors are open for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_ATTACH, &attr as *const ProgAttach, std::mem::size_of::<ProgAttach>()) };
    if r < 0 {
        return Err(kernel(format!("attaching the device filter to cgroup {}", cgroup.display()))(std::io::Error::last_os_error()));
    }
    Ok(())
}
