//! Bad input: a pod asking for more CPUs or memory than the VM may have, a container joining
//! another container's PID namespace (NamespaceMode TARGET), bind mount sources that are gone,
//! a unix socket or a device, and a mount over /proc. husk refuses each naming the cause; runc
//! does what runc does (the same refusal where runc refuses, the container runs where runc
//! runs it). After each, the host shows nothing more than before (processes, mounts, husk's
//! state), counted from /proc and /proc/self/mounts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1::{ContainerState, LinuxContainerResources};

use super::ctx::{Ctx, Pod};
use crate::procfs;
use crate::spec::ContainerSpec;

/// What a failed request could leave on the host: the runtime's processes, mounts below
/// containerd's and husk's directories, and the paths in husk's state directory.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    procs: BTreeSet<String>,
    mounts: BTreeSet<String>,
    files: BTreeSet<String>,
}

const RUNTIME_PROCS: [&str; 4] = ["husk-vmm", "virtiofsd", "pause", "runc"];
/// Depth of the state directory listing (sandbox/containers/<id>/<file> is 4).
const STATE_DEPTH: usize = 5;

fn walk(dir: &Path, depth: usize, out: &mut BTreeSet<String>) {
    if depth == 0 {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        out.insert(p.display().to_string());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, depth - 1, out);
        }
    }
}

impl Snapshot {
    fn take(ctx: &Ctx) -> Result<Snapshot> {
        let sock = ctx.socket_str();
        let procs = procfs::processes()?
            .into_iter()
            .filter(|p| p.state != 'Z')
            .filter(|p| RUNTIME_PROCS.contains(&p.name()) || (p.name().starts_with("containerd-shim") && p.arg_after("-address") == Some(sock.as_str())))
            .map(|p| format!("{} {}", p.pid, p.cmdline()))
            .collect();
        let dirs: Vec<&PathBuf> = ctx.opts.watch.iter().chain(ctx.opts.husk_state_dir.iter()).collect();
        let mounts = procfs::mount_points()?.into_iter().filter(|m| dirs.iter().any(|d| Path::new(m).starts_with(d))).collect();
        let mut files = BTreeSet::new();
        if let Some(d) = &ctx.opts.husk_state_dir {
            walk(d, STATE_DEPTH, &mut files);
        }
        Ok(Snapshot { procs, mounts, files })
    }

