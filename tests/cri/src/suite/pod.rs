//! Pod cases: the sandbox's lifecycle, what a container sees of its pod (hostname, DNS, IP),
//! and a shared PID namespace.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1::{ContainerState, DnsConfig, PodSandboxFilter, PodSandboxState};

use super::ctx::{describe, Ctx};
use crate::procfs;

/// The DNS settings of the shared pod (what kubelet derives from a pod's dnsConfig).
pub fn main_dns() -> DnsConfig {
    DnsConfig {
        servers: vec!["10.96.0.10".into(), "10.96.0.11".into()],
        searches: vec!["husk-cri.svc.cluster.local".into(), "cluster.local".into()],
        options: vec!["ndots:5".into(), "timeout:2".into()],
    }
}

/// Waits until none of `pids` is alive (gone or a zombie).
pub async fn wait_gone(ctx: &Ctx, pids: &[u32], what: &str) -> Result<()> {
    let deadline = Instant::now() + ctx.opts.wait;
    loop {
        let procs = procfs::processes()?;
        let left: Vec<_> = procs.into_iter().filter(|p| pids.contains(&p.pid) && p.state != 'Z').collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} still running {} s later: {}", ctx.opts.wait.as_secs(), describe(&left));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// RunPodSandbox, status, a container in it, StopPodSandbox (twice), RemovePodSandbox (twice);
/// the pod's processes (shim, pause, container, VM) are checked in /proc at each step.
pub async fn lifecycle(ctx: &Ctx) -> Result<()> {
    let cri = ctx.cri();
    let pod = ctx.run_pod(ctx.pod_spec("life"), false).await?;
    let st = cri.pod_status(&pod.id).await?;
    ensure!(st.state == PodSandboxState::SandboxReady as i32, "PodSandboxStatus after RunPodSandbox: state {}, want SANDBOX_READY", st.state);
    let ip = st.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
    ensure!(!ip.is_empty(), "PodSandboxStatus has no pod IP (CNI)");
    let listed = cri.list_pods(PodSandboxFilter { id: pod.id.clone(), ..Default::default() }).await?;
    ensure!(listed.len() == 1 && listed[0].state == PodSandboxState::SandboxReady as i32, "ListPodSandbox(id {}) gave {listed:?}", pod.id);

    let shims = ctx.shims_for(&[&pod.id])?;
    ensure!(shims.len() == 1, "want one shim process for the pod, /proc shows {}: {}", shims.len(), describe(&shims));
    let c = ctx.start(&pod, &ctx.sh("sleeper", "exec sleep 100000")).await?;
    ctx.wait_state(&c, ContainerState::ContainerRunning).await?;
    let procs = procfs::processes()?;
    let pod_procs: Vec<u32> = procfs::descendants(&procs, shims[0].pid).iter().map(|p| p.pid).collect();
    ensure!(!pod_procs.is_empty(), "the pod's shim {} has no child processes", shims[0].pid);
    if ctx.is_husk() {
        let vmms = ctx.vmms_for(&[&pod.id])?;
        ensure!(vmms.len() == 1, "want one husk-vmm below the pod's shim, found {}: {}", vmms.len(), describe(&vmms));
    }

    cri.stop_pod(&pod.id).await?;
    let st = cri.pod_status(&pod.id).await?;
    ensure!(st.state == PodSandboxState::SandboxNotready as i32, "PodSandboxStatus after StopPodSandbox: state {}, want SANDBOX_NOTREADY", st.state);
    let cs = cri.container_status(&c).await?;
    ensure!(
        cs.state == ContainerState::ContainerExited as i32,
        "container after StopPodSandbox is {}, want CONTAINER_EXITED",
        super::ctx::state_name(cs.state)
    );
    wait_gone(ctx, &pod_procs, "after StopPodSandbox, processes of the pod (pause, container, VM)").await?;
    cri.stop_pod(&pod.id).await.context("StopPodSandbox again (must be idempotent)")?;

    cri.remove_pod(&pod.id).await?;
    ctx.forget_container(&c);
    match cri.pod_status(&pod.id).await {
        Err(e) if e.code() == Some(tonic::Code::NotFound) => {}
        other => bail!("PodSandboxStatus after RemovePodSandbox: want NotFound, got {other:?}"),
    }
    let left = cri.list_containers(&pod.id).await?;
    ensure!(left.is_empty(), "ListContainers after RemovePodSandbox still lists {left:?}");
    wait_gone(ctx, &[shims[0].pid], "after RemovePodSandbox, the pod's shim").await?;
    cri.remove_pod(&pod.id).await.context("RemovePodSandbox again (must be idempotent)")?;
    ctx.forget_pod(&pod.id);
    Ok(())
}

/// The pod's hostname is what the container sees (`hostname`, /etc/hostname); /etc/resolv.conf
/// holds the pod's DNS servers, searches and options.
pub async fn hostname_dns(ctx: &Ctx) -> Result<()> {
    let pod = ctx.main_pod().await?;
    let c = ctx.start(&pod, &ctx.sh("dns", "exec sleep 100000")).await?;
    let host = ctx.sh_out(&c, "hostname").await?;
    ensure!(host.trim() == pod.spec.hostname, "`hostname` says [{}], the pod's hostname is {}", host.trim(), pod.spec.hostname);
    let file = ctx.sh_out(&c, "cat /etc/hostname").await?;
    ensure!(file.trim() == pod.spec.hostname, "/etc/hostname holds [{}], the pod's hostname is {}", file.trim(), pod.spec.hostname);
    let resolv = ctx.sh_out(&c, "cat /etc/resolv.conf").await?;
    let dns = main_dns();
    let mut want: Vec<String> = dns.servers.iter().map(|s| format!("nameserver {s}")).collect();
    want.push(format!("search {}", dns.searches.join(" ")));
    want.push(format!("options {}", dns.options.join(" ")));
    for w in want {
        ensure!(resolv.lines().any(|l| l.trim() == w), "/etc/resolv.conf has no line [{w}]; it holds:\n{resolv}");
    }
    Ok(())
}

/// The container's eth0 carries the pod IP that PodSandboxStatus reports (CNI's address).
pub async fn pod_ip(ctx: &Ctx) -> Result<()> {
    let pod = ctx.main_pod().await?;
    let ip = ctx.cri().pod_status(&pod.id).await?.network.map(|n| n.ip).unwrap_or_default();
    ensure!(!ip.is_empty(), "PodSandboxStatus has no pod IP");
    let c = ctx.start(&pod, &ctx.sh("ip", "exec sleep 100000")).await?;
    let addrs = ctx.sh_out(&c, "ip -o -4 addr show dev eth0").await?;
    ensure!(
        addrs.split_whitespace().any(|w| w.split('/').next() == Some(ip.as_str())),
        "eth0 in the container does not have the pod IP {ip}: [{}]",
        addrs.trim()
    );
    Ok(())
}

/// shareProcessNamespace: the pause process is PID 1 and every container's processes are
/// visible from each container.
pub async fn share_pid(ctx: &Ctx) -> Result<()> {
    let mut spec = ctx.pod_spec("spid");
    spec.share_pid = true;
    let pod = ctx.run_pod(spec, false).await?;
    let mut a = ctx.sh("a", "exec sleep 100002");
    a.share_pid = true;
    let mut b = ctx.sh("b", "exec sleep 100003");
    b.share_pid = true;
    let ca = ctx.start(&pod, &a).await?;
    let cb = ctx.start(&pod, &b).await?;
    ctx.wait_state(&ca, ContainerState::ContainerRunning).await?;
    ctx.wait_state(&cb, ContainerState::ContainerRunning).await?;
    let init = ctx.sh_out(&ca, "tr '\\0' ' ' </proc/1/cmdline").await?;
    ensure!(init.trim() == "/pause", "PID 1 seen from the app container runs [{}], want the pause process /pause", init.trim());
    for (from, name) in [(&ca, "a"), (&cb, "b")] {
        let ps = ctx
            .sh_until(from, "ps -o pid,args", |o| o.contains("sleep 100002") && o.contains("sleep 100003"))
            .await
            .with_context(|| format!("processes seen from container {name}"))?;
        ensure!(
            ps.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "/pause"]),
            "`ps` in container {name} does not show /pause as PID 1:\n{ps}"
        );
    }
    // An orphan goes to the pod's PID 1, the pause process, which reaps it when it exits.
    let orphan = ctx.sh_out(&ca, "sleep 3 </dev/null >/dev/null 2>&1 & echo $!").await?;
    let orphan = orphan.trim();
    ensure!(!orphan.is_empty() && orphan.bytes().all(|b| b.is_ascii_digit()), "the orphan's pid is [{orphan}]");
    let stat = format!("cat /proc/{orphan}/stat 2>/dev/null; true");
    let parent = ctx.sh_out(&ca, &stat).await?;
    let ppid = parent.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1));
    ensure!(parent.is_empty() || ppid == Some("1"), "the orphan {orphan} was not reparented to PID 1: /proc/{orphan}/stat [{}]", parent.trim());
    ctx.sh_until(&ca, &stat, |o| o.trim().is_empty()).await.context("the orphan (sleep 3) was not reaped by the pause process (a zombie is left)")?;
    super::multi::one_shim_one_vm(ctx, &pod, &[&ca, &cb])?;
    Ok(())
}
