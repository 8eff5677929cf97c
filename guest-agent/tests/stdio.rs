//! stdio through the agent: large outputs arrive intact, wait reports only after the output is
#![allow(clippy::unwrap_used)]
//! available, terminals resize and see EOF.
mod common;

use common::{process, spec, status, Agent};
use husk_protocol::agent::*;
use sha2::{Digest, Sha256};

#[test]
fn twelve_mib_of_output_arrive_intact_while_stderr_interleaves() {
    let a = Agent::start();
    a.run("big", &spec(&["sleep", "1000"]), false);
    let script = "head -c 12582912 /dev/urandom > /tmp/blob; \
                  for i in 1 2 3; do echo progress $i >&2; done; \
                  cat /tmp/blob; sha256sum /tmp/blob >&2; exit 5";
    a.exec("big", "dump", &process(&["sh", "-c", script]), false).unwrap();
    let (out, err) = std::thread::scope(|s| {
        let err = s.spawn(|| a.read_all("big", "dump", true));
        let out = a.read_all("big", "dump", false);
        (out, err.join().unwrap())
    });
    assert_eq!(out.len(), 12 << 20);
    let err = String::from_utf8(err).unwrap();
    let digest = Sha256::digest(&out);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert!(err.starts_with("progress 1\nprogress 2\nprogress 3\n"), "{err}");
    assert!(err.contains(&hex), "checksum mismatch: agent said {err:?}, we got {hex}");
    assert_eq!(a.wait("big", "dump").exit_status, 5);
}

#[test]
fn wait_returns_only_when_all_output_is_readable() {
    let a = Agent::start();
    a.run("w", &spec(&["sleep", "1000"]), false);
    // 200 KiB fits the agent's buffers, so the process can exit without anyone reading.
    for round in 0..5 {
        let id = format!("burst{round}");
        a.exec("w", &id, &process(&["sh", "-c", "head -c 204800 /dev/zero; echo -n tail >&2"]), false).unwrap();
        let w = a.wait("w", &id);
        assert_eq!(w.exit_status, 0);
        // Everything is there already: read without blocking on a live writer.
        let out = a.read_all("w", &id, false);
        assert_eq!(out.len(), 204800, "round {round}");
        assert_eq!(a.read_all("w", &id, true), b"tail");
    }
    // Bounded chunks.
    a.exec("w", "chunks", &process(&["sh", "-c", "head -c 5000 /dev/zero"]), false).unwrap();
    a.wait("w", "chunks");
    let first = a.read_chunk("w", "chunks", false, 1000).unwrap();
    assert_eq!(first.data.len(), 1000);
    let (code, msg) = status(a.read_chunk("w", "chunks", false, (1 << 20) + 1));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    // Reading after EOF keeps returning EOF.
    assert_eq!(a.read_all("w", "chunks", false).len(), 4000);
    assert!(a.read_chunk("w", "chunks", false, 0).unwrap().eof);
}

#[test]
fn large_stdin_round_trips_with_backpressure() {
    let a = Agent::start();
    a.run("in", &spec(&["sleep", "1000"]), false);
    a.exec("in", "sum", &process(&["sha256sum"]), true).unwrap();
    let data: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 7 + i / 251) as u8).collect();
    for chunk in data.chunks(1 << 20) {
        assert_eq!(a.write_stdin("in", "sum", chunk).unwrap() as usize, chunk.len());
    }
    a.close_stdin("in", "sum");
    let out = String::from_utf8(a.read_all("in", "sum", false)).unwrap();
    let hex: String = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
    assert!(out.starts_with(&hex), "{out} vs {hex}");
    let (code, _) = status(a.write_stdin("in", "sum", &vec![0u8; (1 << 20) + 1]));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
}

#[test]
fn terminal_resize_and_eof() {
    let a = Agent::start();
    let mut s = spec(&["sh", "-c", "stty size; read x; stty size; echo got:$x"]);
    s["process"]["terminal"] = true.into();
    s["process"]["consoleSize"] = serde_json::json!({"height": 24, "width": 80});
    a.create("t", &s, true).unwrap();
    let mut start = StartContainerRequest::new();
    start.container_id = "t".into();
    a.client.start_container(common::ctx(), &start).unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("24 80") {
        let r = a.read_chunk("t", "", false, 0).unwrap();
        assert!(!r.eof, "EOF before size: {:?}", String::from_utf8_lossy(&seen));
        seen.extend(r.data);
    }
    let mut resize = ResizeTtyRequest::new();
    resize.container_id = "t".into();
    resize.width = 100;
    resize.height = 30;
    a.client.resize_tty(common::ctx(), &resize).unwrap();
    a.write_stdin("t", "", b"hi\n").unwrap();
    let rest = String::from_utf8(a.read_all("t", "", false)).unwrap();
    assert!(rest.contains("30 100\r\n"), "{rest:?}");
    assert!(rest.contains("got:hi\r\n"), "{rest:?}");
    // A terminal has one stream: stderr is empty.
    assert!(a.read_all("t", "", true).is_empty());
    assert_eq!(a.wait("t", "").exit_status, 0);

    // Closing a terminal's stdin sends EOF: cat ends.
    a.remove("t").unwrap();
    let mut s = spec(&["sleep", "1000"]);
    s["process"]["terminal"] = false.into();
    a.run("t2", &s, false);
    let mut p = process(&["cat"]);
    p["terminal"] = true.into();
    a.exec("t2", "cat", &p, true).unwrap();
    a.write_stdin("t2", "cat", b"abc\n").unwrap();
    a.close_stdin("t2", "cat");
    let out = String::from_utf8(a.read_all("t2", "cat", false)).unwrap();
    assert!(out.contains("abc"), "{out:?}");
    assert_eq!(a.wait("t2", "cat").exit_status, 0);
    // Resizing a process without a terminal is refused.
    let mut resize = ResizeTtyRequest::new();
    resize.container_id = "t2".into();
    resize.width = 10;
    resize.height = 10;
    let (code, _) = status(a.client.resize_tty(common::ctx(), &resize));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
}
