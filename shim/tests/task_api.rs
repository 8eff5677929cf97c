//! The shim server driven directly over ttrpc (no containerd): bad requests get errors naming
//! the cause and leave nothing behind.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::{CreateTaskRequest, DeleteRequest, ShutdownRequest, StateRequest};
use containerd_shim_protos::shim_sync::TaskClient;
use containerd_shim_protos::types::mount::Mount;
use ttrpc::context;

struct Shim {
    child: Child,
    client: TaskClient,
    dir: tempfile::TempDir,
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_shim(id: &str) -> Shim {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    let sock = dir.path().join("shim.sock");
    // Boot files that exist (contents irrelevant: these tests fail before a VM starts).
    for f in ["vmlinux", "initramfs", "husk-vmm"] {
        std::fs::write(dir.path().join(f), b"x").unwrap();
    }
    std::fs::write(
        dir.path().join("husk.toml"),
        format!(
            "[vm]\nkernel = \"{d}/vmlinux\"\ninitramfs = \"{d}/initramfs\"\n[shim]\nvmm = \"{d}/husk-vmm\"\nstate_dir = \"{d}/state\"\nimage_cache_dir = \"{d}/images\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_containerd-shim-husk-v2"))
        .args(["-namespace", "test", "-id", id, "-address", "/nonexistent", "-socket"])
        .arg(format!("unix://{}", sock.display()))
        .current_dir(&bundle)
        .env("HUSK_CONFIG", dir.path().join("husk.toml"))
        .env_remove("TTRPC_ADDRESS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        if let Ok(c) = ttrpc::Client::connect(&format!("unix://{}", sock.display())) {
            break c;
        }
        assert!(Instant::now() < deadline, "shim did not listen on {}", sock.display());
        std::thread::sleep(Duration::from_millis(50));
    };
    Shim { child, client: TaskClient::new(client), dir }
}

fn ctx() -> context::Context {
    context::with_timeout(30_000_000_000)
}

fn bundle(s: &Shim) -> PathBuf {
    s.dir.path().join("bundle")
}

fn create(s: &Shim, id: &str, mounts: Vec<Mount>) -> String {
    let req = CreateTaskRequest { id: id.into(), bundle: bundle(s).display().to_string(), rootfs: mounts, ..Default::default() };
    match s.client.create(ctx(), &req) {
        Ok(r) => panic!("create succeeded: {r:?}"),
        Err(ttrpc::Error::RpcStatus(st)) => format!("{:?}: {}", st.code(), st.message()),
        Err(e) => panic!("transport error {e:?}"),
    }
}

fn assert_clean(s: &Shim) {
    let state = s.dir.path().join("state");
    let left: Vec<_> = std::fs::read_dir(&state).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "state left behind: {left:?}");
    assert!(!bundle(s).join("husk-state-dir").exists());
}

const VALID_SPEC: &str = r#"{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#;

#[test]
fn malformed_config_json_is_named() {
    let s = start_shim("bad-json");
    std::fs::write(bundle(&s).join("config.json"), b"{\"ociVersion\": ").unwrap();
    let e = create(&s, "bad-json", Vec::new());
    assert!(e.starts_with("INVALID_ARGUMENT"), "{e}");
    assert!(e.contains("config.json"), "{e}");
    assert_clean(&s);
}

#[test]
fn spec_without_process_is_rejected() {
    let s = start_shim("no-proc");
    std::fs::write(bundle(&s).join("config.json"), br#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#).unwrap();
    let e = create(&s, "no-proc", Vec::new());
    assert!(e.contains("no process"), "{e}");
    assert_clean(&s);
}

#[test]
fn unsupported_mount_type_is_named() {
    // The rootfs is checked before anything needs /dev/kvm: this holds on any host.
    let s = start_shim("nfs");
    std::fs::write(bundle(&s).join("config.json"), VALID_SPEC).unwrap();
    let m = Mount { type_: "nfs".into(), source: "server:/export".into(), options: vec!["ro".into()], ..Default::default() };
    let e = create(&s, "nfs", vec![m]);
    assert!(e.contains("unsupported rootfs mount type \"nfs\""), "{e}");
    assert!(e.starts_with("INVALID_ARGUMENT"), "{e}");
    assert_clean(&s);
}

#[test]
fn bad_id_and_unknown_container_and_shutdown() {
    let s = start_shim("x");
    std::fs::write(bundle(&s).join("config.json"), VALID_SPEC).unwrap();
    let e = create(&s, "../escape", Vec::new());
    assert!(e.contains("container id") && e.contains("../escape"), "{e}");
    let st = s.client.state(ctx(), &StateRequest { id: "nope".into(), ..Default::default() });
    match st {
        Err(ttrpc::Error::RpcStatus(st)) => assert_eq!(st.code(), ttrpc::Code::NOT_FOUND),
        other => panic!("{other:?}"),
    }
    let d = s.client.delete(ctx(), &DeleteRequest { id: "nope".into(), ..Default::default() });
    assert!(d.is_err());
    // Shutdown with no container: the server exits.
    s.client.shutdown(ctx(), &ShutdownRequest { id: "x".into(), ..Default::default() }).unwrap();
    let mut s = s;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            assert!(st.success(), "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "shim did not exit after Shutdown");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!Path::new(&s.dir.path().join("shim.sock")).exists(), "socket left behind");
}
