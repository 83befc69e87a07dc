//! The Prometheus text exposition of one scrape, built from plain inputs
//! (counters, the `HEALTH` table, the programmed config), so it is tested
//! without a kernel. Names and labels come from `lb_common::metrics`.

use std::time::Duration;

use anyhow::{Context as _, Result};
use lb_common::metrics::{self as names, labels};
use lb_common::{flows::FlowEvent, Reason};
use prometheus::{Encoder as _, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::config::Config;
use crate::dataplane::Counters;
use crate::health::report::{self, HealthTable};
use crate::plan::Plan;

/// Health check durations, in seconds: a TCP connect on a LAN takes well
/// under a millisecond, a check that times out takes its timeout (up to the
/// 1 h interval limit, but seconds in practice).
pub const CHECK_DURATION_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Where the balancer is attached and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    /// `native`, `generic`, ... (see [`crate::xdp_attach::label`]).
    pub mode: &'static str,
}

/// What the agent has programmed: the config, its plan and which generation
/// of config this is (1 at start, +1 per reload).
#[derive(Clone, Debug)]
pub struct Programmed {
    pub config: Config,
    pub plan: Plan,
    pub fingerprint: String,
    pub generation: u64,
    /// Ring shares per health state, for this config only.
    pub shares: std::sync::Arc<report::ShareCache>,
}

impl Programmed {
    pub fn new(config: Config, plan: Plan, generation: u64) -> Programmed {
        let fingerprint = crate::summary::fingerprint(&config, &plan);
        Programmed { config, plan, fingerprint, generation, shares: std::sync::Arc::default() }
    }
}

/// The live state of one scrape.
pub struct Sample<'a> {
    pub counters: &'a Counters,
    pub health: &'a HealthTable,
    pub now_unix_ms: u64,
}

/// The health check duration histogram (kept across scrapes).
pub fn check_duration_histogram() -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(names::HEALTH_CHECK_DURATION, "Duration of each health check; a check that timed out counts its timeout.")
            .buckets(CHECK_DURATION_BUCKETS.to_vec()),
        &[labels::VIP, labels::BACKEND],
    )
    .expect("constant histogram options are valid")
}

