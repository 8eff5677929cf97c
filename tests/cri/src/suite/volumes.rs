//! Volumes as kubelet passes them (ContainerConfig.mounts): a hostPath directory read-write, a
//! single file read-only, a ConfigMap directory updated by kubelet's atomic `..data` swap, an
//! emptyDir shared by two containers, `/dev/termination-log` read back from the host after the
//! container exits, 100 files created and removed, and two containers appending to one file
//! at once. Every check is made from the host's side as well as the container's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1::ContainerState;

use super::ctx::{text, Ctx, Pod};

/// How soon a host-side change must be visible in the container ("within seconds").
const VISIBLE_WITHIN: Duration = Duration::from_secs(20);
/// Files of the create/remove round.
const MANY: usize = 100;
/// Lines each of the two concurrent writers appends.
const APPENDS: usize = 100;

fn write(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).with_context(|| format!("writing {} on the host", path.display()))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {} on the host", path.display()))
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {} on the host", path.display()))
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link).with_context(|| format!("symlink {} -> {target} on the host", link.display()))
}

/// Files in `dir` on the host.
fn count(dir: &Path) -> Result<usize> {
    Ok(std::fs::read_dir(dir).with_context(|| format!("listing {} on the host", dir.display()))?.count())
}

/// A pod's volume directories the way kubelet lays them out below its root.
struct Volumes {
    host_dir: PathBuf,
    single: PathBuf,
    config_map: PathBuf,
    empty_dir: PathBuf,
    termination_log: PathBuf,
}

/// kubelet's ConfigMap layout: `..<timestamp>/key`, `..data -> ..<timestamp>`, `key -> ..data/key`.
const CM_V1: &str = "..2026_01_01_00_00_00.000000001";
const CM_V2: &str = "..2026_01_01_00_01_00.000000002";

impl Volumes {
    fn lay_out(ctx: &Ctx, pod: &Pod) -> Result<Volumes> {
        let pod_dir = ctx.opts.work.join("kubelet/pods").join(format!("{}-vol", pod.spec.uid));
        let v = Volumes {
            host_dir: ctx.opts.work.join(format!("hostpath-{}", ctx.handler)),
            single: ctx.opts.work.join(format!("single-{}.conf", ctx.handler)),
            config_map: pod_dir.join("volumes/kubernetes.io~configmap/cfg"),
            empty_dir: pod_dir.join("volumes/kubernetes.io~empty-dir/cache"),
            termination_log: pod_dir.join("containers/term/4f2a9c1e"),
        };
        mkdir(&v.host_dir)?;
        write(&v.host_dir.join("in.txt"), "from-host\n")?;
        write(&v.single, "single-file-content\n")?;
        mkdir(&v.config_map.join(CM_V1))?;
        write(&v.config_map.join(CM_V1).join("key"), "value-1\n")?;
        symlink(CM_V1, &v.config_map.join("..data"))?;
        symlink("..data/key", &v.config_map.join("key"))?;
        mkdir(&v.empty_dir)?;
        mkdir(v.termination_log.parent().unwrap_or(Path::new("/")))?;
        write(&v.termination_log, "")?;
        Ok(v)
    }

    /// kubelet's update of a ConfigMap volume: the new version's directory, a `..data_tmp`
    /// symlink to it renamed over `..data` in one step, the old directory removed.
    fn update_config_map(&self) -> Result<()> {
        mkdir(&self.config_map.join(CM_V2))?;
        write(&self.config_map.join(CM_V2).join("key"), "value-2\n")?;
        let tmp = self.config_map.join("..data_tmp");
        symlink(CM_V2, &tmp)?;
        std::fs::rename(&tmp, self.config_map.join("..data")).context("renaming ..data_tmp over ..data on the host")?;
        std::fs::remove_dir_all(self.config_map.join(CM_V1)).context("removing the old ConfigMap version on the host")
    }
}

