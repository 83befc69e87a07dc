//! The demo behind `cargo xtask demo` (run as root, `LB_AGENT_BIN` set):
//! builds the namespace topology, starts test servers and decap on the
//! backends, runs `lb-agent run` with `examples/demo.toml` (its `bpffs_dir`
//! replaced by the run's own bpffs mount), sends requests to every VIP of the
//! config (`web` is health-checked), prints which backend answered how often
//! and the agent's counters (with each checked backend's state),
//! and tears everything down (also on Ctrl-C / SIGTERM). Exits 1 if any
//! request failed, 2 if the demo could not run.
//!
//! `lb-demo [--config FILE] [--requests N] [--backends N] [--keep-logs]`

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use lb_tests::agent::workspace_root;
use lb_tests::client::ClientRecord;
use lb_tests::lab::{Lab, LabBins};
use lb_tests::topology::{self, install_signal_cleanup};

const USAGE: &str = "usage: lb-demo [--config FILE] [--requests N] [--backends N] [--keep-logs]";

struct Opts {
    config: PathBuf,
    requests: u32,
    backends: usize,
    keep_logs: bool,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        config: workspace_root().join("examples/demo.toml"),
        requests: 30,
        backends: 3,
        keep_logs: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--config" => {
                let p = PathBuf::from(val()?);
                o.config = if p.is_absolute() || p.exists() {
                    p
                } else {
                    workspace_root().join(p)
                };
            }
            "--requests" => o.requests = val()?.parse().context("--requests")?,
            "--backends" => o.backends = val()?.parse().context("--backends")?,
            "--keep-logs" => o.keep_logs = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a:?}\n{USAGE}"),
        }
    }
    if !(1..=10_000).contains(&o.requests) {
        bail!("--requests must be in 1..=10000");
    }
    Ok(o)
}

fn say(msg: &str) {
    println!("[demo] {msg}");
}

struct VipResult {
    label: String,
    records: Vec<ClientRecord>,
    lookup_matches: Option<usize>,
}

fn run(o: &Opts) -> Result<bool> {
    if !topology::is_root() {
        bail!("lb-demo needs root (network namespaces, XDP): run it through `cargo xtask demo`");
    }
    let text = std::fs::read_to_string(&o.config)
        .with_context(|| format!("cannot read {}", o.config.display()))?;
    let config: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", o.config.display()))?;
    let bins = LabBins::beside_current_exe()?;
    say(&format!(
        "agent {}, config {}",
        bins.agent.display(),
        o.config.display()
    ));
    let lab = Lab::start(bins, o.backends, config, &say)?;
    if o.keep_logs {
        lab.topo.keep_logs();
    }
    let result = demo(o, &lab);
    if !matches!(result, Ok(true)) {
        lab.topo.keep_logs();
    }
    say("tearing down...");
    let problems = lab.topo.cleanup();
    drop(lab);
    if !problems.is_empty() {
        bail!("teardown problems: {}", problems.join("; "));
    }
    let all_ok = result?;
    say(if all_ok {
        "done: every request was answered"
    } else {
        "done: some requests FAILED"
    });
    Ok(all_ok)
}

fn demo(o: &Opts, lab: &Lab) -> Result<bool> {
    if lab.vips.is_empty() {
        bail!("{} defines no [[vip]]", o.config.display());
    }

    let mut results = Vec::new();
    for (i, vip) in lab.vips.iter().enumerate() {
        let target = vip.target();
        let label = match health_check(&lab.config, &vip.name) {
            Some(check) => format!("{} {}/{} ({check} check)", vip.name, target, vip.protocol),
            None => format!("{} {}/{}", vip.name, target, vip.protocol),
        };
        say(&format!(
            "sending {} {} requests to {label}...",
            o.requests, vip.protocol
        ));
        // Fixed source ports, so each answer can be checked against `lb-agent lookup`.
        let base = 20_000 + 1_000 * (i as u16 % 40);
        let records = lab.client(vip.protocol, target, o.requests, Some(base), 2000)?;
        let failed = records.iter().filter(|r| !r.ok).count();
        if failed > 0 {
            say(&format!(
                "  {failed} requests failed, e.g. {}",
                records
                    .iter()
                    .find(|r| !r.ok)
                    .and_then(|r| r.error.clone())
                    .unwrap_or_default()
            ));
        }
        let mut matches = Some(0);
        for r in records.iter().filter(|r| r.ok) {
            let Some(src) = r.src_addr() else { continue };
            match lab.predicted_backend(vip.address, target.port(), vip.protocol, src) {
                Ok(b) if r.backend.as_deref() == Some(b.as_str()) => {
                    matches = matches.map(|m| m + 1)
                }
                Ok(_) => {}
                Err(e) => {
                    say(&format!("  lb-agent lookup unavailable: {e:#}"));
                    matches = None;
                    break;
                }
            }
        }
        results.push(VipResult {
            label,
            records,
            lookup_matches: matches,
        });
    }
    lab.check_running()?;

    println!();
    let backends = lab.topo.backends().to_vec();
    let width = results
        .iter()
        .map(|r| r.label.len())
        .max()
        .unwrap_or(10)
        .max(10);
    let mut header = format!("{:width$}", "VIP");
    for b in &backends {
        header += &format!(" {b:>5}");
    }
    header += "  failed  as `lookup` predicted";
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    let mut all_ok = true;
    for r in &results {
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for rec in r.records.iter().filter(|x| x.ok) {
            *per.entry(rec.backend.as_deref().unwrap_or("?"))
                .or_default() += 1;
        }
        let failed = r.records.iter().filter(|x| !x.ok).count();
        all_ok &= failed == 0;
        let mut line = format!("{:width$}", r.label);
        for b in &backends {
            line += &format!(" {:>5}", per.get(b.as_str()).copied().unwrap_or(0));
        }
        let ok = r.records.len() - failed;
        let lookup = r
            .lookup_matches
            .map(|m| format!("{m}/{ok}"))
            .unwrap_or_else(|| "n/a".into());
        line += &format!("  {failed:>6}  {lookup}");
        println!("{line}");
    }
    println!();
    say("lb-agent stats:");
    match lab.stats_output(false) {
        Ok(s) => print!("{s}"),
        Err(e) => say(&format!("lb-agent stats failed: {e:#}")),
    }
    println!();
    Ok(all_ok)
}

/// The `check` of a VIP's `[vip.health]` table, if it has one.
fn health_check(config: &toml::Table, name: &str) -> Option<String> {
    let vips = config.get("vip")?.as_array()?;
    let vip = vips.iter().find(|v| v.get("name").and_then(|n| n.as_str()) == Some(name))?;
    let health = vip.get("health")?.as_table()?;
    Some(health.get("check").and_then(|c| c.as_str()).unwrap_or("tcp").to_string())
}

fn main() {
    install_signal_cleanup();
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(2);
        }
    };
    match run(&o) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("[demo] error: {e:#}");
            std::process::exit(2);
        }
    }
}
