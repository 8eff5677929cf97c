//! VmConfig validation against real files.

#![allow(clippy::unwrap_used)]

use std::io::Write;

use husk_config::{Console, IrqDelivery, KernelFormat, MemSize, VmConfig};

/// A scratch directory per test, removed at the end of the test.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(test: &str) -> Self {
        let d = std::env::temp_dir().join(format!("husk-config-test-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn elf() -> Vec<u8> {
    let mut v = vec![0u8; 64];
    v[..4].copy_from_slice(b"\x7fELF");
    v[4] = 2;
    v[5] = 1;
    v[18] = 62;
    v
}

fn bzimage() -> Vec<u8> {
    let mut v = vec![0u8; 0x400];
    v[0x202..0x206].copy_from_slice(b"HdrS");
    v
}

#[test]
fn kernel_formats_are_recognised() {
    let dir = Dir::new("kernel_formats_are_recognised");
    let mut c = VmConfig { kernel: dir.file("vmlinux", &elf()), ..Default::default() };
    assert_eq!(c.validate().unwrap(), KernelFormat::Elf);
    c.kernel = dir.file("bzImage", &bzimage());
    assert_eq!(c.validate().unwrap(), KernelFormat::BzImage);
    c.kernel = dir.file("notakernel", b"#!/bin/sh\necho hi\n");
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("kernel") && e.contains("notakernel") && e.contains("neither"), "{e}");
    let mut arm = elf();
    arm[18] = 183;
    c.kernel = dir.file("arm", &arm);
    assert!(c.validate().unwrap_err().to_string().contains("64-bit x86"));
    c.kernel = "/nonexistent/vmlinux".into();
    assert!(c.validate().unwrap_err().to_string().contains("/nonexistent/vmlinux"));
}

#[test]
fn bad_values_name_field_and_value() {
    let dir = Dir::new("bad_values_name_field_and_value");
    let base = VmConfig { kernel: dir.file("k", &elf()), ..Default::default() };
    let e = VmConfig { vcpus: 10000, ..base.clone() }.validate().unwrap_err().to_string();
    assert!(e.contains("vcpus") && e.contains("10000"), "{e}");
    let e = VmConfig { vcpus: 0, ..base.clone() }.validate().unwrap_err().to_string();
    assert!(e.contains("vcpus"), "{e}");
    let e = VmConfig { memory: MemSize(0), ..base.clone() }.validate().unwrap_err().to_string();
    assert!(e.contains("memory") && e.contains("\"0M\""), "{e}");
    let big = dir.file("big.cpio", &vec![0u8; 9 << 20]);
    let e = VmConfig { memory: MemSize(16 << 20), initrd: Some(big), ..base.clone() }.validate().unwrap_err().to_string();
    assert!(e.contains("initrd") && e.contains("big.cpio") && e.contains("16M"), "{e}");
    let e = VmConfig { log_max_bytes: MemSize(1024), ..base.clone() }.validate().unwrap_err().to_string();
    assert!(e.contains("log_max_bytes") && e.contains("\"1K\"") && e.contains("16K"), "{e}");
    assert_eq!(base.log_max_bytes, MemSize(1 << 20), "default");
    assert!(Console::parse("tty").unwrap_err().to_string().contains("\"tty\""));
    assert_eq!(Console::parse("file:/tmp/x").unwrap(), Console::File("/tmp/x".into()));
}

#[test]
fn toml_file_parses_with_devices() {
    let dir = Dir::new("toml_file_parses_with_devices");
    let k = dir.file("k2", &elf());
    let text = format!(
        "kernel = {k:?}\nvcpus = 2\nmemory = \"512M\"\nconsole = \"none\"\n[[disk]]\npath = \"/\"\nid = \"root\"\nread_only = true\n[[net]]\ntap = \"tap0\"\nmac = \"02:00:00:00:00:01\"\n[vsock]\nuds = \"/tmp/v.sock\"\n"
    );
    let f = dir.file("vm.toml", text.as_bytes());
    let c = VmConfig::from_toml_file(&f).unwrap();
    assert_eq!((c.vcpus, c.memory.mib(), c.console.clone()), (2, 512, Console::None));
    assert_eq!(c.disk[0].id.as_deref(), Some("root"));
    assert!(c.disk[0].read_only);
    assert_eq!(c.vsock.as_ref().unwrap().cid, 3);
    assert_eq!(c.irq_delivery, IrqDelivery::Line, "line is the default");
    c.validate().unwrap();
    // Two devices may not share a tap, nor an inherited tap descriptor.
    let mut two = c.clone();
    two.net.push(husk_config::NetConfig { tap: "tap1".into(), mac: None, netns: None, fd: Some(5) });
    two.validate().unwrap();
    let mut same_fd = two.clone();
    same_fd.net.push(husk_config::NetConfig { tap: "tap2".into(), mac: None, netns: None, fd: Some(5) });
    let e = same_fd.validate().unwrap_err().to_string();
    assert!(e.contains("net.fd") && e.contains("two devices"), "{e}");
    // Nor a disk and a net device one descriptor.
    let mut disk_and_tap = two.clone();
    disk_and_tap.disk[0].fd = Some(5);
    let e = disk_and_tap.validate().unwrap_err().to_string();
    assert!(e.contains("net.fd") && e.contains("5") && e.contains("two devices"), "{e}");
    two.net.push(husk_config::NetConfig { tap: "tap0".into(), mac: None, netns: None, fd: None });
    let e = two.validate().unwrap_err().to_string();
    assert!(e.contains("net.tap") && e.contains("tap0") && e.contains("two net devices"), "{e}");
    let f = dir.file("irqfd.toml", format!("kernel = {k:?}\nirq_delivery = \"irqfd\"\n").as_bytes());
    assert_eq!(VmConfig::from_toml_file(&f).unwrap().irq_delivery, IrqDelivery::Irqfd);
    let f = dir.file("badirq.toml", b"irq_delivery = \"msi\"\n");
    let e = format!("{:?}", VmConfig::from_toml_file(&f).unwrap_err());
    assert!(e.contains("irq_delivery") || e.contains("msi"), "{e}");
    let e = IrqDelivery::parse("msi").unwrap_err().to_string();
    assert!(e.contains("irq_delivery") && e.contains("msi") && e.contains("line or irqfd"), "{e}");
    let f = dir.file("bad.toml", b"vcpus = \"many\"\n");
    let e = format!("{:?}", VmConfig::from_toml_file(&f).unwrap_err());
    assert!(e.contains("bad.toml") && e.contains("vcpus"), "{e}");
}

