#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use super::*;

/// A spec whose hooks are `(phase, script body, timeout)`; scripts go to `dir`.
fn spec(dir: &Path, hooks: &[(&str, &str, Option<i64>)]) -> Spec {
    let mut by_phase: HashMap<&str, Vec<serde_json::Value>> = HashMap::new();
    for (i, (phase, body, timeout)) in hooks.iter().enumerate() {
        let path = dir.join(format!("hook{i}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut h = serde_json::json!({"path": path, "args": [format!("hook-{i}"), "one", "two"], "env": ["HOOK_ENV=yes", "PATH=/usr/bin:/bin"]});
        if let Some(t) = timeout {
            h["timeout"] = (*t).into();
        }
        by_phase.entry(phase).or_default().push(h);
    }
    serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2", "annotations": {"nerdctl/name": "web"}, "hooks": by_phase})).unwrap()
}

#[test]
fn a_hook_gets_the_state_its_argv_and_env_in_the_bundle() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let body = format!("{{ cat; echo; echo \"$*\"; env | sort | tr '\\n' ' '; echo; pwd; }} >{}", out.display());
    let s = spec(d.path(), &[("createRuntime", &body, Some(5))]);
    run_at_create(&s, "c1", d.path(), 4242).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    let state: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(state["id"], "c1");
    assert_eq!(state["status"], "creating");
    assert_eq!(state["pid"], 4242);
    assert_eq!(state["bundle"], d.path().display().to_string());
    assert_eq!(state["ociVersion"], "1.0.2");
    assert_eq!(state["annotations"]["nerdctl/name"], "web");
    // args[0] is argv[0] (a script's is its path, set by the kernel); the rest follow.
    assert_eq!(lines.next().unwrap(), "one two");
    let env = lines.next().unwrap();
    assert!(env.contains("HOOK_ENV=yes") && !env.contains("HOME="), "only the hook's environment: {env}");
    assert_eq!(lines.next().unwrap(), d.path().display().to_string());
}

#[test]
fn hooks_run_in_runc_order_and_the_first_failure_stops_create_with_its_stderr() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("log");
    let l = log.display();
    let s = spec(
        d.path(),
        &[
            ("createContainer", &format!("echo createContainer >>{l}"), None),
            ("createRuntime", &format!("echo createRuntime >>{l}; echo 'cni: no IP left' >&2; exit 3"), None),
            ("prestart", &format!("echo prestart >>{l}"), None),
            ("createRuntime", &format!("echo second >>{l}"), None),
        ],
    );
    let e = run_at_create(&s, "c2", d.path(), 1).unwrap_err().to_string();
    assert!(e.contains("createRuntime hook") && e.contains("hook1") && e.contains("exit status 3") && e.contains("cni: no IP left"), "{e}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "prestart\ncreateRuntime\n", "nothing after the failure");
}

#[test]
fn a_hook_past_its_timeout_is_killed_with_what_it_started() {
    let d = tempfile::tempdir().unwrap();
    let pidfile = d.path().join("child.pid");
    let s = spec(d.path(), &[("prestart", &format!("sleep 100 & echo $! >{}; wait", pidfile.display()), Some(1))]);
    let t = Instant::now();
    let e = run_at_create(&s, "c3", d.path(), 1).unwrap_err().to_string();
    assert!(e.contains("prestart hook") && e.contains("timeout of 1 s"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let child: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let st = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
    assert!(st.is_empty() || st.contains(") Z "), "the hook's child survived: {st}");
}

#[test]
fn bad_hook_entries_are_named() {
    let d = tempfile::tempdir().unwrap();
    let mut s = spec(d.path(), &[("createRuntime", "true", Some(0))]);
    let e = run_at_create(&s, "c4", d.path(), 1).unwrap_err().to_string();
    assert!(e.contains("greater than zero"), "{e}");
    s = serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2", "hooks": {"createRuntime": [{"path": "relative/hook"}]}})).unwrap();
    let e = run_at_create(&s, "c4", d.path(), 1).unwrap_err().to_string();
    assert!(e.contains("relative/hook") && e.contains("absolute"), "{e}");
    s = serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2", "hooks": {"prestart": [{"path": "/nonexistent/hook"}]}})).unwrap();
    let e = crate::error::chain(&run_at_create(&s, "c4", d.path(), 1).unwrap_err());
    assert!(e.contains("/nonexistent/hook") && e.contains("No such file"), "{e}");
}

#[test]
fn poststart_and_poststop_failures_are_logged_and_the_rest_still_runs() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("log");
    let l = log.display();
    let s = spec(d.path(), &[("poststop", "exit 1", None), ("poststop", &format!("cat >>{l}"), None)]);
    run_logged(&s, Phase::Poststop, "c5", d.path(), 7);
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    assert_eq!((state["status"].as_str(), state["pid"].as_i64()), (Some("stopped"), Some(7)));
    assert!(!any_at_create(&s));
    assert!(any_at_create(&spec(d.path(), &[("createContainer", "true", None)])));
}
