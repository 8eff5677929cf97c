#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use super::log::{open, Sink, Target};

fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn write(sink: &mut Sink, data: &[u8]) {
    match sink {
        Sink::Writer(f) => f.write_all(data).unwrap(),
        other => panic!("not a writer: {other:?}"),
    }
}

#[test]
fn log_uris_parse_as_containerds_runc_shim_reads_them() {
    assert_eq!(Target::parse("/run/x/stdout", "/run/x/stderr").unwrap(), Target::Fifo { stdout: "/run/x/stdout".into(), stderr: "/run/x/stderr".into() });
    assert_eq!(Target::parse("fifo:///run/o", "fifo:///run/e").unwrap(), Target::Fifo { stdout: "/run/o".into(), stderr: "/run/e".into() });
    assert_eq!(Target::parse("file:///var/log/c%201.log", "file:///var/log/c%201.log").unwrap(), Target::File("/var/log/c 1.log".into()));
    let b = Target::parse("binary:///usr/local/bin/nerdctl?_NERDCTL_INTERNAL_LOGGING=%2Fvar%2Flib%2Fnerdctl&flag=", "").unwrap();
    assert_eq!(
        b,
        Target::Binary { path: "/usr/local/bin/nerdctl".into(), args: vec!["_NERDCTL_INTERNAL_LOGGING".into(), "/var/lib/nerdctl".into(), "flag".into()] }
    );
    for (bad, needle) in [("journald:///x", "unknown scheme \"journald\""), ("file://relative.log", "absolute"), ("binary://bin?x=1", "absolute")] {
        let e = Target::parse(bad, bad).unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains(needle), "{bad}: {e}");
    }
}

#[test]
fn a_file_uri_appends_both_streams_to_one_file() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("logs/deep/c1.log");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"earlier\n").unwrap();
    let uri = format!("file://{}", path.display());
    let t = Target::parse(&uri, &uri).unwrap();
    t.check(&uri).unwrap();
    let mut o = open(&t, &uri, "default", "c1").unwrap();
    write(&mut o.stdout, b"to stdout\n");
    write(&mut o.stderr, b"to stderr\n");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier\nto stdout\nto stderr\n");
    // Its directory is made when missing.
    let fresh = d.path().join("new/dir/c2.log");
    let uri = format!("file://{}", fresh.display());
    Target::parse(&uri, &uri).unwrap().check(&uri).unwrap();
    assert!(fresh.exists());
}

#[test]
fn a_binary_uri_starts_the_logging_binary_as_containerd_does() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let logger = script(d.path(), "logger", "env >\"$2/env\"\nexec 5>&-\ncat <&3 >\"$2/out\" &\ncat <&4 >\"$2/err\" &\nwait");
    let uri = format!("binary://{}?dir={}", logger.display(), d.path().display());
    let t = Target::parse(&uri, &uri).unwrap();
    t.check(&uri).unwrap();
    let mut o = open(&t, &uri, "ns1", "c1").unwrap();
    write(&mut o.stdout, b"line on stdout\n");
    write(&mut o.stderr, b"line on stderr\n");
    let logger = o.logger.take().unwrap();
    drop(o);
    logger.finish();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "line on stdout\n");
    assert_eq!(std::fs::read_to_string(d.path().join("err")).unwrap(), "line on stderr\n");
    let env = std::fs::read_to_string(d.path().join("env")).unwrap();
    assert!(env.contains("CONTAINER_ID=c1") && env.contains("CONTAINER_NAMESPACE=ns1") && !env.contains("HOME="), "{env}");
}

#[test]
fn a_logging_binary_that_cannot_run_is_named() {
    let d = tempfile::tempdir().unwrap();
    let quits = script(d.path(), "quits", "exit 3");
    let uri = format!("binary://{}", quits.display());
    let e = crate::error::chain(&open(&Target::parse(&uri, &uri).unwrap(), &uri, "ns", "c").unwrap_err());
    assert!(e.contains("exited at once") && e.contains("quits"), "{e}");
    let plain = d.path().join("plain");
    std::fs::write(&plain, b"x").unwrap();
    let uri = format!("binary://{}", plain.display());
    let e = Target::parse(&uri, &uri).unwrap().check(&uri).unwrap_err().to_string();
    assert!(e.contains("not an executable file"), "{e}");
    let uri = "binary:///nonexistent/logger";
    let e = crate::error::chain(&Target::parse(uri, uri).unwrap().check(uri).unwrap_err());
    assert!(e.contains("/nonexistent/logger") && e.contains("No such file"), "{e}");
}
