//! Container cases: create/start/stop/remove with ContainerStatus, exit codes, the CRI log file.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1::{ContainerState, ContainerStatus};

use super::ctx::{state_name, Ctx};
use crate::cri_log;

fn check_exit(st: &ContainerStatus, code: i32, reason: &str, what: &str) -> Result<()> {
    ensure!(st.state == ContainerState::ContainerExited as i32, "{what}: state {}, want CONTAINER_EXITED", state_name(st.state));
    ensure!(
        st.exit_code == code && st.reason == reason,
        "{what}: exit code {} reason [{}] (message [{}]), want {code} [{reason}]",
        st.exit_code,
        st.reason,
        st.message
    );
    // containerd stamps started_at after the start returns: a container that exits at once may
    // show a finished_at a little before it. Both are set, and after the creation.
    ensure!(
        st.started_at > 0 && st.finished_at >= st.created_at,
        "{what}: created_at {} started_at {} finished_at {}",
        st.created_at,
        st.started_at,
        st.finished_at
    );
    Ok(())
}

/// CreateContainer → CREATED, StartContainer → RUNNING, StopContainer → EXITED 0 "Completed"
/// (the container handles SIGTERM), stop and remove again, then NotFound.
pub async fn lifecycle(ctx: &Ctx) -> Result<()> {
    let cri = ctx.cri();
    let pod = ctx.main_pod().await?;
    // PID 1 of its namespace ignores a SIGTERM that comes before the trap is set (as under
    // runc): the stop below waits until the shell says it has set it.
    let spec = ctx.sh("life", "trap 'exit 0' TERM; touch /tmp/trapped; while :; do sleep 1; done");
    let c = ctx.create(&pod, &spec).await?;
    let st = cri.container_status(&c).await?;
    ensure!(st.state == ContainerState::ContainerCreated as i32, "after CreateContainer: state {}, want CONTAINER_CREATED", state_name(st.state));
    ensure!(st.created_at > 0 && st.started_at == 0, "after CreateContainer: created_at {} started_at {}", st.created_at, st.started_at);
    ensure!(st.metadata.as_ref().map(|m| m.name.as_str()) == Some("life"), "ContainerStatus metadata {:?}, want name life", st.metadata);
    let want_log = pod.spec.log_dir.join(spec.log_path());
    ensure!(st.log_path == want_log.display().to_string(), "ContainerStatus log_path {}, want {}", st.log_path, want_log.display());

    cri.start_container(&c).await?;
    let st = ctx.wait_state(&c, ContainerState::ContainerRunning).await?;
    ensure!(st.started_at >= st.created_at, "started_at {} before created_at {}", st.started_at, st.created_at);
    let running = cri.list_containers(&pod.id).await?;
    ensure!(running.iter().any(|x| x.id == c && x.state == ContainerState::ContainerRunning as i32), "ListContainers(pod) does not list {c} as running");
    let r = ctx.exec(&c, &["true"], 30).await?;
    ensure!(r.exit_code == 0, "ExecSync true in a running container exited {}", r.exit_code);
    ctx.sh_out(&c, "i=0; until [ -e /tmp/trapped ]; do i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 0.1; done")
        .await
        .context("the container's shell never set its TERM trap")?;

    let t = Instant::now();
    cri.stop_container(&c, 60).await?;
    let took = t.elapsed();
    let st = cri.container_status(&c).await?;
    check_exit(&st, 0, "Completed", "after StopContainer of a container that exits on SIGTERM")?;
    ensure!(st.finished_at >= st.started_at, "finished_at {} before started_at {} of a container that ran for seconds", st.finished_at, st.started_at);
    ensure!(took < Duration::from_secs(50), "StopContainer took {} s: the container's SIGTERM handler did not end it before the 60 s grace", took.as_secs());
    cri.stop_container(&c, 10).await.context("StopContainer of an exited container (must succeed)")?;

    cri.remove_container(&c).await?;
    ctx.forget_container(&c);
    match cri.container_status(&c).await {
        Err(e) if e.code() == Some(tonic::Code::NotFound) => {}
        other => bail!("ContainerStatus after RemoveContainer: want NotFound, got {other:?}"),
    }
    cri.remove_container(&c).await.context("RemoveContainer again (must be idempotent)")?;
    let left = cri.list_containers(&pod.id).await?;
    ensure!(!left.iter().any(|x| x.id == c), "ListContainers still lists the removed {c}");
    Ok(())
}