/// Removes the histogram series of (VIP, backend) pairs that `old` checks
/// and `new` does not: the histogram outlives reloads, the pairs do not.
pub fn forget_removed_checks(histogram: &HistogramVec, old: &Config, new: &Config) {
    let pairs = |c: &Config| -> std::collections::BTreeSet<(String, String)> {
        c.vips.iter().flat_map(|v| v.backends.iter().map(move |b| (v.name.clone(), b.address.to_string()))).collect()
    };
    let kept = pairs(new);
    for (vip, backend) in pairs(old).difference(&kept) {
        // Absent when the pair was never checked: nothing to remove.
        let _ = histogram.remove_label_values(&[vip, backend]);
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label_names: &[&str]) -> Result<IntCounterVec> {
    let m = IntCounterVec::new(Opts::new(name, help), label_names)?;
    registry.register(Box::new(m.clone())).with_context(|| format!("registering {name}"))?;
    Ok(m)
}

fn int_gauge_vec(registry: &Registry, name: &str, help: &str, label_names: &[&str]) -> Result<IntGaugeVec> {
    let m = IntGaugeVec::new(Opts::new(name, help), label_names)?;
    registry.register(Box::new(m.clone())).with_context(|| format!("registering {name}"))?;
    Ok(m)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, label_names: &[&str]) -> Result<GaugeVec> {
    let m = GaugeVec::new(Opts::new(name, help), label_names)?;
    registry.register(Box::new(m.clone())).with_context(|| format!("registering {name}"))?;
    Ok(m)
}

fn int_gauge(registry: &Registry, name: &str, help: &str, value: i64) -> Result<()> {
    let m = IntGauge::new(name, help)?;
    m.set(value);
    registry.register(Box::new(m)).with_context(|| format!("registering {name}"))
}

/// Renders every metric. Counters are absolute values read from the kernel
/// (already summed over CPUs), so a fresh registry per scrape holds them.
pub fn encode(programmed: &Programmed, attachment: &Attachment, sample: &Sample, check_duration: &HistogramVec) -> Result<String> {
    let Programmed { config, plan, fingerprint, generation, shares } = programmed;
    let r = Registry::new();

    let vip_packets = counter_vec(&r, names::VIP_PACKETS, "Packets forwarded for the VIP.", &[labels::VIP])?;
    let vip_bytes = counter_vec(&r, names::VIP_BYTES, "Bytes (Ethernet frames, before encapsulation) forwarded for the VIP.", &[labels::VIP])?;
    for vip in &plan.vips {
        let c = sample.counters.vips.get(vip.row as usize).copied().unwrap_or_default();
        vip_packets.with_label_values(&[&vip.name]).inc_by(c.packets);
        vip_bytes.with_label_values(&[&vip.name]).inc_by(c.bytes);
    }

    let backend_packets = counter_vec(&r, names::BACKEND_PACKETS, "Packets sent to the backend, over all VIPs that use it.", &[labels::BACKEND])?;
    let backend_bytes = counter_vec(&r, names::BACKEND_BYTES, "Bytes sent to the backend (before encapsulation), over all VIPs that use it.", &[labels::BACKEND])?;
    for b in &plan.backends {
        let c = sample.counters.backends.get(b.id as usize).copied().unwrap_or_default();
        let address = b.address.to_string();
        backend_packets.with_label_values(&[&address]).inc_by(c.packets);
        backend_bytes.with_label_values(&[&address]).inc_by(c.bytes);
    }

    let reason_labels = [labels::REASON, labels::ACTION];
    let packets = counter_vec(&r, names::PACKETS, "Packets the balancer saw, by why they got their XDP action.", &reason_labels)?;
    let bytes = counter_vec(&r, names::BYTES, "Bytes the balancer saw, by why they got their XDP action.", &reason_labels)?;
    for reason in Reason::ALL {
        let c = sample.counters.reason(*reason);
        let l = [reason.label(), reason.action().label()];
        packets.with_label_values(&l).inc_by(c.packets);
        bytes.with_label_values(&l).inc_by(c.bytes);
    }

    let flows = counter_vec(&r, names::FLOW_LOOKUPS, "Flow table lookups: hit (the recorded backend), miss (new flow or SYN), rehash (recorded backend unusable).", &[labels::RESULT])?;
    for event in FlowEvent::ALL {
        flows.with_label_values(&[event.label()]).inc_by(sample.counters.flow_event(*event).packets);
    }
    int_gauge(&r, names::FLOW_TABLE_SIZE, "Flows the flow table can hold (lb.flow_table_size).", i64::from(config.lb.flow_table_size))?;

    let pair = [labels::VIP, labels::BACKEND];
    let up = int_gauge_vec(&r, names::BACKEND_UP, "1 while the backend serves the VIP as far as health goes (up or not checked), 0 while down.", &pair)?;
    let age = gauge_vec(&r, names::BACKEND_HEALTH_AGE, "Seconds since the backend's health state last changed (or the agent started).", &pair)?;
    let changes = counter_vec(&r, names::BACKEND_HEALTH_CHANGES, "Health state changes of the backend since the agent started.", &pair)?;
    let share = gauge_vec(&r, names::RING_SHARE, "Fraction of the VIP's Maglev ring slots the backend owns now.", &pair)?;
    let vip_up = int_gauge_vec(&r, names::VIP_BACKENDS_UP, "Backends of the VIP that are up; 0 means the VIP has no healthy backend.", &[labels::VIP])?;
    for vh in report::vip_health(config, plan, sample.health, Some(shares)) {
        let mut up_count = 0;
        for m in &vh.members {
            let l = [vh.name.to_string(), m.address.to_string()];
            up.with_label_values(&l).set(i64::from(m.is_up()));
            up_count += i64::from(m.is_up());
            share.with_label_values(&l).set(m.ring_share);
            if let Some(e) = m.entry {
                let since = Duration::from_millis(sample.now_unix_ms.saturating_sub(e.since_unix_ms));
                age.with_label_values(&l).set(since.as_secs_f64());
                changes.with_label_values(&l).inc_by(u64::from(e.changes));
            }
        }
        vip_up.with_label_values(&[vh.name]).set(up_count);
    }
    r.register(Box::new(check_duration.clone())).context("registering the check duration histogram")?;

    int_gauge(&r, names::RING_SIZE, "Slots of every VIP's Maglev ring.", i64::from(plan.ring_size))?;
    int_gauge(&r, names::CONFIG_GENERATION, "Configs programmed since the agent started (1 after start, +1 per reload).", *generation as i64)?;
    let info = |name: &str, help: &str, label_names: &[&str], values: &[&str]| -> Result<()> {
        int_gauge_vec(&r, name, help, label_names)?.with_label_values(values).set(1);
        Ok(())
    };
    info(names::CONFIG_INFO, "Fingerprint of the effective config (as `lb-agent check` prints); LB hosts with equal fingerprints forward every flow alike.", &[labels::FINGERPRINT], &[fingerprint])?;
    info(names::BUILD_INFO, "The agent's version.", &[labels::VERSION], &[env!("CARGO_PKG_VERSION")])?;
    info(
        names::XDP_ATTACH_INFO,
        "Interface the balancer is attached to, and the XDP mode (native, generic, offload).",
        &[labels::INTERFACE, labels::MODE],
        &[&attachment.interface, attachment.mode],
    )?;

    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out).context("encoding the metrics")?;
    String::from_utf8(out).context("the metrics encoder produced invalid UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::health::{HEALTH_DOWN, HEALTH_UP, HealthEntry, HealthKey};
    use lb_common::Counter;

    const CONFIG: &str = r#"
[lb]
interface = "eth0"
ring_size = 1009

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
  [vip.health]
  [[vip.backend]]
  address = "198.51.100.11"
  [[vip.backend]]
  address = "198.51.100.12"
"#;

    /// The value of the sample line `name{labels}` (labels as printed).
    fn value(text: &str, series: &str) -> f64 {
        let line = text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' ')).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn every_metric_with_its_labels_and_values() {
        let config = crate::config::parse(CONFIG, "t.toml").unwrap();
        let plan = crate::plan::plan(&config);
        let programmed = Programmed::new(config, plan.clone(), 3);
        let (b11, b12) = (plan.backend_id("198.51.100.11".parse().unwrap()).unwrap(), plan.backend_id("198.51.100.12".parse().unwrap()).unwrap());
        let mut counters = Counters {
            vips: vec![Counter { packets: 10, bytes: 1000 }],
            backends: vec![Counter::default(); 3],
            reasons: vec![Counter::default(); Reason::COUNT as usize],
            decap: Vec::new(),
            flows: vec![Counter::default(); FlowEvent::COUNT as usize],
        };
        counters.flows[FlowEvent::Hit as usize] = Counter { packets: 42, bytes: 0 };
        counters.backends[b12 as usize] = Counter { packets: 7, bytes: 700 };
        counters.reasons[Reason::NoBackend as usize] = Counter { packets: 2, bytes: 120 };
        let mut health = HealthTable::new();
        health.insert(HealthKey { row: 0, backend_id: b11 }, HealthEntry { state: HEALTH_DOWN, since_unix_ms: 1_000, changes: 1, ..Default::default() });
        health.insert(HealthKey { row: 0, backend_id: b12 }, HealthEntry { state: HEALTH_UP, since_unix_ms: 0, ..Default::default() });
        let attachment = Attachment { interface: "eth0".into(), mode: "generic" };
        let hist = check_duration_histogram();
        hist.with_label_values(&["web", "198.51.100.12"]).observe(0.003);
        let text = encode(&programmed, &attachment, &Sample { counters: &counters, health: &health, now_unix_ms: 3_500 }, &hist).unwrap();

        for name in names::ALL {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
        }
        assert_eq!(value(&text, r#"lb_vip_packets_total{vip="web"}"#), 10.0);
        assert_eq!(value(&text, r#"lb_vip_bytes_total{vip="web"}"#), 1000.0);
        assert_eq!(value(&text, r#"lb_backend_packets_total{backend="198.51.100.12"}"#), 7.0);
        assert_eq!(value(&text, r#"lb_packets_total{action="drop",reason="no_backend"}"#), 2.0);
        assert_eq!(value(&text, r#"lb_backend_up{backend="198.51.100.11",vip="web"}"#), 0.0);
        assert_eq!(value(&text, r#"lb_backend_up{backend="198.51.100.12",vip="web"}"#), 1.0);
        assert_eq!(value(&text, r#"lb_vip_backends_up{vip="web"}"#), 1.0);
        assert_eq!(value(&text, r#"lb_backend_health_state_age_seconds{backend="198.51.100.11",vip="web"}"#), 2.5);
        assert_eq!(value(&text, r#"lb_backend_health_changes_total{backend="198.51.100.11",vip="web"}"#), 1.0);
        // .11 is down: .12 owns the whole ring.
        assert_eq!(value(&text, r#"lb_ring_share_ratio{backend="198.51.100.11",vip="web"}"#), 0.0);
        assert_eq!(value(&text, r#"lb_ring_share_ratio{backend="198.51.100.12",vip="web"}"#), 1.0);
        assert_eq!(value(&text, r#"lb_health_check_duration_seconds_count{backend="198.51.100.12",vip="web"}"#), 1.0);
        assert_eq!(value(&text, "lb_ring_size"), 1009.0);
        assert_eq!(value(&text, r#"lb_flow_table_lookups_total{result="hit"}"#), 42.0);
        assert_eq!(value(&text, "lb_flow_table_size"), f64::from(lb_common::flows::DEFAULT_FLOW_TABLE_SIZE));
        assert_eq!(value(&text, "lb_config_generation"), 3.0);
        assert_eq!(value(&text, &format!(r#"lb_config_info{{fingerprint="{}"}}"#, programmed.fingerprint)), 1.0);
        assert_eq!(value(&text, r#"lb_xdp_attach_info{interface="eth0",mode="generic"}"#), 1.0);
        assert_eq!(value(&text, &format!(r#"lb_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))), 1.0);
    }

    #[test]
    fn a_reload_forgets_the_check_series_of_removed_pairs() {
        let old = crate::config::parse(CONFIG, "t.toml").unwrap();
        let new = crate::config::parse(&CONFIG.replace("  [[vip.backend]]\n  address = \"198.51.100.11\"\n", ""), "t.toml").unwrap();
        assert_eq!(new.vips[0].backends.len(), old.vips[0].backends.len() - 1, "the test removes one backend");
        let hist = check_duration_histogram();
        hist.with_label_values(&["web", "198.51.100.11"]).observe(0.001);
        hist.with_label_values(&["web", "198.51.100.12"]).observe(0.001);
        forget_removed_checks(&hist, &old, &new);
        assert!(hist.remove_label_values(&["web", "198.51.100.11"]).is_err(), "the removed pair's series is gone");
        assert!(hist.remove_label_values(&["web", "198.51.100.12"]).is_ok(), "the kept pair's series stays");
    }
}