    /// Waits (for asynchronous exits) until the host shows what `self` showed; else says what
    /// differs.
    async fn expect_same(&self, ctx: &Ctx, after: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = Snapshot::take(ctx)?;
            if now == *self {
                return Ok(());
            }
            if Instant::now() > deadline {
                let diff = |what: &str, a: &BTreeSet<String>, b: &BTreeSet<String>| {
                    let new: Vec<_> = b.difference(a).collect();
                    let gone: Vec<_> = a.difference(b).collect();
                    if new.is_empty() && gone.is_empty() {
                        String::new()
                    } else {
                        format!(" {what}: new {new:?}, gone {gone:?};")
                    }
                };
                bail!(
                    "after {after}, the host differs from before:{}{}{}",
                    diff("processes", &self.procs, &now.procs),
                    diff("mounts", &self.mounts, &now.mounts),
                    diff("husk state", &self.files, &now.files)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// RunPodSandbox of a pod asking for `res`: husk refuses naming `limit` (the configured
/// maximum); runc runs it (the pod is removed again).
async fn oversized_pod(ctx: &Ctx, short: &str, res: LinuxContainerResources, limit: &str) -> Result<()> {
    let before = Snapshot::take(ctx)?;
    let mut spec = ctx.pod_spec(short);
    spec.resources = Some(res);
    let res = ctx.run_pod(spec, true).await;
    match (ctx.is_husk(), res) {
        (true, Err(e)) => {
            let msg = format!("{e:#}");
            ensure!(msg.contains(&format!("{limit} =")), "RunPodSandbox of a pod over {limit} failed without naming the maximum: {msg}");
        }
        (true, Ok(pod)) => {
            remove_pod(ctx, &pod).await;
            bail!("husk ran a pod asking for more than [vm] {limit}");
        }
        (false, r) => {
            let pod = r.with_context(|| format!("runc: a pod over husk's {limit}"))?;
            remove_pod(ctx, &pod).await;
        }
    }
    before.expect_same(ctx, &format!("a pod over {limit}")).await
}

async fn remove_pod(ctx: &Ctx, pod: &Pod) {
    let cri = ctx.cri();
    let _ = cri.stop_pod(&pod.id).await;
    let _ = cri.remove_pod(&pod.id).await;
}

/// Creates and starts `spec` in `pod`: Ok(id) if it runs, Err(message) if CreateContainer or
/// StartContainer refused it (the task is created at StartContainer: that is where a shim
/// sees the spec). A refused container is removed again.
async fn try_start(ctx: &Ctx, pod: &Pod, spec: &ContainerSpec) -> Result<std::result::Result<String, String>> {
    let id = match ctx.create(pod, spec).await {
        Ok(id) => id,
        Err(e) => return Ok(Err(format!("CreateContainer: {e:#}"))),
    };
    if let Err(e) = ctx.cri().start_container(&id).await {
        ctx.cri().remove_container(&id).await?;
        ctx.forget_container(&id);
        return Ok(Err(format!("StartContainer: {e:#}")));
    }
    Ok(Ok(id))
}

/// A container whose only volume is `source` at `dest`.
fn with_volume(ctx: &Ctx, name: &str, source: &Path, dest: &str) -> ContainerSpec {
    let mut spec = ctx.sh(name, "exec sleep 100040");
    spec.mount(source, dest, false);
    spec
}

/// A bind mount source husk cannot share: husk refuses naming the source and `why`; runc runs
/// the container if `runc_runs` (then `check` passes in it), else refuses too.
async fn bad_source(ctx: &Ctx, pod: &Pod, name: &str, source: &Path, why: &str, runc_runs: Option<&str>) -> Result<()> {
    let before = Snapshot::take(ctx)?;
    let spec = with_volume(ctx, name, source, "/mnt/vol");
    let what = format!("a bind mount of {} ({why})", source.display());
    match (ctx.is_husk(), try_start(ctx, pod, &spec).await?) {
        (true, Ok(_)) => bail!("husk started a container with {what}"),
        (true, Err(msg)) => {
            ensure!(msg.contains(&source.display().to_string()) && msg.contains(why), "{what} was refused without naming the source and the cause: {msg}")
        }
        (false, Ok(id)) => {
            let check = runc_runs.with_context(|| format!("runc ran a container with {what}"))?;
            ctx.sh_out(&id, check).await?;
            ctx.cri().stop_container(&id, 0).await?;
            ctx.cri().remove_container(&id).await?;
            ctx.forget_container(&id);
        }
        (false, Err(msg)) => ensure!(runc_runs.is_none(), "runc refused a container with {what}: {msg}"),
    }
    before.expect_same(ctx, &what).await
}

pub async fn bad_input(ctx: &Ctx) -> Result<()> {
    oversized_pod(ctx, "manycpu", LinuxContainerResources { cpu_period: 100_000, cpu_quota: 64 * 100_000, ..Default::default() }, "max_vcpus").await?;
    oversized_pod(ctx, "bigmem", LinuxContainerResources { memory_limit_in_bytes: 64 << 30, ..Default::default() }, "max_memory").await?;

    let pod = ctx.main_pod().await?;

    // NamespaceMode TARGET: runc puts the container in the target's PID namespace; husk refuses.
    let target = ctx.start(&pod, &ctx.sh("target", "exec sleep 100041")).await?;
    ctx.wait_state(&target, ContainerState::ContainerRunning).await?;
    let before = Snapshot::take(ctx)?;
    let mut spec = ctx.sh("peek", "exec sleep 100042");
    spec.pid_target = Some(target.clone());
    match (ctx.is_husk(), try_start(ctx, &pod, &spec).await?) {
        (true, Ok(_)) => bail!("husk started a container in another container's PID namespace (TARGET)"),
        (true, Err(msg)) => ensure!(msg.contains("TARGET"), "a PID namespace TARGET was refused without naming TARGET: {msg}"),
        (false, Ok(id)) => {
            let ps = ctx.sh_out(&id, "ps -o args").await?;
            ensure!(ps.contains("sleep 100041"), "runc: the TARGET container does not see its target's process:\n{ps}");
            ctx.cri().stop_container(&id, 0).await?;
            ctx.cri().remove_container(&id).await?;
            ctx.forget_container(&id);
        }
        (false, Err(msg)) => bail!("runc refused a PID namespace TARGET: {msg}"),
    }
    before.expect_same(ctx, "a PID namespace TARGET").await?;

    // A source gone between CreateContainer and StartContainer (containerd creates a missing
    // host path at CreateContainer, as kubelet's hostPath DirectoryOrCreate would).
    let gone = ctx.opts.work.join(format!("gone-{}", ctx.handler));
    std::fs::create_dir_all(&gone).with_context(|| format!("creating {}", gone.display()))?;
    let before = Snapshot::take(ctx)?;
    let id = ctx.create(&pod, &with_volume(ctx, "gone", &gone, "/mnt/vol")).await?;
    std::fs::remove_dir(&gone).with_context(|| format!("removing {}", gone.display()))?;
    match ctx.cri().start_container(&id).await {
        Ok(()) => bail!("a container whose volume source {} is gone started", gone.display()),
        Err(e) if ctx.is_husk() => {
            let msg = format!("{e:#}");
            ensure!(
                msg.contains(&gone.display().to_string()) && msg.contains("does not exist"),
                "a missing volume source was refused without naming it: {msg}"
            );
        }
        Err(_) => {}
    }
    ctx.cri().remove_container(&id).await?;
    ctx.forget_container(&id);
    before.expect_same(ctx, "a missing volume source").await?;

    let sock = ctx.opts.work.join(format!("vol-{}.sock", ctx.handler));
    let _ = std::fs::remove_file(&sock);
    let _listener = std::os::unix::net::UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    bad_source(ctx, &pod, "sock", &sock, "unix socket", Some("test -S /mnt/vol")).await?;
    bad_source(ctx, &pod, "dev", Path::new("/dev/null"), "character device", Some("test -c /mnt/vol")).await?;

    // A mount over /proc: runc refuses it too.
    let dir = ctx.opts.work.join(format!("procvol-{}", ctx.handler));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let before = Snapshot::take(ctx)?;
    match try_start(ctx, &pod, &with_volume(ctx, "shadow", &dir, "/proc/sys")).await? {
        Ok(_) => bail!("a container with a bind mount over /proc/sys started"),
        Err(msg) if ctx.is_husk() => {
            ensure!(msg.contains("/proc/sys") && msg.contains("may not shadow"), "a bind mount over /proc/sys was refused without naming the path: {msg}")
        }
        Err(_) => {}
    }
    before.expect_same(ctx, "a bind mount over /proc/sys").await
}
