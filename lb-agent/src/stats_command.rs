//! `lb-agent stats`: reads the pinned counters twice, `interval` apart, and
//! prints counters, rates over that window, and health; `--watch` repeats
//! until interrupted (redrawing in place on a terminal, one JSON document per
//! line with `--json`).

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::config::Config;
use crate::dataplane::{self, Counters};
use crate::health::{self, report::HealthTable};
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
        return Ok(json_line(config, plan, counters, &table, rates, &previous));
    }
    let mut out = stats::to_text(plan, counters, rates);
    out += &stats::previous_to_text(plan, &previous);
    out += &health::report::to_text(config, plan, &table);
    let drains = crate::control::drains::Drains::read(&config.lb.run_dir, &config.lb.interface)?;
    for d in &drains.drains {
        out += &format!("runtime drain: {} of VIP {:?} (weight {} in the file; `lb-agent undrain` to undo)\n", d.backend, d.vip, d.file_weight);
    }
    if let Some(r) = rates {
        out += &format!("\nrates over the last {:.1} s\n", r.window.as_secs_f64());
    }
    Ok(out)
}

/// The `--json` document: counters, health and (over a window) rates, on one line.
fn json_line(
    config: &Config,
    plan: &Plan,
    counters: &Counters,
    table: &HealthTable,
    rates: Option<&Rates>,
    previous: &std::collections::BTreeMap<u32, u32>,
) -> String {
    let mut doc = stats::to_json(plan, counters);
    doc.add_previous(plan, previous);
    doc.add_health(&health::report::vip_health(config, plan, table, None));
    if let Some(r) = rates {
        doc.add_rates(r);
    }
    format!("{doc}\n")
}

