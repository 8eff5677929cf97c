//! Disk slots take images passed as descriptors with the attach request (what a jailed
//! husk-vmm gets from the shim), against a running hand-built guest on the local /dev/kvm,
//! under the VMM's seccomp filters.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;

use common::*;
use husk_config::api::{AttachDisk, Client};

#[test]
fn a_slot_takes_an_image_passed_with_the_request() {
    let s = Scratch::new("attach-fd");
    let k = s.file("vmlinux", &elf(&Code::default().serial_loop(b'.', 50_000).0));
    let sock = s.path("api.sock");
    let child = Vmm(Some(
        vmm()
            .arg("--kernel")
            .arg(&k)
            .args(["--memory", "32M", "--disk-slots", "2", "--console", "none"])
            .arg("--api-sock")
            .arg(&sock)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    assert!(wait_for(90, || sock.exists()), "no API socket");
    let client = Client::new(&sock);

    // The image is opened here and removed before the attach: husk-vmm cannot have opened it
    // by its path, only through the descriptor.
    let img = s.file("image.raw", &vec![0u8; 8 * 512]);
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    std::fs::remove_file(&img).unwrap();
    let req = AttachDisk { path: img.clone(), id: "fd-disk".into(), read_only: false };
    let info = client.attach_disk_fd("slot0", &req, file.as_fd()).unwrap();
    assert!(info.attached && info.sectors == 8 && info.id == "fd-disk" && !info.read_only, "{info:?}");
    assert_eq!(info.path.as_deref(), Some(img.as_path()), "the path names the image");

    // A read-write attachment of an image open for reading only is refused, naming it.
    let ro = s.file("ro.raw", &vec![0u8; 4 * 512]);
    let ro_file = std::fs::File::open(&ro).unwrap();
    let e = client.attach_disk_fd("slot1", &AttachDisk { path: ro.clone(), id: "ro".into(), read_only: false }, ro_file.as_fd()).unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("ro.raw") && e.to_string().contains("reading and writing"), "{e}");
    // Read-only, the same descriptor is fine.
    let info = client.attach_disk_fd("slot1", &AttachDisk { path: ro.clone(), id: "ro".into(), read_only: true }, ro_file.as_fd()).unwrap();
    assert!(info.attached && info.read_only && info.sectors == 4, "{info:?}");

    // Only an attach may carry a descriptor, and one at most.
    client.detach_disk("slot1").unwrap();
    let answer = raw_with_fds(&sock, "GET /vm HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &[file.as_raw_fd()]);
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("only an attach"), "{answer}");
    let body = r#"{"path":"/x.img","id":"two"}"#;
    let two = format!("PUT /vm/disks/slot1 HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let answer = raw_with_fds(&sock, &two, &[file.as_raw_fd(), ro_file.as_raw_fd()]);
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("at most 1 descriptor"), "{answer}");

    let disks = client.disks().unwrap();
    assert!(disks.iter().any(|d| d.slot == "slot0" && d.attached && d.id == "fd-disk"), "{disks:?}");
    assert!(disks.iter().any(|d| d.slot == "slot1" && !d.attached), "{disks:?}");

    client.kill().unwrap();
    let out = child.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "husk-vmm (with its seccomp filters) ended badly: {err}");
}

/// Sends `request` with `fds` attached (SCM_RIGHTS) and returns the whole answer.
fn raw_with_fds(sock: &std::path::Path, request: &str, fds: &[RawFd]) -> String {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let mut s = UnixStream::connect(sock).unwrap();
    let sent = sendmsg::<()>(s.as_raw_fd(), &[std::io::IoSlice::new(request.as_bytes())], &[ControlMessage::ScmRights(fds)], MsgFlags::empty(), None).unwrap();
    assert_eq!(sent, request.len());
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}
