//! Pod benchmarks through CRI, every handler in the same run (the order alternates per round):
//! pod start (RunPodSandbox + CreateContainer + StartContainer until the container runs), a
//! second container joining a running pod, and the host memory (PSS) of an idle pod of one and
//! of three containers: the pod's shim and every process below it (husk: husk-vmm; runc: pause
//! and the containers).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1::ContainerState;

use crate::cri::Cri;
use crate::procfs;
use crate::spec::ContainerSpec;
use crate::suite::ctx::Pod;
use crate::suite::{Ctx, Opts};

/// Polls until the container runs, finely (the figure is a latency).
async fn until_running(cri: &Cri, id: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if cri.container_status(id).await?.state == ContainerState::ContainerRunning as i32 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("container {id} not running after {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn add_container(ctx: &Ctx, pod: &Pod, name: &str) -> Result<String> {
    let cri = ctx.cri();
    let spec = ContainerSpec::cmd(name, &ctx.opts.image, &["sleep", "100000"]);
    let id = cri.create_container(&pod.id, &spec.config(), &pod.config).await?;
    cri.start_container(&id).await?;
    until_running(&cri, &id, ctx.opts.wait).await?;
    Ok(id)
}

async fn remove_pod(ctx: &Ctx, pod: &Pod) -> Result<()> {
    ctx.cri().stop_pod(&pod.id).await?;
    ctx.cri().remove_pod(&pod.id).await?;
    Ok(())
}

/// One pod start and one join, in milliseconds.
async fn cycle(ctx: &Ctx, round: usize) -> Result<(f64, f64)> {
    let t = Instant::now();
    let pod = ctx.run_pod(ctx.pod_spec(&format!("b{round}")), true).await?;
    let res = async {
        add_container(ctx, &pod, "first").await?;
        let start = t.elapsed();
        let t = Instant::now();
        add_container(ctx, &pod, "second").await?;
        Ok::<_, anyhow::Error>((start.as_secs_f64() * 1e3, t.elapsed().as_secs_f64() * 1e3))
    }
    .await;
    remove_pod(ctx, &pod).await?;
    res
}

/// PSS in KiB of the pod's shim and each process below it, by process name.
fn pod_pss(ctx: &Ctx, pod: &Pod) -> Result<BTreeMap<String, u64>> {
    let procs = procfs::processes()?;
    let shims = procfs::shims(&procs, &ctx.socket_str(), &pod.id);
    let [shim] = shims.as_slice() else { bail!("want one shim for pod {}, found {}", pod.id, shims.len()) };
    let mut out = BTreeMap::new();
    for p in std::iter::once(*shim).chain(procfs::descendants(&procs, shim.pid)) {
        *out.entry(p.name().to_string()).or_insert(0) += procfs::pss_kib(p.pid).with_context(|| format!("PSS of {} ({})", p.pid, p.cmdline()))?;
    }
    Ok(out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn line(what: &str, unit: &str, figures: &[(String, f64)], note: &str) {
    let parts: Vec<String> = figures.iter().map(|(h, v)| format!("{h} {v:.0} {unit}")).collect();
    let ratio = match (figures.iter().find(|f| f.0 == "husk"), figures.iter().find(|f| f.0 == "runc")) {
        (Some(h), Some(r)) if r.1 > 0.0 => format!(", husk/runc = {:.2}x", h.1 / r.1),
        _ => String::new(),
    };
    println!("{what}: {}{note}{ratio}", parts.join(", "));
}

pub async fn run(cri: Cri, opts: Opts, handlers: &[String], runs: usize, settle: Duration) -> Result<()> {
    let ctxs: Vec<Ctx> = handlers.iter().map(|h| Ctx::new(cri.clone(), opts.clone(), h)).collect();
    let mut starts: Vec<Vec<f64>> = vec![Vec::new(); ctxs.len()];
    let mut joins = starts.clone();
    // Round 0 warms each handler up (image snapshots, caches) and is not counted.
    for round in 0..=runs {
        let mut order: Vec<usize> = (0..ctxs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (s, j) = cycle(&ctxs[i], round).await.with_context(|| format!("round {round}, handler {}", ctxs[i].handler))?;
            if round > 0 {
                starts[i].push(s);
                joins[i].push(j);
            }
        }
    }
    let fig = |v: &mut Vec<Vec<f64>>| -> Vec<(String, f64)> { ctxs.iter().zip(v.iter_mut()).map(|(c, v)| (c.handler.clone(), median(v))).collect() };
    let note = format!(" (median of {runs})");
    line("pod start (RunPodSandbox + CreateContainer + StartContainer until running)", "ms", &fig(&mut starts), &note);
    line("second container joining a running pod", "ms", &fig(&mut joins), &note);

    let mut one = Vec::new();
    let mut three = Vec::new();
    for ctx in &ctxs {
        let pod = ctx.run_pod(ctx.pod_spec("mem"), true).await?;
        let res = async {
            add_container(ctx, &pod, "c1").await?;
            tokio::time::sleep(settle).await;
            let a = pod_pss(ctx, &pod)?;
            add_container(ctx, &pod, "c2").await?;
            add_container(ctx, &pod, "c3").await?;
            tokio::time::sleep(settle).await;
            Ok::<_, anyhow::Error>((a, pod_pss(ctx, &pod)?))
        }
        .await;
        remove_pod(ctx, &pod).await?;
        let (a, b) = res.with_context(|| format!("memory of an idle pod, handler {}", ctx.handler))?;
        println!("idle pod PSS by process, handler {}: 1 container {a:?} KiB; 3 containers {b:?} KiB", ctx.handler);
        one.push((ctx.handler.clone(), a.values().sum::<u64>() as f64));
        three.push((ctx.handler.clone(), b.values().sum::<u64>() as f64));
    }
    line("idle pod of 1 container, host PSS of its shim and processes", "KiB", &one, "");
    line("idle pod of 3 containers, host PSS of its shim and processes", "KiB", &three, "");
    Ok(())
}
