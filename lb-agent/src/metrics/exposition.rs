//! The Prometheus text exposition of one scrape, built from plain inputs
//! (counters, the `HEALTH` table, the programmed config), so it is tested
//! without a kernel. Names and labels come from `lb_common::metrics`.
//! Nothing is built per scrape but the text itself: ring shares are counted
//! from the kernel's rings ([`RingShares`]), the histogram lives across scrapes.

use std::time::Duration;

use anyhow::{Context as _, Result};
use lb_common::metrics::{self as names, labels};
use lb_common::{flows::FlowEvent, Reason};
use lb_common::health::HealthKey;
use lb_common::Counter;
use prometheus::core::Collector as _;
use prometheus::{HistogramOpts, HistogramVec, TextEncoder};

use crate::config::Config;
use crate::dataplane::Counters;
use crate::health::report::{HealthTable, MemberHealth};
use crate::plan::Plan;

use super::shares::RingShares;
use super::text::{Kind, Text};

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
}

impl Programmed {
    pub fn new(config: Config, plan: Plan, generation: u64) -> Programmed {
        let fingerprint = crate::summary::fingerprint(&config, &plan);
        Programmed { config, plan, fingerprint, generation }
    }
}

/// The live state of one scrape.
pub struct Sample<'a> {
    pub counters: &'a Counters,
    pub health: &'a HealthTable,
    /// The kernel's rings, counted.
    pub shares: &'a RingShares,
    /// Flows the flow table holds now ([`super::flow_table::entries`]).
    pub flow_entries: u64,
    pub now_unix_ms: u64,
}

/// Each VIP of the config (in its order) with its members' health and
/// kernel ring shares, each member's address printed once: what the
/// exposition's per-member series and the status page both show.
pub(super) fn members<'a>(config: &'a Config, plan: &Plan, sample: &Sample) -> Vec<(&'a str, Vec<(String, MemberHealth)>)> {
    config
        .vips
        .iter()
        .filter_map(|v| {
            let row = plan.vip(&v.name)?.row;
            let members = v
                .backends
                .iter()
                .map(|b| {
                    let id = plan.backend_id(b.address).unwrap_or(lb_common::NO_BACKEND);
                    let entry = sample.health.get(&HealthKey { row, backend_id: id }).copied();
                    let member = MemberHealth { address: b.address, backup: b.backup, entry, ring_share: sample.shares.share(row, id) };
                    (b.address.to_string(), member)
                })
                .collect();
            Some((v.name.as_str(), members))
        })
        .collect()
}

/// The health check duration histogram, one series per VIP (kept across
/// scrapes). Per VIP rather than per (VIP, backend): at 10,000 members a
/// histogram per member was 17 of the scrape's 22 lines per member; which
/// backend is slow shows in `lb-agent stats` (its last check) and in
/// `lb_backend_health_changes_total` when it times out.
pub fn check_duration_histogram() -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(names::HEALTH_CHECK_DURATION, "Duration of each health check of the VIP's backends; a check that timed out counts its timeout.")
            .buckets(CHECK_DURATION_BUCKETS.to_vec()),
        &[labels::VIP],
    )
    .expect("constant histogram options are valid")
}

/// Removes the histogram series of VIPs that `old` checks and `new` does
/// not: the histogram outlives reloads, the VIPs do not.
pub fn forget_removed_checks(histogram: &HistogramVec, old: &Config, new: &Config) {
    let names = |c: &Config| -> std::collections::BTreeSet<String> { c.vips.iter().map(|v| v.name.clone()).collect() };
    let kept = names(new);
    for vip in names(old).difference(&kept) {
        // Absent when the VIP was never checked: nothing to remove.
        let _ = histogram.remove_label_values(&[vip]);
    }
}

/// Bytes per (VIP, backend) member in a scrape (six samples of about 80
/// bytes): the output buffer is sized once.
const BYTES_PER_MEMBER: usize = 6 * 96;