pub fn run(file: &Config, opts: &StatsOptions) -> Result<()> {
    // The weights in effect: the file's with the runtime drains (`lb-agent drain`).
    let config = &crate::control::drains::Drains::read(&file.lb.run_dir, &file.lb.interface)?.apply(file).config;
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
        let mut text = render(config, &plan, &counters, rates.as_ref(), opts.json)?;
        if !opts.json {
            text.push_str(&source_line(config));
        }
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

/// The config source's line (empty without `[source]`), from the report the agent keeps in its run directory.
fn source_line(config: &Config) -> String {
    let Some(source) = &config.source else { return String::new() };
    match crate::source::status::read_report(&config.lb.run_dir) {
        Some(r) => format!(
            "config source  etcd {} revision {} applied, {}{}\n",
            r.key,
            r.applied_revision,
            if r.up { "etcd reachable" } else { "etcd UNREACHABLE (forwarding goes on with this revision)" },
            r.last_error.map(|e| format!("; refused {e}")).unwrap_or_default()
        ),
        None => format!("config source  etcd {}: no report from the agent in {}\n", source.key, config.lb.run_dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lb_common::health::{HEALTH_DOWN, HEALTH_UP, HealthEntry, HealthKey, HealthReason};
    use lb_common::{Counter, Reason, flows::FlowEvent};
    use serde_json::Value;

    use super::*;
    use crate::rates::Rate;
    use crate::test_config::{TestBackend, TestConfig, TestVip};

    /// "web" on two weighted backends and a backup; "dns" on one IPv6 backend.
    fn config() -> Config {
        let web = TestVip::new("web", "192.0.2.10:80")
            .backend(TestBackend::new("198.51.100.11"))
            .backend(TestBackend::new("198.51.100.12").weight(2))
            .backend(TestBackend::new("198.51.100.13").backup());
        let dns = TestVip::new("dns", "[2001:db8::53]:53").backends(["2001:db8::21"]);
        TestConfig::new().ring_size(7).vip(web).vip(dns).parse()
    }

    /// The whole `stats --json` document for known counters, health and
    /// rates: the names, nesting and values operators' scripts read.
    #[test]
    fn json_document_names_and_nesting() {
        let config = config();
        let plan = plan::plan(&config);
        let (web, dns) = (plan.vip("web").unwrap().row as usize, plan.vip("dns").unwrap().row as usize);
        let id = |a: &str| plan.backend_id(a.parse().unwrap()).unwrap();
        let c = |packets, bytes| Counter { packets, bytes };
        // What each VIP sent each backend; the VIP and backend totals are their sums.
        let max_backends = plan.backends.len() as u32 + 1;
        let mut members = vec![Counter::default(); plan.vips.len() * max_backends as usize];
        let mut member = |row: usize, a: &str, count| members[lb_common::flows::member_index(row as u32, id(a), max_backends) as usize] = count;
        member(web, "198.51.100.11", c(150, 6000));
        member(web, "198.51.100.12", c(50, 3000));
        member(dns, "2001:db8::21", c(7, 700));
        let mut counters = Counters { reasons: vec![Counter::default(); Reason::COUNT as usize], ..Default::default() }.with_members(members, max_backends);
        counters.reasons[Reason::Forwarded as usize] = c(207, 9700);
        counters.reasons[Reason::NoVip as usize] = c(3, 180);
        let entry = |state, reason: HealthReason, since_unix_ms, fails, passes, changes, http_status| HealthEntry {
            since_unix_ms,
            consecutive_fails: fails,
            consecutive_passes: passes,
            changes,
            http_status,
            state,
            reason: reason as u8,
        };
        let row = |r: usize| r as u32;
        let table: HealthTable = [
            (HealthKey { row: row(web), backend_id: id("198.51.100.11") }, entry(HEALTH_UP, HealthReason::Passed, 1000, 0, 3, 1, 200)),
            (HealthKey { row: row(web), backend_id: id("198.51.100.12") }, entry(HEALTH_DOWN, HealthReason::HttpStatus, 2000, 3, 0, 2, 503)),
        ]
        .into_iter()
        .collect();
        let r = |packets_per_second, bytes_per_second| Rate { packets_per_second, bytes_per_second };
        let mut rates = Rates { window: Duration::from_millis(500), vips: vec![Rate::default(); plan.vips.len()], backends: vec![Rate::default(); plan.backends.len() + 1] };
        rates.vips[web] = r(400.0, 18000.0);
        rates.backends[id("198.51.100.11") as usize] = r(300.0, 12000.0);

        let line = json_line(&config, &plan, &counters, &table, Some(&rates), &Default::default());
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1, "one document per line: {line:?}");
        let mut doc: Value = serde_json::from_str(&line).unwrap();
        let reasons = doc.as_object_mut().unwrap().remove("reasons").unwrap();
        let flows = doc.as_object_mut().unwrap().remove("flows").unwrap();
        let expected: Value = serde_json::from_str(EXPECTED).unwrap();
        assert_eq!(doc, expected, "got {doc:#}");

        // Every outcome and flow-table counter by its label, zero or not.
        assert_eq!(reasons.as_object().unwrap().len(), Reason::ALL.len(), "{reasons}");
        for reason in Reason::ALL {
            let Counter { packets, bytes } = counters.reason(*reason);
            assert_eq!(reasons[reason.label()], serde_json::json!({"packets": packets, "bytes": bytes}), "{}", reason.label());
        }
        assert_eq!(reasons["forwarded"]["packets"], 207);
        assert_eq!(flows.as_object().unwrap().len(), FlowEvent::COUNTERS.len(), "{flows}");
        for event in FlowEvent::COUNTERS {
            assert_eq!(flows[event.label()], serde_json::json!({"packets": 0, "bytes": 0}), "{}", event.label());
        }

        // Without a window: no rates; without health entries: no check fields.
        let line = json_line(&config, &plan, &counters, &HealthTable::new(), None, &Default::default());
        let doc: Value = serde_json::from_str(&line).unwrap();
        assert!(doc.get("window_seconds").is_none(), "{doc}");
        let member = &doc["vips"][0]["backends"][0];
        let keys: Vec<&str> = member.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["address", "backup", "bytes", "packets", "share", "weight"], "{doc:#}");
        assert!(doc["vips"][0].get("packets_per_second").is_none(), "{doc:#}");
    }

    /// Web: .11 up, .12 down (HTTP 503), backup .13 unchecked: degraded, .11
    /// owns the whole ring. DNS: its one backend unchecked (counts as up).
    const EXPECTED: &str = r#"{
  "window_seconds": 0.5,
  "vips": [
    {
      "name": "web", "address": "192.0.2.10", "port": 80, "protocol": "tcp",
      "packets": 200, "bytes": 9000, "packets_per_second": 400.0, "bytes_per_second": 18000.0,
      "health": "degraded",
      "backends": [
        {
          "address": "198.51.100.11", "weight": 1, "packets": 150, "bytes": 6000, "backup": false, "share": 1.0,
          "state": "up", "reason": "passed", "since_unix_ms": 1000, "fails": 0, "passes": 3, "changes": 1, "http_status": 200
        },
        {
          "address": "198.51.100.12", "weight": 2, "packets": 50, "bytes": 3000, "backup": false, "share": 0.0,
          "state": "down", "reason": "http_status 503", "since_unix_ms": 2000, "fails": 3, "passes": 0, "changes": 2, "http_status": 503
        },
        { "address": "198.51.100.13", "weight": 1, "packets": 0, "bytes": 0, "backup": true, "share": 0.0 }
      ]
    },
    {
      "name": "dns", "address": "2001:db8::53", "port": 53, "protocol": "tcp",
      "packets": 7, "bytes": 700, "packets_per_second": 0.0, "bytes_per_second": 0.0,
      "health": "up",
      "backends": [
        { "address": "2001:db8::21", "weight": 1, "packets": 7, "bytes": 700, "backup": false, "share": 1.0 }
      ]
    }
  ],
  "backends": [
    { "address": "198.51.100.11", "packets": 150, "bytes": 6000, "packets_per_second": 300.0, "bytes_per_second": 12000.0 },
    { "address": "198.51.100.12", "packets": 50, "bytes": 3000, "packets_per_second": 0.0, "bytes_per_second": 0.0 },
    { "address": "198.51.100.13", "packets": 0, "bytes": 0, "packets_per_second": 0.0, "bytes_per_second": 0.0 },
    { "address": "2001:db8::21", "packets": 7, "bytes": 700, "packets_per_second": 0.0, "bytes_per_second": 0.0 }
  ]
}"#;
}
