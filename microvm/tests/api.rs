//! The control API against running hand-built guests on the local /dev/kvm.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

fn size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Starts husk-vmm on `kernel` with 32 MiB, its console in `log`, its API on `sock`, and
/// `extra` arguments.
fn start(kernel: &std::path::Path, log: &std::path::Path, sock: &std::path::Path, extra: &[&str]) -> Vmm {
    let mut c = vmm();
    c.arg("--kernel").arg(kernel).args(["--memory", "32M"]).args(extra);
    c.arg("--console").arg(format!("file:{}", log.display())).arg("--api-sock").arg(sock);
    Vmm(Some(c.stderr(Stdio::piped()).spawn().unwrap()))
}

#[test]
fn pause_stops_the_guest_and_resume_continues_then_kill() {
    let s = Scratch::new("api-pause");
    let k = s.file("vmlinux", &elf(&Code::default().serial_loop(b'.', 50_000).0));
    let log = s.path("console.log");
    let sock = s.path("api.sock");
    let child = start(&k, &log, &sock, &["--vcpus", "2"]);
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
    let child = start(&k, &log, &sock, &[]);
    assert!(wait_for(90, || std::fs::read_to_string(&log).unwrap_or_default().contains("waiting") && sock.exists()));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!std::fs::read_to_string(&log).unwrap().contains("got key"));
    let (st, body) = api(&sock, "PUT", "/vm/shutdown");
    assert_eq!(st, 200, "{body}");
    let out = child.wait();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "waiting\ngot key\n");
}

#[test]
fn disk_slots_attach_and_detach_through_the_typed_client() {
    use husk_config::api::{AttachDisk, Client, DiskKind};
    let s = Scratch::new("api-slots");
    let k = s.file("vmlinux", &elf(&Code::default().serial_loop(b'.', 50_000).0));
    let boot = s.file("boot.img", &[0u8; 4096]);
    let img = s.file("ctr.img", &[7u8; 8192]);
    let log = s.path("console.log");
    let sock = s.path("api.sock");
    // Seccomp stays on: the API thread opens the image and raises the slot's interrupt.
    let disk = format!("path={},id=rootfs", boot.display());
    let child = start(&k, &log, &sock, &["--disk-slots", "2", "--disk", &disk]);
    assert!(wait_for(90, || size(&log) > 10 && sock.exists()), "guest produced no output");
    let c = Client::new(&sock);

    let vm = c.describe().unwrap();
    assert_eq!(vm.config.disk_slots, 2);
    assert_eq!(vm.cmdline.matches("virtio_mmio.device=").count(), 3, "{}", vm.cmdline);
    let disks = c.disks().unwrap();
    let names: Vec<(&str, DiskKind, bool, u64)> = disks.iter().map(|d| (d.slot.as_str(), d.kind, d.attached, d.sectors)).collect();
    assert_eq!(names, [("rootfs", DiskKind::Boot, true, 8), ("slot0", DiskKind::Slot, false, 0), ("slot1", DiskKind::Slot, false, 0)]);

    let req = AttachDisk { path: img.clone(), id: "ctr-1".into(), read_only: true };
    let info = c.attach_disk("slot1", &req).unwrap();
    assert_eq!((info.attached, info.sectors, info.read_only, info.id.as_str()), (true, 16, true, "ctr-1"));
    assert_eq!(c.disk("slot1").unwrap(), info);

    let refused = |r: Result<husk_config::api::DiskInfo, husk_config::api::ClientError>| {
        let e = r.unwrap_err();
        (e.status().unwrap_or(0), e.to_string())
    };
    let (st, m) = refused(c.attach_disk("slot1", &req));
    assert!(st == 409 && m.contains("occupied by") && m.contains("ctr.img"), "{st} {m}");
    let missing = AttachDisk { path: s.path("missing.img"), id: String::new(), read_only: false };
    let (st, m) = refused(c.attach_disk("slot0", &missing));
    assert!(st == 400 && m.contains("missing.img") && m.contains("No such file"), "{st} {m}");
    let (st, m) = refused(c.attach_disk("rootfs", &req));
    assert!(st == 409 && m.contains("rootfs is a boot disk"), "{st} {m}");
    let (st, m) = refused(c.attach_disk("slot7", &req));
    assert!(st == 404 && m.contains("slot7"), "{st} {m}");
    let (st, m) = refused(c.detach_disk("slot0"));
    assert!(st == 409 && m.contains("slot slot0 is empty"), "{st} {m}");
    let (st, body) = c.exchange("PUT", "/vm/disks/slot0", Some(b"{\"path\":")).unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(st == 400 && body.contains("EOF"), "{st} {body}");

    let info = c.detach_disk("slot1").unwrap();
    assert_eq!((info.attached, info.sectors, info.path), (false, 0, None));
    let counters = c.counters().unwrap();
    let (s0, s1) = (&counters["block.slot0"], &counters["block.slot1"]);
    assert_eq!((s1["attaches"], s1["detaches"], s1["hotplug_errors"]), (1, 1, 1), "{counters:?}");
    assert_eq!((s0["attaches"], s0["hotplug_errors"]), (0, 2), "{counters:?}");

    assert_eq!(c.kill().unwrap().state, husk_config::api::VmState::Stopped);
    let out = child.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
}
