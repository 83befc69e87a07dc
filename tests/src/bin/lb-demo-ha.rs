//! The demo behind `cargo xtask demo --ha` (run as root, `LB_AGENT_BIN`
//! set): two LB hosts with BIRD behind a BIRD router (BGP, BFD, ECMP),
//! three health-checked backends; one LB host crashes while connections
//! talk, then one backend fails its health check (see
//! `lb_tests::ha_demo`). Tears everything down (also on Ctrl-C / SIGTERM).
//! Exits 1 if a connection broke or a flow moved that should not have, 2
//! if the demo could not run.
//!
//! `lb-demo-ha [--connections N] [--hold-secs S] [--flows N] [--keep-logs]`

use std::time::Duration;

use anyhow::{Context, Result, bail};
use lb_tests::ha_demo::{self, HaDemoOptions, HaDemoReport};
use lb_tests::lab::LabBins;
use lb_tests::topology::{self, install_signal_cleanup};

const USAGE: &str = "usage: lb-demo-ha [--connections N] [--hold-secs S] [--flows N] [--keep-logs]";

fn parse_args() -> Result<(HaDemoOptions, bool)> {
    let mut o = HaDemoOptions::default();
    let mut keep_logs = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--connections" => o.connections = val()?.parse().context("--connections")?,
            "--hold-secs" => o.hold = Duration::from_secs(val()?.parse().context("--hold-secs")?),
            "--flows" => o.flows = val()?.parse().context("--flows")?,
            "--keep-logs" => keep_logs = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a:?}\n{USAGE}"),
        }
    }
    // Bounded: ports 41000+ and 47000+ must not overlap, and the demo must end.
    if !(1..=500).contains(&o.connections) || !(1..=1000).contains(&o.flows) || !(2..=60).contains(&o.hold.as_secs()) {
        bail!("--connections must be in 1..=500, --flows in 1..=1000, --hold-secs in 2..=60\n{USAGE}");
    }
    Ok((o, keep_logs))
}

fn say(msg: &str) {
    println!("[demo-ha] {msg}");
}

/// Whether the run showed what it should: nothing broken, only the failed backend's flows moved.
fn verdict(report: &HaDemoReport) -> bool {
    let crash_ok = report.crash.iter().all(|c| c.broken == 0);
    let h = &report.health;
    crash_ok && h.moved_from_failed == h.on_failed && h.moved_from_others == 0
}

fn main() {
    install_signal_cleanup();
    let (options, keep_logs) = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(2);
        }
    };
    if !topology::is_root() {
        eprintln!("lb-demo-ha needs root (network namespaces, XDP, BIRD): run it through `cargo xtask demo --ha`");
        std::process::exit(2);
    }
    let report = LabBins::beside_current_exe().and_then(|bins| ha_demo::run(bins, &options, keep_logs, &say));
    match report {
        Ok(report) if verdict(&report) => say("done: no connection broke, and only the failed backend's flows moved"),
        Ok(_) => {
            say("done: something above went wrong (a broken connection or a flow that moved)");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("[demo-ha] error: {e:#}");
            std::process::exit(2);
        }
    }
}
