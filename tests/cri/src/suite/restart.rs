//! A containerd restart while a pod runs: the pod, its container and its shim (and VM) live on,
//! and answer CRI calls once containerd is back.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1::{ContainerState, PodSandboxState};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::ctx::{describe, Ctx};
use super::Skip;
use crate::cri::Cri;

fn read_pid(path: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading containerd's pid file {}", path.display()))?;
    text.trim().parse().with_context(|| format!("containerd's pid file {} holds [{}]", path.display(), text.trim()))
}

/// Kills containerd (SIGTERM, as a service restart does), waits for the supervisor to start a
/// new one and for its CRI plugin to be ready, and reconnects.
pub async fn restart_containerd(ctx: &Ctx, pidfile: &Path) -> Result<()> {
    let old = read_pid(pidfile)?;
    kill(Pid::from_raw(old), Signal::SIGTERM).with_context(|| format!("SIGTERM to containerd (pid {old})"))?;
    let deadline = Instant::now() + ctx.opts.wait;
    while Path::new(&format!("/proc/{old}")).exists() {
        ensure!(Instant::now() < deadline, "containerd (pid {old}) did not exit within {} s of SIGTERM", ctx.opts.wait.as_secs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let new = read_pid(pidfile).unwrap_or(old);
        if new != old {
            if let Ok(cri) = Cri::connect(&ctx.opts.socket, ctx.cri().timeout()).await {
                if crate::wait_ready_once(&cri).await.is_ok() {
                    ctx.set_cri(cri);
                    return Ok(());
                }
            }
        }
        ensure!(Instant::now() < deadline, "no ready containerd on {} within {} s of the restart", ctx.opts.socket.display(), ctx.opts.wait.as_secs());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn containerd_restart(ctx: &Ctx) -> Result<()> {
    let Some(pidfile) = ctx.opts.containerd_pidfile.clone() else {
        return Err(Skip("no --containerd-pidfile: containerd does not run under a restart loop".into()).into());
    };
    let pod = ctx.main_pod().await?;
    let c = ctx.start(&pod, &ctx.sh("restart", "exec sleep 100011")).await?;
    ctx.wait_state(&c, ContainerState::ContainerRunning).await?;
    let shims = ctx.shims_for(&[&pod.id])?;
    let vmms = ctx.vmms_for(&[&pod.id])?;

    restart_containerd(ctx, &pidfile).await?;

    let st = ctx.cri().pod_status(&pod.id).await?;
    ensure!(st.state == PodSandboxState::SandboxReady as i32, "after the restart the pod is in state {}, want SANDBOX_READY", st.state);
    let cs = ctx.cri().container_status(&c).await?;
    ensure!(cs.state == ContainerState::ContainerRunning as i32, "after the restart the container is {}", super::ctx::state_name(cs.state));
    let out = ctx.sh_out(&c, "echo alive").await.context("ExecSync after the restart")?;
    ensure!(out.trim() == "alive", "ExecSync echo alive after the restart gave [{}]", out.trim());
    let after = ctx.shims_for(&[&pod.id])?;
    ensure!(
        after.iter().map(|p| p.pid).eq(shims.iter().map(|p| p.pid)),
        "the pod's shim changed across the restart: before {}, after {}",
        describe(&shims),
        describe(&after)
    );
    let vmms_after = ctx.vmms_for(&[&pod.id])?;
    if ctx.is_husk() {
        ensure!(
            vmms.len() == 1 && vmms_after.iter().map(|p| p.pid).eq(vmms.iter().map(|p| p.pid)),
            "the pod's VM changed across the restart: before {}, after {}",
            describe(&vmms),
            describe(&vmms_after)
        );
    }
    // kubelet keeps managing the pod: a new container joins it.
    let joined = ctx.start(&pod, &ctx.sh("joined", "exec sleep 100012")).await.context("a new container in the pod after the restart")?;
    ctx.wait_state(&joined, ContainerState::ContainerRunning).await?;
    let out = ctx.sh_out(&joined, "echo joined").await?;
    if out.trim() != "joined" {
        bail!("ExecSync in the container started after the restart gave [{}]", out.trim());
    }
    super::multi::one_shim_one_vm(ctx, &pod, &[&c, &joined])
}
