//! Stats (ContainerStats, ListContainerStats, PodSandboxStats) and UpdateContainerResources as
//! the container sees it in its cgroup.

use anyhow::{ensure, Result};
use k8s_cri::v1::{ContainerState, ContainerStats, ContainerStatsFilter};

use super::ctx::Ctx;
use super::Skip;

/// A container that burns a fixed amount of CPU, then marks /tmp/busy-done and sleeps.
const BUSY: &str = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; touch /tmp/busy-done; exec sleep 100009";
/// CPU the busy loop takes at the least (it takes about 0.3 s natively).
const MIN_CPU_NS: u64 = 50_000_000;

async fn busy_container(ctx: &Ctx, name: &str) -> Result<String> {
    let pod = ctx.main_pod().await?;
    let c = ctx.start(&pod, &ctx.sh(name, BUSY)).await?;
    ctx.sh_until(&c, "test -e /tmp/busy-done && echo done", |o| o.trim() == "done").await?;
    Ok(c)
}

fn check_usage(s: &ContainerStats, what: &str) -> Result<()> {
    let cpu = s.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()).map(|v| v.value).unwrap_or(0);
    let mem = s.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map(|v| v.value).unwrap_or(0);
    ensure!(cpu >= MIN_CPU_NS, "{what}: CPU usage {cpu} ns after a busy loop, want at least {MIN_CPU_NS}");
    ensure!(mem > 0, "{what}: memory working set {mem} bytes");
    ensure!(s.cpu.as_ref().map(|c| c.timestamp).unwrap_or(0) > 0, "{what}: no CPU timestamp");
    Ok(())
}

/// ContainerStats and ListContainerStats (by pod and by id) of a container after a busy loop.
pub async fn stats(ctx: &Ctx) -> Result<()> {
    let c = busy_container(ctx, "busy").await?;
    let pod = ctx.main_pod().await?;
    check_usage(&ctx.cri().container_stats(&c).await?, "ContainerStats")?;
    let by_pod = ctx.cri().list_container_stats(ContainerStatsFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() }).await?;
    let mine = by_pod.iter().find(|s| s.attributes.as_ref().map(|a| a.id.as_str()) == Some(c.as_str()));
    let Some(mine) = mine else { anyhow::bail!("ListContainerStats(pod {}) does not list the busy container {c}", pod.id) };
    check_usage(mine, "ListContainerStats(pod)")?;
    let by_id = ctx.cri().list_container_stats(ContainerStatsFilter { id: c.clone(), ..Default::default() }).await?;
    ensure!(by_id.len() == 1, "ListContainerStats(id {c}) gave {} entries", by_id.len());
    check_usage(&by_id[0], "ListContainerStats(id)")
}

/// PodSandboxStats of the shared pod with a busy container in it; skipped if the runtime
/// answers Unimplemented.
pub async fn pod_stats(ctx: &Ctx) -> Result<()> {
    let c = busy_container(ctx, "podbusy").await?;
    let pod = ctx.main_pod().await?;
    let s = match ctx.cri().pod_stats(&pod.id).await {
        Err(e) if e.code() == Some(tonic::Code::Unimplemented) => return Err(Skip(format!("containerd does not implement it here: {e}")).into()),
        r => r?,
    };
    let linux = s.linux.ok_or_else(|| anyhow::anyhow!("PodSandboxStats has no linux stats"))?;
    let cpu = linux.cpu.and_then(|c| c.usage_core_nano_seconds).map(|v| v.value).unwrap_or(0);
    let mem = linux.memory.and_then(|m| m.working_set_bytes).map(|v| v.value).unwrap_or(0);
    ensure!(cpu >= MIN_CPU_NS && mem > 0, "PodSandboxStats: CPU {cpu} ns, memory working set {mem} bytes after a busy container");
    let inner = linux.containers.iter().find(|s| s.attributes.as_ref().map(|a| a.id.as_str()) == Some(c.as_str()));
    let Some(inner) = inner else { anyhow::bail!("PodSandboxStats does not list the busy container {c}") };
    check_usage(inner, "PodSandboxStats' container")
}

/// The cgroup limits as the container reads them: memory limit, CPU quota and period.
const LIMITS: &str = "if [ -f /sys/fs/cgroup/memory.max ]; then cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; \
                      else cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us; fi";

/// Normalizes cgroup v1 and v2 readings to "memory quota period".
fn limits(out: &str) -> String {
    out.split_whitespace().collect::<Vec<_>>().join(" ").replace("max", "-1")
}

/// A memory limit set at creation, then a new memory limit, CPU quota and cpuset by
/// UpdateContainerResources: the container's cgroup files show each.
pub async fn update_resources(ctx: &Ctx) -> Result<()> {
    let pod = ctx.main_pod().await?;
    let mut spec = ctx.sh("update", "exec sleep 100010");
    spec.memory_limit = Some(128 << 20);
    let c = ctx.start(&pod, &spec).await?;
    ctx.wait_state(&c, ContainerState::ContainerRunning).await?;
    let before = limits(&ctx.sh_out(&c, LIMITS).await?);
    ensure!(
        before.starts_with(&format!("{} -1 ", 128u64 << 20)),
        "the container's cgroup shows [{before}] (memory, CPU quota, period), want a 128 MiB limit and no quota"
    );
    let new = k8s_cri::v1::LinuxContainerResources {
        memory_limit_in_bytes: 96 << 20,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        cpuset_cpus: "0".into(),
        ..Default::default()
    };
    ctx.cri().update_resources(&c, new).await?;
    let want = format!("{} 50000 100000", 96u64 << 20);
    let after = limits(&ctx.sh_out(&c, LIMITS).await?);
    ensure!(after == want, "after UpdateContainerResources the container's cgroup shows [{after}] (memory, CPU quota, period), want [{want}]");
    // CPU 0 exists on every node and VM: the container's cpuset names it alone.
    let cpus = ctx.sh_out(&c, "cat /sys/fs/cgroup/cpuset.cpus 2>/dev/null || cat /sys/fs/cgroup/cpuset/cpuset.cpus").await?;
    ensure!(cpus.trim() == "0", "after UpdateContainerResources with cpuset_cpus 0 the container's cpuset.cpus is [{}]", cpus.trim());
    Ok(())
}
