//! What a guest makes husk-vmm write, on the local /dev/kvm with hand-built guests: it cannot
//! fill the host (the console file, and husk-vmm's own stderr when that is a file, keep within
//! `--log-max-bytes`), and console text alone does not end the VM (a power-off line counts
//! only when the vCPUs really halted).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// `mov dx, 0x3f8; mov ecx, n; l: mov al, 'x'; out dx, al; dec ecx; jnz l`.
fn serial_flood(mut code: Code, n: u32) -> Code {
    code.0.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xb9]);
    code.0.extend_from_slice(&n.to_le_bytes());
    code.0.extend_from_slice(&[0xb0, b'x', 0xee, 0xff, 0xc9, 0x75, 0xf9]);
    code
}

/// Each byte a guest writes to the UART is one VM exit (about 36 us here, with the debug
/// husk-vmm): 50 MiB would take half an hour, so the hand-built guest writes 512 KiB, 32 times
/// the bound, and the 50 MiB case runs through the same console writer in the unit tests
/// (devices/legacy/console.rs).
#[test]
fn a_console_flood_leaves_at_most_the_bound_on_the_host() {
    const FLOOD: u32 = 512 << 10;
    const MAX: u64 = 16 << 10;
    let s = Scratch::new("console-flood");
    let code = serial_flood(Code::default().serial("first line\n"), FLOOD).serial("\nFLOOD-END\n").reset().halt();
    let k = s.file("vmlinux", &elf(&code.0));
    let log = s.path("console.log");
    let t0 = Instant::now();
    let child = vmm()
        .arg("--kernel")
        .arg(&k)
        .args(["--memory", "32M", "--log-max-bytes", "16K"])
        .arg("--console")
        .arg(format!("file:{}", log.display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let mut vm = Vmm(Some(child));
    while vm.0.as_mut().unwrap().try_wait().unwrap().is_none() {
        peak = peak.max(std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0));
        assert!(t0.elapsed() < Duration::from_secs(300), "the guest did not finish its flood");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = vm.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.len() as u64 <= MAX && peak <= MAX, "{} bytes on the host (peak {peak}) for a bound of {MAX}", text.len());
    assert!(text.starts_with("[husk: ") && text.ends_with("xxx\nFLOOD-END\n"), "{}", &text[..100]);
    let dropped: u64 = text[7..].split(' ').next().unwrap().parse().unwrap();
    assert!(dropped >= u64::from(FLOOD) - MAX, "only {dropped} bytes dropped");
}

/// Runs `code` and tells whether husk-vmm is still running `secs` later (then kills it).
fn still_running_after(name: &str, code: Code, secs: u64) -> (bool, String) {
    let s = Scratch::new(name);
    let k = s.file("vmlinux", &elf(&code.0));
    let child = vmm().arg("--kernel").arg(&k).args(["--memory", "32M"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id() as i32;
    let mut vm = Vmm(Some(child));
    let alive = !wait_for(secs, || vm.0.as_mut().unwrap().try_wait().unwrap().is_some());
    // SAFETY: killing our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let out = vm.wait();
    (alive, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_power_off_line_from_a_guest_that_goes_on_does_not_end_the_vm() {
    let line = "[    1.000000] reboot: System halted\n";
    // Halted with interrupts enabled (an idle kernel), and spinning with them disabled.
    let idle = Code(Code::default().serial(line).0.into_iter().chain([0xfb, 0xf4, 0xeb, 0xfd]).collect());
    let spin = Code(Code::default().serial(line).0.into_iter().chain([0xeb, 0xfe]).collect());
    let t = std::thread::spawn(move || still_running_after("forged-spin", spin, 14));
    let (alive, err) = still_running_after("forged-idle", idle, 14);
    assert!(alive, "an idle guest that printed the line was taken as powered off: {err}");
    assert!(err.contains("did not halt"), "no warning about the forged line: {err}");
    let (alive, err) = t.join().unwrap();
    assert!(alive, "a running guest that printed the line was taken as powered off: {err}");
}

#[test]
fn log_lines_a_guest_causes_leave_a_stderr_file_within_the_bound() {
    // mov dx, 0x3f0 (no device); mov ecx, 100000; l: out dx, al; dec ecx; jnz l
    let mut code = Code::default();
    code.0.extend_from_slice(&[0x66, 0xba, 0xf0, 0x03, 0xb9]);
    code.0.extend_from_slice(&100_000u32.to_le_bytes());
    code.0.extend_from_slice(&[0xee, 0xff, 0xc9, 0x75, 0xfb]);
    let s = Scratch::new("vmm-log-flood");
    let k = s.file("vmlinux", &elf(&code.reset().halt().0));
    // As the shim opens vmm.log: one file for stdout and stderr, readable and writable.
    let path = s.path("vmm.log");
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let child = vmm()
        .arg("--kernel")
        .arg(&k)
        .args(["--memory", "32M", "--console", "none", "--log-max-bytes", "16K"])
        .env("HUSK_LOG", "trace")
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let out = Vmm(Some(child)).wait();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", &text[text.len().saturating_sub(300)..]);
    // 100000 lines of about 60 bytes went through; the bound holds but for the exit line.
    assert!(text.len() <= (16 << 10) + 100, "{} bytes", text.len());
    assert!(text.starts_with("[husk: ") && text.contains("out 0x3f0 unhandled"), "{}", &text[..200]);
    assert!(text.ends_with("husk-vmm: guest rebooted\n"), "{}", &text[text.len() - 100..]);
}

#[test]
fn a_power_off_line_then_the_halt_ends_the_vm_with_status_0_on_two_vcpus() {
    // vCPU 1 is never started (as with `nosmp`): it cannot run, so it counts as stopped.
    let s = Scratch::new("poweroff-2");
    let k = s.file("vmlinux", &elf(&Code::default().serial("[    1.000000] reboot: System halted\n").halt().0));
    let o = run(&k, &["--vcpus", "2"]);
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "stderr: {err}");
    assert!(err.contains("guest powered off"), "stderr: {err}");
}
