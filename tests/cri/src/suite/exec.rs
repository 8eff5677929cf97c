//! ExecSync as kubelet's exec probes use it: exit codes, separate stdout and stderr, large
//! output intact, and the timeout (the process is killed, the call fails).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use k8s_cri::v1::ContainerState;

use super::ctx::{text, Ctx};

pub async fn exec_sync(ctx: &Ctx) -> Result<()> {
    let pod = ctx.main_pod().await?;
    let c = ctx.start(&pod, &ctx.sh("exec", "exec sleep 100000")).await?;
    ctx.wait_state(&c, ContainerState::ContainerRunning).await?;

    let r = ctx.exec(&c, &["sh", "-c", "echo to-out; echo to-err >&2; exit 7"], 30).await?;
    ensure!(
        (r.exit_code, text(&r.stdout).as_str(), text(&r.stderr).as_str()) == (7, "to-out\n", "to-err\n"),
        "sh -c 'echo to-out; echo to-err >&2; exit 7': exit {} stdout {:?} stderr {:?}",
        r.exit_code,
        text(&r.stdout),
        text(&r.stderr)
    );
    let r = ctx.exec(&c, &["true"], 30).await?;
    ensure!(
        r.exit_code == 0 && r.stdout.is_empty() && r.stderr.is_empty(),
        "true: exit {} stdout {:?} stderr {:?}",
        r.exit_code,
        text(&r.stdout),
        text(&r.stderr)
    );
    let r = ctx.exec(&c, &["false"], 30).await?;
    ensure!(r.exit_code == 1, "false: exit {}, want 1", r.exit_code);
    // Fails, and at once: containerd waits for a failed exec's exit before deleting it (a
    // runtime that never reports one costs a minute, containerd's deferred timeout).
    let t = Instant::now();
    match ctx.exec(&c, &["/no/such/binary"], 30).await {
        Ok(r) if r.exit_code == 0 => bail!("exec of a binary that does not exist succeeded"),
        _ => {}
    }
    ensure!(t.elapsed() < Duration::from_secs(20), "exec of a binary that does not exist took {} s to fail", t.elapsed().as_secs());

    let r = ctx.exec(&c, &["seq", "1", "20000"], 60).await?;
    let want: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    ensure!(
        r.exit_code == 0 && r.stdout == want.as_bytes(),
        "seq 1 20000: exit {}, {} bytes of stdout (want {}), stdout intact: {}",
        r.exit_code,
        r.stdout.len(),
        want.len(),
        r.stdout == want.as_bytes()
    );

    let t = Instant::now();
    let res = ctx.cri().exec_sync(&c, &["sleep", "37"], 2).await;
    let took = t.elapsed();
    match res {
        Ok(r) => bail!("ExecSync sleep 37 with a 2 s timeout returned exit {} after {} ms instead of failing with a timeout", r.exit_code, took.as_millis()),
        Err(e) => ensure!(e.to_string().contains("timeout"), "ExecSync past its timeout failed, but not with a timeout: {e}"),
    }
    ensure!(took >= Duration::from_millis(1900), "ExecSync with a 2 s timeout gave up after {} ms", took.as_millis());
    ensure!(took < Duration::from_secs(30), "ExecSync with a 2 s timeout returned after {} s", took.as_secs());
    ctx.sh_until(&c, "ps -o args", |o| !o.lines().any(|l| l.trim() == "sleep 37"))
        .await
        .map_err(|e| e.context("the timed-out exec process (sleep 37) was not killed"))?;
    Ok(())
}
