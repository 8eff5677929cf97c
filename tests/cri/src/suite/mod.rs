//! The CRI suite: every case, what kubelet does, run once per runtime handler. Prints
//! `PASS|FAIL|SKIP <handler> <case>` per case and a closing `N passed, N failed, N skipped`.

mod bad_input;
mod container;
pub mod ctx;
mod exec;
mod multi;
mod network;
mod placement;
pub mod pod;
mod resources;
mod restart;
mod security;
mod volumes;

use std::time::Instant;

use anyhow::Result;

use crate::cri::Cri;
use crate::leak::Baseline;
pub use ctx::{Ctx, Opts};

/// A case that cannot run here, with the reason; not a failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Skip(pub String);

/// The cases in the order they run for each handler. The shared pod ("main") is created by the
/// first case that needs it and removed by `leak-check`, which runs last.
pub const CASES: &[&str] = &[
    "pod-lifecycle",
    "container-lifecycle",
    "exit-codes",
    "exec-sync",
    "logs",
    "hostname-dns",
    "pod-ip",
    "pod-network",
    "multi-container",
    "share-pid",
    "run-as-user",
    "readonly-rootfs",
    "capabilities",
    "oom",
    "stats",
    "pod-stats",
    "update-resources",
    "volumes",
    "vm-placement",
    "bad-input",
    "containerd-restart",
    "leak-check",
];

async fn run_case(name: &str, ctx: &Ctx, baseline: &Baseline) -> Result<()> {
    match name {
        "pod-lifecycle" => pod::lifecycle(ctx).await,
        "hostname-dns" => pod::hostname_dns(ctx).await,
        "pod-ip" => pod::pod_ip(ctx).await,
        "pod-network" => network::pod_network(ctx).await,
        "share-pid" => pod::share_pid(ctx).await,
        "container-lifecycle" => container::lifecycle(ctx).await,
        "exit-codes" => container::exit_codes(ctx).await,
        "logs" => container::logs(ctx).await,
        "exec-sync" => exec::exec_sync(ctx).await,
        "multi-container" => multi::multi_container(ctx).await,
        "run-as-user" => security::run_as_user(ctx).await,
        "readonly-rootfs" => security::readonly_rootfs(ctx).await,
        "capabilities" => security::capabilities(ctx).await,
        "oom" => security::oom(ctx).await,
        "stats" => resources::stats(ctx).await,
        "pod-stats" => resources::pod_stats(ctx).await,
        "update-resources" => resources::update_resources(ctx).await,
        "volumes" => volumes::volumes(ctx).await,
        "vm-placement" => placement::vm_placement(ctx).await,
        "bad-input" => bad_input::bad_input(ctx).await,
        "containerd-restart" => restart::containerd_restart(ctx).await,
        "leak-check" => crate::leak::leak_check(ctx, baseline).await,
        other => anyhow::bail!("no case named {other}"),
    }
}

/// Totals of a run.
#[derive(Debug, Default)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// Runs the cases matching `filter` (all if empty; `leak-check` always) for each handler.
pub async fn run(cri: Cri, opts: Opts, handlers: &[String], filter: &[String]) -> Result<Tally> {
    let baseline = Baseline::take()?;
    let suite_start = Instant::now();
    let mut tally = Tally::default();
    for handler in handlers {
        let ctx = Ctx::new(cri.clone(), opts.clone(), handler);
        for name in CASES.iter().copied() {
            if !filter.is_empty() && name != "leak-check" && !filter.iter().any(|f| name.contains(f.as_str())) {
                continue;
            }
            let start = Instant::now();
            // Past the run's budget only the leak check runs; a case gets what is left of it.
            let left = opts.budget.map(|b| b.saturating_sub(suite_start.elapsed()));
            let limit = match left {
                Some(l) if name != "leak-check" => opts.case_timeout.min(l),
                _ => opts.case_timeout,
            };
            let outcome = if limit.is_zero() {
                Err(anyhow::anyhow!("not run: the suite's time budget is spent"))
            } else {
                match tokio::time::timeout(limit, run_case(name, &ctx, &baseline)).await {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!("the case did not finish within {} s", limit.as_secs())),
                }
            };
            let cleanup = ctx.cleanup_case().await;
            let secs = start.elapsed().as_secs_f64();
            match outcome {
                Ok(()) => {
                    tally.passed += 1;
                    println!("PASS {handler} {name} ({secs:.1} s)");
                }
                Err(e) if e.downcast_ref::<Skip>().is_some() => {
                    tally.skipped += 1;
                    println!("SKIP {handler} {name} ({secs:.1} s): {e}");
                }
                Err(e) => {
                    tally.failed += 1;
                    println!("FAIL {handler} {name} ({secs:.1} s): {e:#}");
                }
            }
            for e in cleanup {
                println!("     {handler} {name}: cleanup: {e}");
            }
        }
    }
    Ok(tally)
}
