//! Where a pod runs on the host and how big its VM is: the pod's process that holds its
//! resources (husk: husk-vmm; runc: the pause process) sits in the sandbox's cgroup under the
//! pod's cgroup parent, and a husk pod that asks for 2 CPUs and 256 MiB
//! (LinuxPodSandboxConfig.resources, what kubelet sums from its containers' limits) gets a VM
//! with that much more than the base, as its containers see in /proc.

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::{ContainerState, LinuxContainerResources};

use super::ctx::{describe, Ctx, Pod};
use crate::procfs;

/// What the sized pod asks for on top of the base VM.
const EXTRA_CPUS: i64 = 2;
const EXTRA_MEMORY: i64 = 256 << 20;

/// The pod's resource holder: husk-vmm under husk, the pause process under runc.
fn holder(ctx: &Ctx, pod: &Pod) -> Result<procfs::Proc> {
    let found = if ctx.is_husk() {
        ctx.vmms_for(&[&pod.id])?
    } else {
        let procs = procfs::processes()?;
        let shims = ctx.shims_for(&[&pod.id])?;
        shims.iter().flat_map(|s| procfs::descendants(&procs, s.pid)).filter(|p| p.name() == "pause").cloned().collect()
    };
    let what = if ctx.is_husk() { "husk-vmm" } else { "pause process" };
    ensure!(found.len() == 1, "want one {what} below the shim of pod {}, /proc shows {}: {}", pod.id, found.len(), describe(&found));
    Ok(found[0].clone())
}

/// (CPUs, MemTotal in KiB) as a container sees them.
async fn guest_size(ctx: &Ctx, c: &str) -> Result<(u64, u64)> {
    let out = ctx.sh_out(c, "grep -c ^processor /proc/cpuinfo; awk '/^MemTotal:/ {print $2}' /proc/meminfo").await?;
    let v: Vec<u64> = out
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("CPU count and MemTotal in {c}: [{}]", out.trim()))?;
    match v.as_slice() {
        [cpus, mem] => Ok((*cpus, *mem)),
        _ => anyhow::bail!("CPU count and MemTotal in {c}: [{}]", out.trim()),
    }
}

pub async fn vm_placement(ctx: &Ctx) -> Result<()> {
    let mut spec = ctx.pod_spec("sized");
    spec.resources =
        Some(LinuxContainerResources { cpu_period: 100_000, cpu_quota: EXTRA_CPUS * 100_000, memory_limit_in_bytes: EXTRA_MEMORY, ..Default::default() });
    let pod = ctx.run_pod(spec, false).await?;

    // The holder's cgroup is the sandbox's cgroupsPath: cgroup parent + sandbox id
    // (containerd's cgroupfs layout), on every hierarchy line of /proc/PID/cgroup.
    let p = holder(ctx, &pod)?;
    let want = format!("{}/{}", pod.spec.cgroup_parent(), pod.id);
    let cgroups = procfs::cgroups(p.pid);
    ensure!(!cgroups.is_empty() && cgroups.contains(&want), "{} (pid {}) is in cgroups {cgroups:?}, want the sandbox's {want}", p.name(), p.pid);
    if !ctx.is_husk() {
        return Ok(());
    }

    // The VM is sized from the pod: compared with the shared pod (the base size).
    let sized = ctx.start(&pod, &ctx.sh("sized", "exec sleep 100030")).await?;
    let main = ctx.main_pod().await?;
    let base = ctx.start(&main, &ctx.sh("base", "exec sleep 100031")).await?;
    ctx.wait_state(&sized, ContainerState::ContainerRunning).await?;
    ctx.wait_state(&base, ContainerState::ContainerRunning).await?;
    let (cpus, mem) = guest_size(ctx, &sized).await?;
    let (base_cpus, base_mem) = guest_size(ctx, &base).await?;
    ensure!(cpus == base_cpus + EXTRA_CPUS as u64, "a pod asking for {EXTRA_CPUS} CPUs sees {cpus} CPUs, the base VM {base_cpus}");
    // MemTotal excludes what the guest kernel reserves, which grows a little with the memory.
    let grown = mem.saturating_sub(base_mem);
    let min = (EXTRA_MEMORY as u64 >> 10) * 95 / 100;
    ensure!(grown >= min, "a pod asking for {} MiB more sees MemTotal {mem} KiB, the base VM {base_mem} KiB: only {grown} KiB more", EXTRA_MEMORY >> 20);
    Ok(())
}
