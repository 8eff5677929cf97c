//! Boots hand-built guests on the local /dev/kvm and checks what a user sees: the serial

#![allow(clippy::unwrap_used)]
//! output and husk-vmm's exit status and reason line.

mod common;

use common::*;

#[test]
fn elf_guest_writes_serial_and_reboots_with_status_1() {
    let s = Scratch::new("elf-reboot");
    let k = s.file("vmlinux", &elf(&Code::default().serial("hello from guest\n").reset().halt().0));
    let o = run(&k, &[]);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(out.contains("hello from guest"), "stdout: {out:?}");
    assert!(err.trim_end().ends_with("guest rebooted"), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
}

#[test]
fn bzimage_guest_runs_at_the_64bit_entry() {
    let s = Scratch::new("bz");
    let k = s.file("bzImage", &bzimage(&Code::default().serial("bz ok\n").reset().halt().0));
    let o = run(&k, &["--vcpus", "2"]);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(out.contains("bz ok"), "stdout: {out:?}");
}

#[test]
fn power_off_line_gives_status_0() {
    let s = Scratch::new("poweroff");
    let k = s.file("vmlinux", &elf(&Code::default().serial("[    1.000000] reboot: System halted\n").halt().0));
    let o = run(&k, &[]);
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "stderr: {err}");
    assert!(err.contains("guest powered off"), "stderr: {err}");
}

#[test]
fn panic_then_reset_gives_status_3() {
    let s = Scratch::new("panic");
    let line = "[    2.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n";
    let k = s.file("vmlinux", &elf(&Code::default().serial(line).reset().halt().0));
    let o = run(&k, &[]);
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(3), "stderr: {err}");
    assert!(err.contains("panicked: Kernel panic - not syncing: Attempted to kill init!"), "stderr: {err}");
}

#[test]
fn console_to_file_and_none() {
    let s = Scratch::new("console");
    let k = s.file("vmlinux", &elf(&Code::default().serial("to the file\n").reset().halt().0));
    let log = s.path("console.log");
    let arg = format!("file:{}", log.display());
    let o = run(&k, &["--console", &arg]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "to the file\n");
    let o = run(&k, &["--console", "none"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
}

#[test]
fn toml_config_is_used_and_flags_override_it() {
    let s = Scratch::new("toml");
    let k = s.file("vmlinux", &elf(&Code::default().serial("cfg\n").reset().halt().0));
    let log = s.path("c.log");
    let toml = format!("kernel = {:?}\nvcpus = 10000\nconsole = \"file:{}\"\n", k.display().to_string(), log.display());
    let cfg = s.file("vm.toml", toml.as_bytes());
    let o = vmm().arg("--config").arg(&cfg).output().unwrap();
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("vcpus") && err.contains("10000"), "{err}");
    let o = vmm().arg("--config").arg(&cfg).args(["--vcpus", "1", "--memory", "32M"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", texts(&o).1);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "cfg\n");
}

#[test]
fn bad_configuration_exits_2_with_one_line_and_starts_nothing() {
    let s = Scratch::new("bad");
    let k = s.file("vmlinux", &elf(&Code::default().reset().0));
    let not_kernel = s.file("script", b"#!/bin/sh\n");
    let big = s.file("big.cpio", &vec![0u8; 20 << 20]);
    let bigs = big.display().to_string();
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (vec!["--kernel".into(), k.display().to_string(), "--memory".into(), "0".into()], &["memory", "\"0M\""]),
        (vec!["--kernel".into(), k.display().to_string(), "--vcpus".into(), "10000".into()], &["vcpus", "10000"]),
        (vec!["--kernel".into(), "/nonexistent/vmlinux".into()], &["kernel", "/nonexistent/vmlinux"]),
        (vec!["--kernel".into(), not_kernel.display().to_string()], &["kernel", "script", "neither an ELF"]),
        (vec!["--kernel".into(), k.display().to_string(), "--memory".into(), "32M".into(), "--initrd".into(), bigs], &["initrd", "big.cpio"]),
        (vec!["--kernel".into(), k.display().to_string(), "--console".into(), "tty".into()], &["console", "tty"]),
        (vec!["--kernel".into(), k.display().to_string(), "--disk".into(), "id=x".into()], &["--disk", "path=PATH"]),
        (vec!["--kernel".into(), k.display().to_string(), "--memory".into(), "lots".into()], &["memory", "lots"]),
        (vec!["--kernel".into(), k.display().to_string(), "--irq-delivery".into(), "msi".into()], &["irq_delivery", "msi", "line or irqfd"]),
        (vec!["--bogus".into()], &["--bogus"]),
    ];
    for (args, words) in cases {
        let o = vmm().args(&args).output().unwrap();
        let (out, err) = texts(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: nothing may run: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        for w in words {
            assert!(err.contains(w), "{args:?}: {err:?} lacks {w:?}");
        }
    }
}

#[test]
fn stdin_reaches_the_serial_port() {
    use std::io::Write;
    let s = Scratch::new("stdin");
    let k = s.file("vmlinux", &elf(&Code::default().serial("type:").echo_one_input().serial("\n").reset().halt().0));
    let mut child = vmm()
        .arg("--kernel")
        .arg(&k)
        .args(["--memory", "32M"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Z").unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(out, "type:Z\n");
}