#[test]
fn disk_slots_fit_the_interrupt_lines() {
    let dir = Dir::new("disk_slots_fit_the_interrupt_lines");
    let k = dir.file("k3", &elf());
    let f = dir.file("slots.toml", format!("kernel = {k:?}\ndisk_slots = 4\n[[disk]]\npath = \"/\"\n").as_bytes());
    let c = VmConfig::from_toml_file(&f).unwrap();
    assert_eq!(c.disk_slots, 4);
    assert_eq!(VmConfig::default().disk_slots, 0, "no slots unless asked");
    c.validate().unwrap();
    assert_eq!(c.virtio_device_count(), 5);

    let vsock = Some(husk_config::VsockConfig { cid: 3, uds: "/tmp/v.sock".into() });
    let fits = VmConfig { disk_slots: 17, vsock: vsock.clone(), ..c.clone() };
    fits.validate().unwrap();
    assert_eq!(fits.virtio_device_count(), husk_config::MAX_VIRTIO_DEVICES);
    let e = VmConfig { disk_slots: 18, vsock, ..c.clone() }.validate().unwrap_err().to_string();
    assert!(e.contains("disk_slots = \"18\"") && e.contains("20 virtio devices") && e.contains("19") && e.contains("at most 17 slots"), "{e}");
    let e = VmConfig { disk_slots: u32::MAX, ..c.clone() }.validate().unwrap_err().to_string();
    assert!(e.contains(&u32::MAX.to_string()) && e.contains("at most 18 slots"), "{e}");

    // The free page reporting balloon takes a line too: the config that fit no longer does.
    let f = dir.file("balloon.toml", format!("kernel = {k:?}\nfree_page_reporting = true\n").as_bytes());
    assert!(VmConfig::from_toml_file(&f).unwrap().free_page_reporting);
    assert!(!VmConfig::default().free_page_reporting, "off unless asked");
    let balloon = VmConfig { free_page_reporting: true, ..fits.clone() };
    assert_eq!(balloon.virtio_device_count(), husk_config::MAX_VIRTIO_DEVICES + 1);
    let e = balloon.validate().unwrap_err().to_string();
    assert!(e.contains("1 balloon") && e.contains("20 virtio devices") && e.contains("at most 16 slots"), "{e}");
    VmConfig { disk_slots: 16, ..balloon }.validate().unwrap();

    // A boot disk may not take a slot's API name.
    let mut clash = c.clone();
    clash.disk[0].id = Some("slot3".into());
    let e = clash.validate().unwrap_err().to_string();
    assert!(e.contains("disk.id") && e.contains("slot3") && e.contains("disk slot 3"), "{e}");
    clash.disk[0].id = Some("slot4".into());
    clash.validate().unwrap();
}

#[test]
fn toml_fs_tables_parse_and_tags_are_unique() {
    let dir = Dir::new("toml_fs_tables_parse_and_tags_are_unique");
    let k = dir.file("k", &elf());
    let sock = dir.0.join("vfs.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let text = format!("kernel = {k:?}\n[[fs]]\ntag = \"shared\"\nsocket = {sock:?}\n[[fs]]\ntag = \"other\"\nsocket = {sock:?}\n");
    let c = VmConfig::from_toml_file(&dir.file("fs.toml", text.as_bytes())).unwrap();
    assert_eq!(c.fs.iter().map(|f| f.tag.as_str()).collect::<Vec<_>>(), ["shared", "other"]);
    c.validate().unwrap();
    let mut dup = c.clone();
    dup.fs[1].tag = "shared".into();
    let e = dup.validate().unwrap_err().to_string();
    assert!(e.contains("fs.tag") && e.contains("shared") && e.contains("two fs devices"), "{e}");
    let f = dir.file("badfs.toml", format!("kernel = {k:?}\n[[fs]]\ntag = \"x\"\nsocket = {sock:?}\ncache = \"auto\"\n").as_bytes());
    let e = format!("{:?}", VmConfig::from_toml_file(&f).unwrap_err());
    assert!(e.contains("cache"), "{e}");
}
