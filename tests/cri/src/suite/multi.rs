//! Several containers in one pod: shared network (localhost) and IPC, a PID namespace each,
//! one shim (and for husk one VM) for the whole pod.

use std::collections::HashSet;

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::ContainerState;

use super::ctx::{describe, Ctx, Pod};

/// One shim process serves the pod and its containers; with husk, exactly one husk-vmm runs
/// below it (counted in /proc).
pub fn one_shim_one_vm(ctx: &Ctx, pod: &Pod, containers: &[&str]) -> Result<()> {
    let mut ids = vec![pod.id.as_str()];
    ids.extend_from_slice(containers);
    let shims = ctx.shims_for(&ids)?;
    ensure!(shims.len() == 1, "want one shim process for the pod and its {} containers, /proc shows {}: {}", containers.len(), shims.len(), describe(&shims));
    if ctx.is_husk() {
        let vmms = ctx.vmms_for(&ids)?;
        ensure!(vmms.len() == 1, "want one husk-vmm for the pod and its {} containers, /proc shows {}: {}", containers.len(), vmms.len(), describe(&vmms));
    }
    Ok(())
}

/// The namespaces a process of the container is in: (net, ipc, uts, pid) as /proc shows them.
async fn namespaces(ctx: &Ctx, c: &str) -> Result<[String; 4]> {
    let out = ctx.sh_out(c, "for n in net ipc uts pid; do readlink /proc/self/ns/$n; done").await?;
    let v: Vec<String> = out.lines().map(str::to_string).collect();
    v.try_into().map_err(|v| anyhow::anyhow!("readlink of 4 namespaces in {c} gave {v:?}"))
}

pub async fn multi_container(ctx: &Ctx) -> Result<()> {
    let pod = ctx.main_pod().await?;
    let web = ctx.start(&pod, &ctx.sh("web", "mkdir -p /tmp/www && echo pong > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www")).await?;
    let client = ctx.start(&pod, &ctx.sh("client", "exec sleep 100004")).await?;
    ctx.wait_state(&web, ContainerState::ContainerRunning).await?;
    ctx.wait_state(&client, ContainerState::ContainerRunning).await?;
    ctx.sh_until(&client, "wget -qO- http://127.0.0.1:8080/index.html", |o| o.trim() == "pong")
        .await
        .context("two containers: the client reaching the web container on 127.0.0.1:8080")?;
    one_shim_one_vm(ctx, &pod, &[&web, &client]).context("two containers")?;

    let third = ctx.start(&pod, &ctx.sh("third", "exec sleep 100005")).await?;
    ctx.wait_state(&third, ContainerState::ContainerRunning).await?;
    let token = format!("ipc-{}", ctx.opts.run);
    ctx.sh_out(&third, &format!("echo {token} >/dev/shm/husk-cri-ipc")).await?;
    let seen = ctx.sh_out(&client, "cat /dev/shm/husk-cri-ipc").await.context("IPC: /dev/shm written by the third container, read by the client")?;
    ensure!(seen.trim() == token, "IPC: the client reads [{}] from /dev/shm, the third container wrote [{token}]", seen.trim());
    ctx.sh_out(&third, "rm /dev/shm/husk-cri-ipc").await?;

    let all = [("web", &web), ("client", &client), ("third", &third)];
    let mut ns = Vec::new();
    for (name, c) in all {
        ns.push((name, namespaces(ctx, c).await?));
    }
    for (i, what) in ["network", "IPC", "UTS"].iter().enumerate() {
        let set: HashSet<&String> = ns.iter().map(|(_, n)| &n[i]).collect();
        ensure!(set.len() == 1, "the containers are not in one {what} namespace: {:?}", ns.iter().map(|(c, n)| (c, &n[i])).collect::<Vec<_>>());
    }
    let pids: HashSet<&String> = ns.iter().map(|(_, n)| &n[3]).collect();
    ensure!(pids.len() == 3, "the containers do not each have their own PID namespace: {:?}", ns.iter().map(|(c, n)| (c, &n[3])).collect::<Vec<_>>());

    // Each container's ps shows its own processes only; its PID 1 is its own command.
    let own = [("web", &web, "httpd"), ("client", &client, "sleep 100004"), ("third", &third, "sleep 100005")];
    for (name, c, mine) in own {
        let ps = ctx.sh_out(c, "ps -o pid,args").await?;
        ensure!(ps.contains(mine), "`ps` in {name} does not show its own {mine}:\n{ps}");
        for (other, _, theirs) in own.iter().filter(|o| o.0 != name) {
            ensure!(!ps.contains(theirs), "`ps` in {name} shows {other}'s process {theirs}:\n{ps}");
        }
        let init = ctx.sh_out(c, "tr '\\0' ' ' </proc/1/cmdline").await?;
        ensure!(init.contains(mine), "PID 1 in {name} runs [{}], want its own command ({mine})", init.trim());
    }
    one_shim_one_vm(ctx, &pod, &[&web, &client, &third]).context("three containers")?;
    Ok(())
}
