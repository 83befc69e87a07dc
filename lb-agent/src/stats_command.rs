//! `lb-agent stats`: reads the pinned counters twice, `interval` apart, and
//! prints counters, rates over that window, and health; `--watch` repeats
//! until interrupted (redrawing in place on a terminal, one JSON document per
//! line with `--json`).

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::config::Config;
use crate::dataplane::{self, Counters};
use crate::health;
use crate::plan::{self, Plan};
use crate::rates::Rates;
use crate::stats;

/// Default `--interval` in seconds: long enough for a steady rate, short enough to wait for.
pub const DEFAULT_INTERVAL: &str = "1";
/// Longest `--interval` (a typo such as 1000 should not hang the shell for long).
pub const MAX_INTERVAL_SECONDS: f64 = 3600.0;

/// Clears a terminal and moves the cursor home.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

pub struct StatsOptions {
    pub json: bool,
    /// 0 = one read, counters only (no rates).
    pub interval: Duration,
    pub watch: bool,
}

/// Parses `--interval` in seconds (`1`, `0.5`, `0`).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds (e.g. 1, 0.5; 0 = no rates)"))?;
    if !(0.0..=MAX_INTERVAL_SECONDS).contains(&secs) {
        return Err(format!("{s} s is outside 0..={MAX_INTERVAL_SECONDS} s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn read(config: &Config) -> Result<(Counters, Instant)> {
    Ok((dataplane::read_pinned_counters(&config.lb.bpffs_dir)?, Instant::now()))
}

fn render(config: &Config, plan: &Plan, counters: &Counters, rates: Option<&Rates>, json: bool) -> Result<String> {
    let table = health::report::read_pinned(&config.lb.bpffs_dir)?;
    let live = crate::dataplane::live::LiveMaps::open(&config.lb.bpffs_dir)?;
    let previous = crate::dataplane::previous::slots_with_previous_owner(&live, plan)?;
    if json {
        let mut out = stats::to_json(plan, counters);
        stats::add_previous_to_json(&mut out, plan, &previous);
        health::report::add_to_json(&mut out, config, plan, &table);
        if let Some(r) = rates {
            r.add_to_json(&mut out, plan);
        }
        return Ok(format!("{out}\n"));
    }
    let mut out = stats::to_text(plan, counters, rates);
    out += &stats::previous_to_text(plan, &previous);
    out += &health::report::to_text(config, plan, &table);
    if let Some(r) = rates {
        out += &format!("\nrates over the last {:.1} s\n", r.window.as_secs_f64());
    }
    Ok(out)
}

pub fn run(config: &Config, opts: &StatsOptions) -> Result<()> {
    if opts.watch && opts.interval.is_zero() {
        bail!("--watch needs an --interval above 0 (e.g. --interval 1)");
    }
    // The ids and rows the kernel uses (reloads keep ids, so they may differ
    // from a fresh plan's).
    let kept = crate::dataplane::live::LiveMaps::open(&config.lb.bpffs_dir)
        .and_then(|live| crate::dataplane::store::MapStore::kept(&live))
        .context("reading the running balancer's maps (is `lb-agent run` running with this config's bpffs_dir?)")?;
    let plan = plan::plan_keeping(config, &kept).map_err(anyhow::Error::msg)?;
    let redraw = opts.watch && !opts.json && std::io::stdout().is_terminal();
    let mut before = read(config)?;
    loop {
        let (counters, rates) = if opts.interval.is_zero() {
            (before.0.clone(), None)
        } else {
            std::thread::sleep(opts.interval);
            let after = read(config)?;
            let rates = Rates::between(&before.0, &after.0, after.1 - before.1);
            before = after;
            (before.0.clone(), rates)
        };
        let text = render(config, &plan, &counters, rates.as_ref(), opts.json)?;
        let mut stdout = std::io::stdout().lock();
        if redraw {
            write!(stdout, "{CLEAR_SCREEN}")?;
        }
        write!(stdout, "{text}")?;
        stdout.flush()?;
        if !opts.watch {
            return Ok(());
        }
    }
}
