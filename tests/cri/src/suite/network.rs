//! The pod's network seen from the node: HTTP to the pod IP, and a CRI port mapping (the
//! portmap plugin's DNAT) on 127.0.0.1 and on the node's address.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1::{ContainerState, PortMapping, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ctx::Ctx;

/// The body the pod's web server serves.
const BODY: &str = "served-from-the-pod";
/// The port the server listens on in the pod.
const POD_PORT: i32 = 8080;

/// GET / over HTTP/1.0 at `addr`; the response's body.
async fn http_get(addr: &str) -> Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply)).await.with_context(|| format!("reading from {addr}: timed out"))??;
    let text = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    ensure!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{addr} answered [{head}]");
    Ok(body.trim().to_string())
}

/// Retries `http_get` until it serves BODY, within the case's wait.
async fn served(ctx: &Ctx, addr: &str, what: &str) -> Result<()> {
    let deadline = Instant::now() + ctx.opts.wait;
    loop {
        let got = http_get(addr).await;
        match &got {
            Ok(body) if body == BODY => return Ok(()),
            _ if Instant::now() > deadline => bail!("{what} ({addr}): {got:?} after {} s, want body {BODY}", ctx.opts.wait.as_secs()),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The node's address on the pod bridge (its gateway), from `ip`.
fn node_address(bridge: &str) -> Result<String> {
    let out = std::process::Command::new("ip").args(["-o", "-4", "addr", "show", "dev", bridge]).output().context("running ip")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .with_context(|| format!("no IPv4 address on the pod bridge {bridge}: [{}]", text.trim()))
}

pub async fn pod_network(ctx: &Ctx) -> Result<()> {
    let Some(bridge) = ctx.opts.bridge.clone() else {
        return Err(super::Skip("no pod bridge given (--bridge)".into()).into());
    };
    let mut spec = ctx.pod_spec("net");
    // A host port per handler: the handlers' pods never hold it at the same time anyway.
    let host_port = if ctx.is_husk() { 30081 } else { 30080 };
    spec.port_mappings = vec![PortMapping { protocol: Protocol::Tcp as i32, container_port: POD_PORT, host_port, host_ip: String::new() }];
    let pod = ctx.run_pod(spec, false).await?;
    let ip = ctx.cri().pod_status(&pod.id).await?.network.map(|n| n.ip).unwrap_or_default();
    ensure!(!ip.is_empty(), "PodSandboxStatus has no pod IP");
    let script = format!("mkdir -p /tmp/www && echo {BODY} >/tmp/www/index.html && exec httpd -f -p 0.0.0.0:{POD_PORT} -h /tmp/www");
    let web = ctx.start(&pod, &ctx.sh("web", &script)).await?;
    ctx.wait_state(&web, ContainerState::ContainerRunning).await?;
    served(ctx, &format!("{ip}:{POD_PORT}"), "HTTP from the node to the pod IP").await?;
    served(ctx, &format!("127.0.0.1:{host_port}"), "the port mapping on 127.0.0.1").await?;
    let node = node_address(&bridge)?;
    served(ctx, &format!("{node}:{host_port}"), "the port mapping on the node's address").await?;
    Ok(())
}
