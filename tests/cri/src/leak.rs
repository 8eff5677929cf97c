//! The leak check after every pod of a handler is gone, counted from /proc, /proc/self/mounts
//! and /sys: no husk-vmm or husk shim, no shim of this containerd, no process in a pod cgroup
//! of this run or naming containerd's or husk's dirs (virtiofsd), no new mount below those
//! dirs or in /run/netns, no new loop device, nothing in husk's state dir, no port left on
//! the CNI bridge, no port mapping rule (the portmap plugin's per-pod DNAT chains) left.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use k8s_cri::v1::PodSandboxFilter;

use crate::procfs::{self, ProcError};
use crate::suite::{Ctx, Opts};

/// What existed before the suite: not ours to blame.
pub struct Baseline {
    mounts: HashSet<String>,
    loops: HashSet<(String, String)>,
    pids: HashSet<u32>,
}

const HUSK_PROCS: [&str; 2] = ["husk-vmm", "containerd-shim-husk-v2"];

impl Baseline {
    pub fn take() -> Result<Baseline, ProcError> {
        let procs = procfs::processes()?;
        Ok(Baseline {
            mounts: procfs::mount_points()?.into_iter().collect(),
            loops: procfs::loop_devices()?.into_iter().collect(),
            pids: procs.iter().filter(|p| HUSK_PROCS.contains(&p.name())).map(|p| p.pid).collect(),
        })
    }
}

fn is_below(path: &str, dir: &Path) -> bool {
    Path::new(path).starts_with(dir)
}

/// Everything left over now, one line each.
pub fn findings(opts: &Opts, baseline: &Baseline) -> Result<Vec<String>, ProcError> {
    let mut out = Vec::new();
    let procs = procfs::processes()?;
    let sock = opts.socket.display().to_string();
    let me = std::process::id();
    for p in procs.iter().filter(|p| p.pid != me) {
        let husk = HUSK_PROCS.contains(&p.name()) && !baseline.pids.contains(&p.pid);
        let shim = p.name().starts_with("containerd-shim") && p.arg_after("-address") == Some(sock.as_str());
        let in_pod = procfs::cgroups(p.pid).iter().any(|c| c.contains(&format!("/pod{}-", opts.run)));
        // virtiofsd and anything else started for a pod names a path of ours.
        let cmdline = p.cmdline();
        let names_ours = opts.watch.iter().chain(opts.husk_state_dir.iter()).any(|d| cmdline.contains(&*d.to_string_lossy()));
        if husk || shim || in_pod || names_ours {
            out.push(format!("process {} ({}, state {}){}", p.pid, p.cmdline(), p.state, if in_pod { " in a pod cgroup of this run" } else { "" }));
        }
    }
    let netns = [Path::new("/run/netns"), Path::new("/var/run/netns")];
    for m in procfs::mount_points()? {
        if baseline.mounts.contains(&m) {
            continue;
        }
        if opts.watch.iter().chain(opts.husk_state_dir.iter()).any(|d| is_below(&m, d)) || netns.iter().any(|d| is_below(&m, d)) {
            out.push(format!("mount {m}"));
        }
    }
    for (dev, file) in procfs::loop_devices()? {
        if !baseline.loops.contains(&(dev.clone(), file.clone())) {
            out.push(format!("loop device {dev} (backing file {file})"));
        }
    }
    if let Some(dir) = &opts.husk_state_dir {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push(format!("husk state {}", e.path().display()));
        }
    }
    // The portmap plugin's per-pod DNAT chains (CNI-DN-<hash>) go with their pods.
    if let Ok(nat) = std::process::Command::new("iptables-save").args(["-t", "nat"]).output() {
        for line in String::from_utf8_lossy(&nat.stdout).lines().filter(|l| l.starts_with("-A CNI-DN-")) {
            out.push(format!("port mapping rule left: {line}"));
        }
    }
    if let Some(br) = &opts.bridge {
        let brif = PathBuf::from(format!("/sys/class/net/{br}/brif"));
        for e in std::fs::read_dir(&brif).into_iter().flatten().flatten() {
            out.push(format!("interface {} still on the CNI bridge {br}", e.file_name().to_string_lossy()));
        }
    }
    Ok(out)
}

/// Removes the handler's shared pod, then checks that CRI lists no pod of this handler and the
/// kernel shows nothing of any (waiting for asynchronous exits up to the wait time).
pub async fn leak_check(ctx: &Ctx, baseline: &Baseline) -> Result<()> {
    let cri = ctx.cri();
    let mut errs = Vec::new();
    if let Some(pod) = ctx.take_main_pod().await {
        if let Err(e) = cri.stop_pod(&pod.id).await {
            errs.push(format!("removing the shared pod: {e}"));
        }
        if let Err(e) = cri.remove_pod(&pod.id).await {
            errs.push(format!("removing the shared pod: {e}"));
        }
    }
    let filter = PodSandboxFilter { label_selector: [("husk-cri/run".to_string(), format!("husk-cri-{}", ctx.opts.run))].into(), ..Default::default() };
    for p in cri.list_pods(filter).await? {
        let name = p.metadata.map(|m| m.name).unwrap_or_default();
        if name.ends_with(&format!("-{}", ctx.handler)) {
            errs.push(format!("CRI still lists pod {name} ({})", p.id));
        }
    }
    let deadline = Instant::now() + ctx.opts.wait.min(Duration::from_secs(60));
    loop {
        let found = findings(&ctx.opts, baseline)?;
        if found.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            errs.extend(found);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !errs.is_empty() {
        bail!("{} leftovers: {}", errs.len(), errs.join("; "));
    }
    Ok(())
}
