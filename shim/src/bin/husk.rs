//! `husk`: the user CLI (`husk check`, `husk ps`, `husk logs <id>`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use husk_config::HuskConfig;
use husk_shim::cli;

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("husk: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run() -> anyhow::Result<i32> {
    let mut args = std::env::args().skip(1);
    let mut config: Option<PathBuf> = None;
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config = Some(args.next().context("--config needs a file")?.into()),
            "-h" | "--help" => {
                print!("{}", cli::USAGE);
                return Ok(0);
            }
            _ => rest.push(a),
        }
    }
    let config = config.unwrap_or_else(HuskConfig::default_path);
    let mut out = std::io::stdout().lock();
    match rest.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["check"] => {
            let checks = cli::check(&config);
            for c in &checks {
                println!("{:<4} {:<10} {}", if c.ok { "ok" } else { "FAIL" }, c.name, c.detail);
            }
            let ready = checks.iter().all(|c| c.ok);
            println!("{}", if ready { "this host can run husk" } else { "this host cannot run husk (see FAIL lines)" });
            Ok(if ready { 0 } else { 1 })
        }
        ["ps"] => {
            let cfg = HuskConfig::load(&config).with_context(|| format!("loading {}", config.display()))?;
            cli::ps(&cfg.shim, &mut out)?;
            Ok(0)
        }
        ["logs", id] => {
            let cfg = HuskConfig::load(&config).with_context(|| format!("loading {}", config.display()))?;
            cli::logs(&cfg.shim.state_dir, id, &mut out)?;
            Ok(0)
        }
        _ => bail!("bad arguments {rest:?}\n{}", cli::USAGE),
    }
}
