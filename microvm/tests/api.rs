//! The control API against running hand-built guests on the local /dev/kvm.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

fn size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn pause_stops_the_guest_and_resume_continues_then_kill() {
    let s = Scratch::new("api-pause");
    let k = s.file("vmlinux", &elf(&Code::default().serial_loop(b'.', 50_000).0));
    let log = s.path("console.log");
    let sock = s.path("api.sock");
    let child = Vmm(Some(
        vmm()
            .arg("--kernel")
            .arg(&k)
            .args(["--memory", "32M", "--vcpus", "2"])
            .arg("--console")
            .arg(format!("file:{}", log.display()))
            .arg("--api-sock")
            .arg(&sock)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    assert!(wait_for(90, || size(&log) > 10 && sock.exists()), "guest produced no output");

    let (st, body) = api(&sock, "GET", "/vm");
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"state\":\"running\"") && body.contains("\"vcpus\":2"), "{body}");

    let (st, body) = api(&sock, "PUT", "/vm/pause");
    assert_eq!((st, body.trim()), (200, "{\"state\":\"paused\"}"));
    let paused_at = size(&log);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(size(&log), paused_at, "the guest made progress while paused");
    assert!(api(&sock, "GET", "/vm").1.contains("\"state\":\"paused\""));
    let (st, _) = api(&sock, "PUT", "/vm/shutdown");
    assert_eq!(st, 409, "shutdown of a paused VM is refused");

    let (st, _) = api(&sock, "PUT", "/vm/resume");
    assert_eq!(st, 200);
    assert!(wait_for(90, || size(&log) > paused_at + 5), "no progress after resume");

    assert_eq!(api(&sock, "GET", "/vm/counters").0, 200);
    assert_eq!(api(&sock, "GET", "/nope").0, 404);
    assert_eq!(api(&sock, "DELETE", "/vm/pause").0, 405);

    let (st, _) = api(&sock, "PUT", "/vm/kill");
    assert_eq!(st, 200);
    let out = child.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("killed through the API"), "{err}");
    assert!(!sock.exists(), "API socket left behind");
}

#[test]
fn shutdown_types_ctrl_alt_del_on_the_keyboard() {
    let s = Scratch::new("api-shutdown");
    let k = s.file("vmlinux", &elf(&Code::default().serial("waiting\n").wait_key().serial("got key\n").reset().halt().0));
    let log = s.path("console.log");
    let sock = s.path("api.sock");
    let child = Vmm(Some(
        vmm()
            .arg("--kernel")
            .arg(&k)
            .args(["--memory", "32M"])
            .arg("--console")
            .arg(format!("file:{}", log.display()))
            .arg("--api-sock")
            .arg(&sock)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    assert!(wait_for(90, || std::fs::read_to_string(&log).unwrap_or_default().contains("waiting") && sock.exists()));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!std::fs::read_to_string(&log).unwrap().contains("got key"));
    let (st, body) = api(&sock, "PUT", "/vm/shutdown");
    assert_eq!(st, 200, "{body}");
    let out = child.wait();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "waiting\ngot key\n");
}
