//! Security context basics (user and group, read-only rootfs, capabilities) and the memory
//! limit's OOM kill.

use anyhow::{ensure, Result};
use k8s_cri::v1::ContainerState;

use super::ctx::{text, Ctx};

/// containerd's default capability set for unprivileged containers (Docker's): CHOWN,
/// DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW,
/// SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP.
const DEFAULT_CAPS: u64 = 0xa804_25fb;
const CAP_KILL: u64 = 1 << 5;
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
const CAP_NET_ADMIN: u64 = 1 << 12;

/// CapEff of PID 1 and of an exec'd process of the container.
async fn cap_eff(ctx: &Ctx, c: &str) -> Result<(u64, u64)> {
    let out = ctx.sh_out(c, "grep ^CapEff: /proc/1/status /proc/self/status").await?;
    let mut v = Vec::new();
    for l in out.lines() {
        let hex = l.rsplit(['\t', ' ']).next().unwrap_or_default();
        v.push(u64::from_str_radix(hex, 16).map_err(|e| anyhow::anyhow!("CapEff line [{l}] in {c}: {e}"))?);
    }
    ensure!(v.len() == 2, "want CapEff of /proc/1 and /proc/self in {c}, got [{}]", out.trim());
    Ok((v[0], v[1]))
}

/// run_as_user / run_as_group: the container's init and its execs run as 1000:1000 with no
/// effective capabilities.
pub async fn run_as_user(ctx: &Ctx) -> Result<()> {
    let pod = ctx.main_pod().await?;
    let mut spec = ctx.sh("user", "exec sleep 100006");
    spec.user = Some((1000, 1000));
    let c = ctx.start(&pod, &spec).await?;
    ctx.wait_state(&c, ContainerState::ContainerRunning).await?;
    let status = ctx.sh_out(&c, "grep -E '^(Uid|Gid):' /proc/1/status").await?;
    let ids: Vec<Vec<&str>> = status.lines().map(|l| l.split_whitespace().skip(1).collect()).collect();
    ensure!(ids == [["1000"; 4], ["1000"; 4]], "the container's PID 1 runs with [{}], want uid and gid 1000", status.trim());
    let id = ctx.sh_out(&c, "id -u; id -g").await?;
    ensure!(id.split_whitespace().collect::<Vec<_>>() == ["1000", "1000"], "an exec in the container runs as [{}], want 1000 1000", id.trim());
    let (init, exec) = cap_eff(ctx, &c).await?;
    ensure!(init == 0 && exec == 0, "a non-root container has effective capabilities: PID 1 {init:#x}, exec {exec:#x}");
    Ok(())
}

/// readonly_rootfs: writing to / fails with EROFS; the same write works in a writable container.
pub async fn readonly_rootfs(ctx: &Ctx) -> Result<()> {
    let pod = ctx.main_pod().await?;
    let mut spec = ctx.sh("ro", "exec sleep 100007");
    spec.readonly_rootfs = true;
    let ro = ctx.start(&pod, &spec).await?;
    let rw = ctx.start(&pod, &ctx.sh("rw", "exec sleep 100007")).await?;
    ctx.wait_state(&ro, ContainerState::ContainerRunning).await?;
    ctx.wait_state(&rw, ContainerState::ContainerRunning).await?;
    let r = ctx.exec(&ro, &["touch", "/ro-probe"], 30).await?;
    ensure!(
        r.exit_code != 0 && text(&r.stderr).contains("Read-only file system"),
        "touch /ro-probe in a read-only rootfs: exit {}, stderr [{}]",
        r.exit_code,
        text(&r.stderr).trim()
    );
    let r = ctx.exec(&rw, &["touch", "/rw-probe"], 30).await?;
    ensure!(r.exit_code == 0, "touch /rw-probe in a writable rootfs: exit {}, stderr [{}]", r.exit_code, text(&r.stderr).trim());
    Ok(())
}

/// privileged=false: the default set; an added capability and a dropped one; drop ALL + one.
pub async fn capabilities(ctx: &Ctx) -> Result<()> {
    let pod = ctx.main_pod().await?;
    let default = ctx.start(&pod, &ctx.sh("capdef", "exec sleep 100008")).await?;
    let mut spec = ctx.sh("capadd", "exec sleep 100008");
    spec.add_caps = vec!["NET_ADMIN".into()];
    spec.drop_caps = vec!["KILL".into()];
    let added = ctx.start(&pod, &spec).await?;
    let mut spec = ctx.sh("capmin", "exec sleep 100008");
    spec.add_caps = vec!["NET_BIND_SERVICE".into()];
    spec.drop_caps = vec!["ALL".into()];
    let minimal = ctx.start(&pod, &spec).await?;
    let cases = [
        ("the default set", &default, DEFAULT_CAPS),
        ("NET_ADMIN added, KILL dropped", &added, (DEFAULT_CAPS | CAP_NET_ADMIN) & !CAP_KILL),
        ("ALL dropped, NET_BIND_SERVICE added", &minimal, CAP_NET_BIND_SERVICE),
    ];
    for (what, c, want) in cases {
        ctx.wait_state(c, ContainerState::ContainerRunning).await?;
        let (init, exec) = cap_eff(ctx, c).await?;
        ensure!(init == want && exec == want, "{what}: CapEff of PID 1 {init:#x}, of an exec {exec:#x}, want {want:#x}");
    }
    Ok(())
}

/// A container with a 32 MiB memory limit that allocates 64 MiB ends with 137 "OOMKilled".
pub async fn oom(ctx: &Ctx) -> Result<()> {
    let pod = ctx.main_pod().await?;
    // busybox dd allocates its bs-sized buffer and fills it from /dev/zero in one read.
    let mut spec = crate::spec::ContainerSpec::cmd("oom", &ctx.opts.image, &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    spec.memory_limit = Some(32 << 20);
    let c = ctx.start(&pod, &spec).await?;
    let st = ctx.wait_state(&c, ContainerState::ContainerExited).await?;
    ensure!(
        st.exit_code == 137 && st.reason == "OOMKilled",
        "allocating 64 MiB under a 32 MiB limit: exit code {} reason [{}] message [{}], want 137 [OOMKilled]",
        st.exit_code,
        st.reason,
        st.message
    );
    Ok(())
}