/// Renders every metric, straight into one string (see [`super::text`]).
/// Counters are absolute values read from the kernel, already summed over CPUs.
pub fn encode(programmed: &Programmed, attachment: &Attachment, sample: &Sample, check_duration: &HistogramVec) -> Result<String> {
    let Programmed { config, plan, fingerprint, generation } = programmed;
    let member_count: usize = plan.vips.iter().map(|v| v.members.len()).sum();
    let mut t = Text::with_capacity(16 * 1024 + member_count * BYTES_PER_MEMBER);

    t.family(names::VIP_PACKETS, Kind::Counter, "Packets forwarded for the VIP.");
    for vip in &plan.vips {
        t.sample(names::VIP_PACKETS, &[(labels::VIP, &vip.name)], sample.counters.vips.get(vip.row as usize).copied().unwrap_or_default().packets);
    }
    t.family(names::VIP_BYTES, Kind::Counter, "Bytes (Ethernet frames, before encapsulation) forwarded for the VIP.");
    for vip in &plan.vips {
        t.sample(names::VIP_BYTES, &[(labels::VIP, &vip.name)], sample.counters.vips.get(vip.row as usize).copied().unwrap_or_default().bytes);
    }

    let backends: Vec<(String, Counter)> =
        plan.backends.iter().map(|b| (b.address.to_string(), sample.counters.backends.get(b.id as usize).copied().unwrap_or_default())).collect();
    t.family(names::BACKEND_PACKETS, Kind::Counter, "Packets sent to the backend, over all VIPs that use it.");
    for (address, c) in &backends {
        t.sample(names::BACKEND_PACKETS, &[(labels::BACKEND, address)], c.packets);
    }
    t.family(names::BACKEND_BYTES, Kind::Counter, "Bytes sent to the backend (before encapsulation), over all VIPs that use it.");
    for (address, c) in &backends {
        t.sample(names::BACKEND_BYTES, &[(labels::BACKEND, address)], c.bytes);
    }

    t.family(names::PACKETS, Kind::Counter, "Packets the balancer saw, by why they got their XDP action.");
    for reason in Reason::ALL {
        t.sample(names::PACKETS, &[(labels::ACTION, reason.action().label()), (labels::REASON, reason.label())], sample.counters.reason(*reason).packets);
    }
    t.family(names::BYTES, Kind::Counter, "Bytes the balancer saw, by why they got their XDP action.");
    for reason in Reason::ALL {
        t.sample(names::BYTES, &[(labels::ACTION, reason.action().label()), (labels::REASON, reason.label())], sample.counters.reason(*reason).bytes);
    }

    t.family(names::FLOW_LOOKUPS, Kind::Counter, "Flow table lookups: hit (the recorded backend), miss (new flow or SYN), rehash (recorded backend unusable).");
    for event in FlowEvent::ALL {
        t.sample(names::FLOW_LOOKUPS, &[(labels::RESULT, event.label())], sample.counters.flow_event(*event).packets);
    }
    t.family(
        names::FLOW_NON_SYN_MISSES,
        Kind::Counter,
        "Flow table misses of TCP packets without SYN (also counted as misses): established connections the table no longer holds (evicted: lb.flow_table_size too small) or that began elsewhere.",
    );
    t.sample(names::FLOW_NON_SYN_MISSES, &[], sample.counters.flow_event(FlowEvent::NonSynMiss).packets);
    t.family(
        names::FLOW_GUARD_UNRECORDED,
        Kind::Counter,
        "New flows forwarded by the ring but not recorded in the flow table (also counted as misses): their CPU was above lb.new_flow_guard new flows per second.",
    );
    t.sample(names::FLOW_GUARD_UNRECORDED, &[], sample.counters.flow_event(FlowEvent::Unrecorded).packets);
    t.family(names::FLOW_TABLE_SIZE, Kind::Gauge, "Flows the flow table can hold (lb.flow_table_size).");
    t.sample(names::FLOW_TABLE_SIZE, &[], u64::from(config.lb.flow_table_size));
    t.family(names::FLOW_TABLE_ENTRIES, Kind::Gauge, "Flows the flow table holds now (an LRU: full is normal under load; see lb_flow_table_non_syn_misses_total).");
    t.sample(names::FLOW_TABLE_ENTRIES, &[], sample.flow_entries);

    let health = members(config, plan, sample);
    let pairs = || health.iter().flat_map(|(vip, members)| members.iter().map(move |(address, m)| (*vip, address.as_str(), m)));
    let pair = |vip, backend| [(labels::BACKEND, backend), (labels::VIP, vip)];
    // Per member, with the ids of the config's pairs (a pair no longer in the
    // config ends its series; the VIP and backend totals above keep its counts).
    let member_counts: Vec<(&str, String, Counter)> = config
        .vips
        .iter()
        .filter_map(|v| Some((v, plan.vip(&v.name)?.row)))
        .flat_map(|(v, row)| {
            v.backends.iter().map(move |b| {
                let id = plan.backend_id(b.address).unwrap_or(lb_common::NO_BACKEND);
                (v.name.as_str(), b.address.to_string(), sample.counters.member(row, id))
            })
        })
        .collect();
    t.family(names::VIP_BACKEND_PACKETS, Kind::Counter, "Packets the VIP forwarded to the backend.");
    for &(vip, ref backend, c) in &member_counts {
        t.sample(names::VIP_BACKEND_PACKETS, &pair(vip, backend.as_str()), c.packets);
    }
    t.family(names::VIP_BACKEND_BYTES, Kind::Counter, "Bytes (Ethernet frames, before encapsulation) the VIP forwarded to the backend.");
    for &(vip, ref backend, c) in &member_counts {
        t.sample(names::VIP_BACKEND_BYTES, &pair(vip, backend.as_str()), c.bytes);
    }
    t.family(names::BACKEND_UP, Kind::Gauge, "1 while the backend serves the VIP as far as health goes (up or not checked), 0 while down.");
    for (vip, backend, m) in pairs() {
        t.sample(names::BACKEND_UP, &pair(vip, backend), u64::from(m.is_up()));
    }
    t.family(names::BACKEND_HEALTH_AGE, Kind::Gauge, "Seconds since the backend's health state last changed (or the agent started).");
    for (vip, backend, m) in pairs() {
        if let Some(e) = m.entry {
            let since = Duration::from_millis(sample.now_unix_ms.saturating_sub(e.since_unix_ms));
            t.sample(names::BACKEND_HEALTH_AGE, &pair(vip, backend), since.as_secs_f64());
        }
    }
    t.family(names::BACKEND_HEALTH_CHANGES, Kind::Counter, "Health state changes of the backend since the agent started.");
    for (vip, backend, m) in pairs() {
        if let Some(e) = m.entry {
            t.sample(names::BACKEND_HEALTH_CHANGES, &pair(vip, backend), u64::from(e.changes));
        }
    }
    t.family(names::RING_SHARE, Kind::Gauge, "Fraction of the VIP's Maglev ring slots the backend owns now.");
    for (vip, backend, m) in pairs() {
        t.sample(names::RING_SHARE, &pair(vip, backend), m.ring_share);
    }
    t.family(names::VIP_PREVIOUS_OWNER_SLOTS, Kind::Gauge, "Ring slots of the VIP that have at least one previous owner now, however many (flow_state = \"backend\" VIPs after a ring change, until lb.previous_owner_window passes).");
    for vip in &plan.vips {
        t.sample(names::VIP_PREVIOUS_OWNER_SLOTS, &[(labels::VIP, vip.name.as_str())], u64::from(sample.shares.with_previous_owner(vip.row)));
    }
    t.family(names::VIP_BACKENDS_UP, Kind::Gauge, "Backends of the VIP that are up; 0 means the VIP has no healthy backend.");
    for (vip, members) in &health {
        t.sample(names::VIP_BACKENDS_UP, &[(labels::VIP, vip)], members.iter().filter(|(_, m)| m.is_up()).count() as u64);
    }

    // The histogram is a live `prometheus` object fed by the checkers; its
    // own encoder writes it (one series per VIP: small). A histogram without
    // any check yet is left out, as a registry would.
    let families: Vec<_> = check_duration.collect().into_iter().filter(|f| !f.get_metric().is_empty()).collect();
    let mut histogram = String::new();
    TextEncoder::new().encode_utf8(&families, &mut histogram).context("encoding the check duration histogram")?;
    t.push_encoded(&histogram);

    t.family(names::RING_SIZE, Kind::Gauge, "Slots of every VIP's Maglev ring.");
    t.sample(names::RING_SIZE, &[], u64::from(plan.ring_size));
    t.family(names::CONFIG_GENERATION, Kind::Gauge, "Configs programmed since the agent started (1 after start, +1 per reload).");
    t.sample(names::CONFIG_GENERATION, &[], *generation);
    t.family(
        names::CONFIG_INFO,
        Kind::Gauge,
        "Fingerprint of the effective config (as `lb-agent check` prints); LB hosts with equal fingerprints forward every flow alike.",
    );
    t.sample(names::CONFIG_INFO, &[(labels::FINGERPRINT, fingerprint)], 1u64);
    t.family(names::VIP_RING_INFO, Kind::Gauge, "Digest of the VIP's Maglev ring with every backend up (as `lb-agent check` prints); LB hosts with equal digests send the VIP's flows alike.");
    for vip in &plan.vips {
        t.sample(names::VIP_RING_INFO, &[(labels::DIGEST, crate::plan::ring_digest::label(vip.ring_digest).as_str()), (labels::VIP, vip.name.as_str())], 1u64);
    }
    t.family(names::BACKEND_DRAINED, Kind::Gauge, "1 while the backend is drained for the VIP (weight 0, in the config file or by `lb-agent drain`), else 0.");
    for v in &config.vips {
        for b in &v.backends {
            t.sample(names::BACKEND_DRAINED, &[(labels::BACKEND, b.address.to_string().as_str()), (labels::VIP, v.name.as_str())], u64::from(b.weight == 0));
        }
    }
    t.family(names::BUILD_INFO, Kind::Gauge, "The agent's version.");
    t.sample(names::BUILD_INFO, &[(labels::VERSION, env!("CARGO_PKG_VERSION"))], 1u64);
    t.family(names::XDP_ATTACH_INFO, Kind::Gauge, "Interface the balancer is attached to, and the XDP mode (native, generic, offload).");
    t.sample(names::XDP_ATTACH_INFO, &[(labels::INTERFACE, &attachment.interface), (labels::MODE, attachment.mode)], 1u64);
    Ok(t.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_config::{TestConfig, TestVip};
    use lb_common::health::{HEALTH_DOWN, HEALTH_UP, HealthEntry, HealthKey};

    /// One checked VIP on two backends.
    fn web() -> TestConfig {
        TestConfig::new().ring_size(1009).vip(TestVip::new("web", "192.0.2.10:80").checked().backends(["198.51.100.11", "198.51.100.12"]))
    }

    /// The value of the sample line `name{labels}` (labels as printed).
    fn value(text: &str, series: &str) -> f64 {
        let line = text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' ')).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_drained_backend_is_reported_as_drained() {
        use crate::test_config::TestBackend;
        let vip = TestVip::new("web", "192.0.2.10:80").backend(TestBackend::new("198.51.100.11")).backend(TestBackend::new("198.51.100.12").weight(0));
        let config = TestConfig::new().ring_size(1009).vip(vip).parse();
        let plan = crate::plan::plan(&config);
        let programmed = Programmed::new(config, plan.clone(), 1);
        let counters = Counters { reasons: vec![Counter::default(); Reason::COUNT as usize], flows: vec![Counter::default(); FlowEvent::COUNT as usize], ..Counters::default() };
        let shares = RingShares::from_rings(plan.ring_size, []);
        let sample = Sample { counters: &counters, health: &HealthTable::new(), shares: &shares, flow_entries: 0, now_unix_ms: 0 };
        let attachment = Attachment { interface: "eth0".into(), mode: "native" };
        let text = encode(&programmed, &attachment, &sample, &check_duration_histogram()).unwrap();
        assert_eq!(value(&text, r#"lb_backend_drained{backend="198.51.100.12",vip="web"}"#), 1.0);
        assert_eq!(value(&text, r#"lb_backend_drained{backend="198.51.100.11",vip="web"}"#), 0.0);
    }

    #[test]
    fn every_metric_with_its_labels_and_values() {
        let config = web().parse();
        let plan = crate::plan::plan(&config);
        let programmed = Programmed::new(config, plan.clone(), 3);
        let (b11, b12) = (plan.backend_id("198.51.100.11".parse().unwrap()).unwrap(), plan.backend_id("198.51.100.12".parse().unwrap()).unwrap());
        // Row 0 (web) sent 3 packets to .11 and 7 to .12; row 1 (no VIP of this
        // config now) sent 4 to .12: the backend total keeps them.
        let max_backends = 3;
        let mut members = vec![Counter::default(); 2 * max_backends as usize];
        members[lb_common::flows::member_index(0, b11, max_backends) as usize] = Counter { packets: 3, bytes: 300 };
        members[lb_common::flows::member_index(0, b12, max_backends) as usize] = Counter { packets: 7, bytes: 700 };
        members[lb_common::flows::member_index(1, b12, max_backends) as usize] = Counter { packets: 4, bytes: 400 };
        let mut counters = Counters {
            reasons: vec![Counter::default(); Reason::COUNT as usize],
            flows: vec![Counter::default(); FlowEvent::COUNT as usize],
            ..Counters::default()
        }
        .with_members(members, max_backends);
        counters.flows[FlowEvent::Hit as usize] = Counter { packets: 42, bytes: 0 };
        counters.flows[FlowEvent::NonSynMiss as usize] = Counter { packets: 5, bytes: 0 };
        counters.flows[FlowEvent::Unrecorded as usize] = Counter { packets: 9, bytes: 0 };
        counters.reasons[Reason::NoBackend as usize] = Counter { packets: 2, bytes: 120 };
        let mut health = HealthTable::new();
        health.insert(HealthKey { row: 0, backend_id: b11 }, HealthEntry { state: HEALTH_DOWN, since_unix_ms: 1_000, changes: 1, ..Default::default() });
        health.insert(HealthKey { row: 0, backend_id: b12 }, HealthEntry { state: HEALTH_UP, since_unix_ms: 0, ..Default::default() });
        let attachment = Attachment { interface: "eth0".into(), mode: "generic" };
        let hist = check_duration_histogram();
        hist.with_label_values(&["web"]).observe(0.003);
        // The ring as the supervisor writes it with .11 down: all .12's.
        let ring = vec![b12; plan.ring_size as usize];
        let mut shares = RingShares::from_rings(plan.ring_size, [(0, &ring[..])]);
        let mut previous = vec![crate::plan::previous::NONE; ring.len()];
        // Three slots, one with two previous owners: counted once.
        previous[..3].copy_from_slice(&[[2, 1], [2, 0], [1, 0]]);
        shares.set_previous(0, &previous);
        let sample = Sample { counters: &counters, health: &health, shares: &shares, flow_entries: 17, now_unix_ms: 3_500 };
        let text = encode(&programmed, &attachment, &sample, &hist).unwrap();

        for name in names::ALL {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
        }
        assert_eq!(value(&text, r#"lb_vip_packets_total{vip="web"}"#), 10.0);
        assert_eq!(value(&text, r#"lb_vip_bytes_total{vip="web"}"#), 1000.0);
        assert_eq!(value(&text, r#"lb_backend_packets_total{backend="198.51.100.12"}"#), 11.0);
        assert_eq!(value(&text, r#"lb_backend_bytes_total{backend="198.51.100.11"}"#), 300.0);
        assert_eq!(value(&text, r#"lb_vip_backend_packets_total{backend="198.51.100.11",vip="web"}"#), 3.0);
        assert_eq!(value(&text, r#"lb_vip_backend_packets_total{backend="198.51.100.12",vip="web"}"#), 7.0);
        assert_eq!(value(&text, r#"lb_vip_backend_bytes_total{backend="198.51.100.12",vip="web"}"#), 700.0);
        assert_eq!(value(&text, r#"lb_packets_total{action="drop",reason="no_backend"}"#), 2.0);
        assert_eq!(value(&text, r#"lb_backend_up{backend="198.51.100.11",vip="web"}"#), 0.0);
        assert_eq!(value(&text, r#"lb_backend_drained{backend="198.51.100.11",vip="web"}"#), 0.0);
        let digest = crate::plan::ring_digest::label(plan.vip("web").unwrap().ring_digest);
        assert_eq!(value(&text, &format!(r#"lb_vip_ring_info{{digest="{digest}",vip="web"}}"#)), 1.0);
        assert_eq!(value(&text, r#"lb_backend_up{backend="198.51.100.12",vip="web"}"#), 1.0);
        assert_eq!(value(&text, r#"lb_vip_backends_up{vip="web"}"#), 1.0);
        assert_eq!(value(&text, r#"lb_backend_health_state_age_seconds{backend="198.51.100.11",vip="web"}"#), 2.5);
        assert_eq!(value(&text, r#"lb_backend_health_changes_total{backend="198.51.100.11",vip="web"}"#), 1.0);
        // .11 is down: .12 owns the whole ring (counted from the kernel's ring).
        assert_eq!(value(&text, r#"lb_ring_share_ratio{backend="198.51.100.11",vip="web"}"#), 0.0);
        assert_eq!(value(&text, r#"lb_ring_share_ratio{backend="198.51.100.12",vip="web"}"#), 1.0);
        assert_eq!(value(&text, r#"lb_health_check_duration_seconds_count{vip="web"}"#), 1.0);
        assert_eq!(value(&text, "lb_ring_size"), 1009.0);
        assert_eq!(value(&text, r#"lb_vip_previous_owner_slots{vip="web"}"#), 3.0);
        assert_eq!(value(&text, r#"lb_flow_table_lookups_total{result="hit"}"#), 42.0);
        assert_eq!(value(&text, "lb_flow_table_non_syn_misses_total"), 5.0);
        assert!(!text.contains("non_syn_miss\""), "the non-SYN misses are not a lookup result (they are misses already):\n{text}");
        assert_eq!(value(&text, "lb_flow_guard_unrecorded_total"), 9.0);
        assert!(!text.contains("guard_unrecorded\""), "unrecorded flows are misses already, not a lookup result:\n{text}");
        assert_eq!(value(&text, "lb_flow_table_size"), f64::from(lb_common::flows::DEFAULT_FLOW_TABLE_SIZE));
        assert_eq!(value(&text, "lb_flow_table_entries"), 17.0);
        assert_eq!(value(&text, "lb_config_generation"), 3.0);
        assert_eq!(value(&text, &format!(r#"lb_config_info{{fingerprint="{}"}}"#, programmed.fingerprint)), 1.0);
        assert_eq!(value(&text, r#"lb_xdp_attach_info{interface="eth0",mode="generic"}"#), 1.0);
        assert_eq!(value(&text, &format!(r#"lb_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))), 1.0);
    }

    #[test]
    fn a_reload_forgets_the_check_series_of_removed_vips() {
        let old = web().vip(TestVip::new("api", "192.0.2.11:80").checked().backends(["198.51.100.11"])).parse();
        let new = web().parse();
        let hist = check_duration_histogram();
        hist.with_label_values(&["web"]).observe(0.001);
        hist.with_label_values(&["api"]).observe(0.001);
        forget_removed_checks(&hist, &old, &new);
        assert!(hist.remove_label_values(&["api"]).is_err(), "the removed VIP's series is gone");
        assert!(hist.remove_label_values(&["web"]).is_ok(), "the kept VIP's series stays");
    }
}