/// Exit 0 ("Completed"), exit 3 ("Error"), and killed after the stop grace period (137).
pub async fn exit_codes(ctx: &Ctx) -> Result<()> {
    let cri = ctx.cri();
    let pod = ctx.main_pod().await?;
    let zero = ctx.start(&pod, &ctx.sh("exit0", "exit 0")).await?;
    let three = ctx.start(&pod, &ctx.sh("exit3", "exit 3")).await?;
    let stubborn = ctx.start(&pod, &ctx.sh("killed", "trap '' TERM; while :; do sleep 1; done")).await?;
    check_exit(&ctx.wait_state(&zero, ContainerState::ContainerExited).await?, 0, "Completed", "exit 0")?;
    check_exit(&ctx.wait_state(&three, ContainerState::ContainerExited).await?, 3, "Error", "exit 3")?;
    ctx.wait_state(&stubborn, ContainerState::ContainerRunning).await?;
    let t = Instant::now();
    cri.stop_container(&stubborn, 2).await?;
    let took = t.elapsed();
    check_exit(&cri.container_status(&stubborn).await?, 137, "Error", "ignoring SIGTERM, stopped with a 2 s grace period")?;
    ensure!(
        took >= Duration::from_millis(1900),
        "StopContainer with a 2 s grace period returned after {} ms: SIGKILL came before the grace period ended",
        took.as_millis()
    );
    Ok(())
}

/// The CRI log file at the pod's log directory + the container's log_path: stdout and stderr
/// records in order, a line longer than containerd's 16 KiB record split into P records.
pub async fn logs(ctx: &Ctx) -> Result<()> {
    let pod = ctx.main_pod().await?;
    let started = chrono::Utc::now();
    let spec = ctx.sh("logs", "echo out-1; echo err-1 >&2; echo out-2; head -c 20000 /dev/zero | tr '\\0' x; echo; printf tail-no-newline");
    let c = ctx.start(&pod, &spec).await?;
    check_exit(&ctx.wait_state(&c, ContainerState::ContainerExited).await?, 0, "Completed", "the logging container")?;
    let path = pod.spec.log_dir.join(spec.log_path());
    // The log is written by containerd beside the exit: wait for its last record.
    let deadline = Instant::now() + ctx.opts.wait;
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("tail-no-newline") {
            break text;
        }
        if Instant::now() > deadline {
            bail!(
                "the log file {} has no record `tail-no-newline` after {} s; it holds {} bytes: [{}]",
                path.display(),
                ctx.opts.wait.as_secs(),
                text.len(),
                text.chars().take(400).collect::<String>()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let records = cri_log::parse(&text).with_context(|| format!("the log file {}", path.display()))?;
    let long = "x".repeat(20000);
    let out = cri_log::lines(&records, false);
    let want = ["out-1", "out-2", long.as_str(), "tail-no-newline"];
    ensure!(out == want, "stdout lines in the log: {:?}, want {:?}", out.iter().map(|l| abbrev(l)).collect::<Vec<_>>(), want.map(abbrev));
    let err = cri_log::lines(&records, true);
    ensure!(err == ["err-1"], "stderr lines in the log: {err:?}, want [\"err-1\"]");
    ensure!(records.iter().any(|r| r.partial), "no P (partial) record for a 20000-byte line");
    ensure!(records.iter().all(|r| r.content.len() <= 16384), "a record is longer than containerd's 16 KiB maximum");
    for stream in [false, true] {
        let times: Vec<_> = records.iter().filter(|r| r.stderr == stream).map(|r| r.time).collect();
        ensure!(times.windows(2).all(|w| w[0] <= w[1]), "timestamps of {} go backwards: {times:?}", if stream { "stderr" } else { "stdout" });
    }
    let now = chrono::Utc::now();
    let slack = chrono::Duration::seconds(5);
    for r in &records {
        ensure!(r.time >= started - slack && r.time <= now + slack, "record time {} is outside the container's run ({started} .. {now})", r.time);
    }
    Ok(())
}

fn abbrev(s: &str) -> String {
    if s.len() > 24 {
        format!("{}...({} bytes)", s.chars().take(12).collect::<String>(), s.len())
    } else {
        s.to_string()
    }
}