/// Runs `script` in `c` until its stdout (trimmed) is `want`, for at most `VISIBLE_WITHIN`.
async fn seen_within(ctx: &Ctx, c: &str, script: &str, want: &str, what: &str) -> Result<()> {
    let t = Instant::now();
    loop {
        let r = ctx.exec(c, &["sh", "-c", script], 30).await?;
        let out = text(&r.stdout);
        if out.trim() == want {
            return Ok(());
        }
        if t.elapsed() > VISIBLE_WITHIN {
            bail!(
                "{what}: `{script}` still gives [{}] (stderr [{}]) {} s after the host's change, want [{want}]",
                out.trim(),
                text(&r.stderr).trim(),
                t.elapsed().as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A writer that waits for the other one, then appends APPENDS lines to one file and writes
/// as many files of its own.
fn writer(me: &str, other: &str) -> String {
    format!(
        "touch /data/ready-{me}; i=0; while [ ! -e /data/ready-{other} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
         mkdir -p /data/by-{me}; i=0; while [ $i -lt {APPENDS} ]; do echo \"{me} $i\" >>/data/shared.log; echo $i >/data/by-{me}/f$i; i=$((i+1)); done; echo done-{me}"
    )
}

/// Checks the concurrent writers' output on the host: every line of both, once, intact.
fn check_appends(v: &Volumes) -> Result<()> {
    let log = read(&v.host_dir.join("shared.log"))?;
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort_unstable();
    let mut want: Vec<String> = ["a", "b"].iter().flat_map(|w| (0..APPENDS).map(move |i| format!("{w} {i}"))).collect();
    want.sort_unstable();
    if lines != want {
        let bad: Vec<&&str> = lines.iter().filter(|l| !want.iter().any(|w| w == *l)).take(5).collect();
        bail!(
            "shared.log on the host after two containers appended {APPENDS} lines each at once: {} lines (want {}), lines not written as such: {bad:?}",
            lines.len(),
            want.len()
        );
    }
    for w in ["a", "b"] {
        let dir = v.host_dir.join(format!("by-{w}"));
        let n = count(&dir)?;
        ensure!(n == APPENDS, "{} on the host holds {n} files, writer {w} wrote {APPENDS}", dir.display());
        let last = read(&dir.join(format!("f{}", APPENDS - 1)))?;
        ensure!(last.trim() == (APPENDS - 1).to_string(), "{}/f{} holds [{}]", dir.display(), APPENDS - 1, last.trim());
    }
    Ok(())
}

pub async fn volumes(ctx: &Ctx) -> Result<()> {
    let pod = ctx.main_pod().await?;
    let v = Volumes::lay_out(ctx, &pod)?;

    let mut spec = ctx.sh("vol", "exec sleep 100020");
    spec.mount(&v.host_dir, "/data", false).mount(&v.single, "/etc/single.conf", true).mount(&v.config_map, "/etc/cfg", true).mount(
        &v.empty_dir,
        "/cache",
        false,
    );
    let a = ctx.start(&pod, &spec).await?;
    let mut spec = ctx.sh("vol2", "exec sleep 100021");
    spec.mount(&v.host_dir, "/data", false).mount(&v.empty_dir, "/cache", false);
    let b = ctx.start(&pod, &spec).await?;
    ctx.wait_state(&a, ContainerState::ContainerRunning).await?;
    ctx.wait_state(&b, ContainerState::ContainerRunning).await?;

    // hostPath, read-write: both directions.
    let got = ctx.sh_out(&a, "cat /data/in.txt").await?;
    ensure!(got.trim() == "from-host", "hostPath: /data/in.txt reads [{}], the host wrote [from-host]", got.trim());
    ctx.sh_out(&a, "echo from-container >/data/out.txt").await?;
    let got = read(&v.host_dir.join("out.txt"))?;
    ensure!(got.trim() == "from-container", "hostPath: the container wrote /data/out.txt, the host reads [{}]", got.trim());
    write(&v.host_dir.join("in.txt"), "changed-on-host\n")?;
    seen_within(ctx, &a, "cat /data/in.txt", "changed-on-host", "hostPath host-side change").await?;

    // A single file, read-only: readable, writes refused, the host file untouched.
    let got = ctx.sh_out(&a, "cat /etc/single.conf").await?;
    ensure!(got.trim() == "single-file-content", "single-file volume reads [{}]", got.trim());
    let r = ctx.exec(&a, &["sh", "-c", "echo overwritten >/etc/single.conf"], 30).await?;
    ensure!(
        r.exit_code != 0 && text(&r.stderr).contains("Read-only file system"),
        "writing the read-only single-file volume: exit {}, stderr [{}]",
        r.exit_code,
        text(&r.stderr).trim()
    );
    ensure!(read(&v.single)?.trim() == "single-file-content", "the read-only single-file volume changed on the host");

    // ConfigMap: the key through kubelet's symlinks; the atomic ..data swap seen within seconds.
    let got = ctx.sh_out(&a, "cat /etc/cfg/key").await?;
    ensure!(got.trim() == "value-1", "ConfigMap key reads [{}], want value-1", got.trim());
    v.update_config_map()?;
    seen_within(ctx, &a, "cat /etc/cfg/key", "value-2", "ConfigMap update (..data swap)").await?;
    let link = ctx.sh_out(&a, "readlink /etc/cfg/..data").await?;
    ensure!(link.trim() == CM_V2, "ConfigMap ..data points to [{}] after the update, want {CM_V2}", link.trim());

    // emptyDir: shared by the pod's containers. Under runc it is the host directory; under
    // husk it lives in the guest and the host directory stays empty.
    ctx.sh_out(&a, "echo from-vol >/cache/note").await?;
    let got = ctx.sh_out(&b, "cat /cache/note").await?;
    ensure!(got.trim() == "from-vol", "emptyDir: the second container reads [{}], the first wrote [from-vol]", got.trim());
    let on_host = v.empty_dir.join("note").exists();
    if ctx.is_husk() {
        ensure!(!on_host, "emptyDir: the file reached the host directory {} (husk keeps emptyDir volumes in the guest)", v.empty_dir.display());
    } else {
        ensure!(on_host, "emptyDir: the file is not in the host directory {} under runc", v.empty_dir.display());
    }

    // 100 files created and removed in the container, seen on the host; and the other way.
    let n = MANY;
    ctx.sh_out(&a, &format!("mkdir /data/many && i=0; while [ $i -lt {n} ]; do echo $i >/data/many/f$i; i=$((i+1)); done")).await?;
    let many = v.host_dir.join("many");
    ensure!(count(&many)? == n, "the container created {n} files, the host sees {}", count(&many)?);
    ensure!(read(&many.join("f57"))?.trim() == "57", "many/f57 on the host holds the wrong content");
    ctx.sh_out(&a, "rm /data/many/f*").await?;
    ensure!(count(&many)? == 0, "the container removed {n} files, the host still sees {}", count(&many)?);
    for i in 0..n {
        write(&many.join(format!("h{i}")), &format!("{i}\n"))?;
    }
    seen_within(ctx, &a, "ls /data/many | wc -l", &n.to_string(), "files created on the host").await?;
    for i in 0..n {
        std::fs::remove_file(many.join(format!("h{i}"))).context("removing a file on the host")?;
    }
    seen_within(ctx, &a, "ls /data/many | wc -l", "0", "files removed on the host").await?;

    // Two containers of the pod write the same volume at once.
    let (wa, wb) = (writer("a", "b"), writer("b", "a"));
    let (cmd_a, cmd_b) = (["sh", "-c", wa.as_str()], ["sh", "-c", wb.as_str()]);
    let (ra, rb) = tokio::join!(ctx.exec(&a, &cmd_a, 240), ctx.exec(&b, &cmd_b, 240));
    for (w, r) in [("a", ra?), ("b", rb?)] {
        ensure!(
            r.exit_code == 0 && text(&r.stdout).trim() == format!("done-{w}"),
            "concurrent writer {w}: exit {}, stdout [{}], stderr [{}]",
            r.exit_code,
            text(&r.stdout).trim(),
            text(&r.stderr).trim()
        );
    }
    check_appends(&v)?;

    // /dev/termination-log: the container writes its message and exits; kubelet reads the
    // host file afterwards.
    let mut spec = ctx.sh("term", "printf 'terminated: disk full' >/dev/termination-log; exit 3");
    spec.mount(&v.termination_log, "/dev/termination-log", false);
    let t = ctx.start(&pod, &spec).await?;
    let st = ctx.wait_state(&t, ContainerState::ContainerExited).await?;
    ensure!(st.exit_code == 3, "the termination-log container exited {}, want 3 ({})", st.exit_code, st.message);
    let msg = read(&v.termination_log)?;
    ensure!(msg == "terminated: disk full", "/dev/termination-log on the host holds [{msg}] after the container exited, want [terminated: disk full]");
    Ok(())
}
