//! The Prometheus endpoint end to end (see `lb_tests::lab`): after real
//! traffic the scraped text passes `promtool check metrics`, the per-backend
//! packet counts equal what the clients sent, `lb-agent stats --json` shows
//! the same counters, the health gauge flips when a backend's server
//! stops, and a reload bumps the generation and fingerprint. Also: the alert rules and scrape config in `contrib/` load in
//! promtool and name only metrics the agent serves.
//! Root only (namespaces, XDP), like `e2e.rs`; run with `--test-threads=1`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lb_common::metrics::{self as names, labels};
use lb_tests::agent::{self, Proto, Stats};
use lb_tests::lab::{Lab, LabBins};
use lb_tests::metrics::{self, Sample};
use lb_tests::topology::{self, LB, VIP_V4, VIP_V6, backend_v4, backend_v6};

const BACKENDS: usize = 3;
const TIMEOUT_MS: u64 = 2000;
const UDP_REQUESTS: u32 = 60;
const TCP_CONNECTIONS: u32 = 30;
/// What one `lb-testclient` TCP request sends toward the VIP: SYN, ACK,
/// the request, and closing (FIN, ACKs); at least the first three, and a
/// retransmission or two on a loaded machine.
const TCP_PACKETS_MIN: u64 = 3;
const TCP_PACKETS_MAX: u64 = 8;
/// Health checks of `web-v4`: short, so the flip is quick.
const INTERVAL_MS: u64 = 300;
const CHECK_TIMEOUT_MS: u64 = 200;
const FAILS: u32 = 2;
/// Scheduling slack on a loaded machine.
const SLACK: Duration = Duration::from_secs(3);

fn can_run(test: &str) -> bool {
    if !topology::is_root() {
        eprintln!("SKIPPED {test}: needs root (network namespaces, XDP); run `cargo xtask test`");
        return false;
    }
    true
}

fn contrib() -> PathBuf {
    agent::workspace_root().join("contrib")
}

/// The e2e config (web-v4, web-v6, dns-v4 on b1..b3) with health checks on
/// web-v4; `metrics_listen` left at its default.
fn config() -> toml::Table {
    let mut c = agent::e2e_config(BACKENDS);
    let health: toml::Table = format!("interval = \"{INTERVAL_MS}ms\"\ntimeout = \"{CHECK_TIMEOUT_MS}ms\"\nfails = {FAILS}\npasses = 1\n")
        .parse()
        .expect("valid TOML");
    let vips = c.get_mut("vip").and_then(|v| v.as_array_mut()).expect("the e2e config has VIPs");
    let web_v4 = vips.iter_mut().find(|v| v["name"].as_str() == Some("web-v4")).expect("web-v4");
    web_v4.as_table_mut().expect("a table").insert("health".into(), toml::Value::Table(health));
    c
}

fn scrape(lab: &Lab) -> (String, Vec<Sample>) {
    let scraper = Path::new(env!("CARGO_BIN_EXE_lb-scrape"));
    let text = metrics::scrape(&lab.topo, scraper, metrics::DEFAULT_LISTEN).unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", lab.agent.log_tail(20)));
    let samples = metrics::parse(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    (text, samples)
}

fn value(samples: &[Sample], name: &str, l: &[(&str, &str)]) -> f64 {
    metrics::value(samples, name, l).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Requests per backend address, all of which must have succeeded.
fn per_backend(lab: &Lab, proto: Proto, vip: IpAddr, port: u16, count: u32, address_of: fn(usize) -> IpAddr) -> BTreeMap<IpAddr, u64> {
    let records = lab.client(proto, std::net::SocketAddr::new(vip, port), count, None, TIMEOUT_MS).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(records.len(), count as usize);
    let mut out: BTreeMap<IpAddr, u64> = (1..=BACKENDS).map(|i| (address_of(i), 0)).collect();
    for r in &records {
        assert!(r.ok, "{proto} request to {vip}:{port} failed: {r:?}");
        let name = r.backend.as_deref().expect("an answer names its backend");
        let i: usize = name.trim_start_matches('b').parse().expect("backends are b1..");
        *out.get_mut(&address_of(i)).expect("a known backend") += 1;
    }
    out
}

fn v4(i: usize) -> IpAddr {
    backend_v4(i).into()
}
fn v6(i: usize) -> IpAddr {
    backend_v6(i).into()
}

#[test]
fn metrics_count_the_traffic_match_stats_and_follow_health() {
    const TEST: &str = "metrics_count_the_traffic_match_stats_and_follow_health";
    if !can_run(TEST) {
        return;
    }
    metrics::promtool().unwrap_or_else(|e| panic!("{e:#}"));
    let bins = LabBins {
        agent: agent::agent_bin().unwrap_or_else(|e| panic!("{e:#}")),
        testsrv: PathBuf::from(env!("CARGO_BIN_EXE_lb-testsrv")),
        testclient: PathBuf::from(env!("CARGO_BIN_EXE_lb-testclient")),
    };
    let mut lab = Lab::start(bins, BACKENDS, config(), &|m| eprintln!("[{TEST}] {m}")).unwrap_or_else(|e| panic!("starting the lab: {e:#}"));

    // UDP to dns-v4 is all the v4 backends get (one datagram per request);
    // TCP to web-v6 all the v6 backends get.
    let udp = per_backend(&lab, Proto::Udp, VIP_V4.into(), 53, UDP_REQUESTS, v4);
    let tcp = per_backend(&lab, Proto::Tcp, VIP_V6.into(), 80, TCP_CONNECTIONS, v6);
    let stats = lab.settled_stats().unwrap_or_else(|e| panic!("{e:#}"));
    let (text, samples) = scrape(&lab);
    metrics::promtool_check_metrics(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    for name in names::ALL {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing from the scrape:\n{text}");
    }

    for (address, sent) in &udp {
        let counted = value(&samples, names::BACKEND_PACKETS, &[(labels::BACKEND, &address.to_string())]);
        assert_eq!(counted as u64, *sent, "backend {address}: the metric must count exactly the {sent} datagrams sent to it");
        assert_eq!(stats.backend_packets(*address), *sent, "stats --json for {address}");
    }
    for (address, connections) in &tcp {
        let counted = value(&samples, names::BACKEND_PACKETS, &[(labels::BACKEND, &address.to_string())]) as u64;
        let bounds = connections * TCP_PACKETS_MIN..=connections * TCP_PACKETS_MAX;
        assert!(bounds.contains(&counted), "backend {address}: {counted} packets for {connections} connections, expected {bounds:?}");
        assert_eq!(stats.backend_packets(*address), counted, "stats --json for {address}");
    }
    for v in &stats.vips {
        assert_eq!(value(&samples, names::VIP_PACKETS, &[(labels::VIP, &v.name)]) as u64, v.packets, "VIP {}", v.name);
        assert_eq!(value(&samples, names::VIP_BYTES, &[(labels::VIP, &v.name)]) as u64, v.bytes, "VIP {}", v.name);
    }
    assert_eq!(value(&samples, names::VIP_PACKETS, &[(labels::VIP, "dns-v4")]) as u64, u64::from(UDP_REQUESTS));
    let forwarded = value(&samples, names::PACKETS, &[(labels::REASON, "forwarded"), (labels::ACTION, "tx")]) as u64;
    assert_eq!(forwarded, stats.reason("forwarded"));
    for event in lb_common::flows::FlowEvent::ALL {
        let label = event.label();
        assert_eq!(value(&samples, names::FLOW_LOOKUPS, &[(labels::RESULT, label)]) as u64, stats.flow(label), "flow table {label}");
    }
    assert!(stats.flow("hit") > 0, "TCP packets after the SYN hit the flow table: {:?}", stats.flows);

    // Health and rings: all up, a third of web-v4's ring each, checks timed.
    for i in 1..=BACKENDS {
        let pair = [(labels::VIP, "web-v4"), (labels::BACKEND, &*v4(i).to_string())];
        assert_eq!(value(&samples, names::BACKEND_UP, &pair), 1.0);
        let share = value(&samples, names::RING_SHARE, &pair);
        assert!((share - 1.0 / BACKENDS as f64).abs() < 0.02, "b{i} owns {share} of the ring");
        assert!(value(&samples, &format!("{}_count", names::HEALTH_CHECK_DURATION), &pair) >= 1.0, "b{i} was never checked");
    }
    assert_eq!(value(&samples, names::VIP_BACKENDS_UP, &[(labels::VIP, "web-v4")]), BACKENDS as f64);
    assert_eq!(value(&samples, names::RING_SIZE, &[]), f64::from(lb_common::limits::DEFAULT_RING_SIZE));
    assert_eq!(value(&samples, names::CONFIG_GENERATION, &[]), 1.0);
    let fingerprint = fingerprint_of(&lab);
    assert_eq!(value(&samples, names::CONFIG_INFO, &[(labels::FINGERPRINT, &fingerprint)]), 1.0);
    let attach = samples.iter().find(|s| s.name == names::XDP_ATTACH_INFO).expect("attach info");
    assert_eq!(attach.labels[labels::INTERFACE], topology::IFACE);
    assert!(["native", "generic"].contains(&attach.labels[labels::MODE].as_str()), "{attach:?}");

    // `stats --json` over a window adds rates.
    let windowed = lab.topo.exec_ok(LB, &lab.bins.agent.to_string_lossy(), &["stats", "--json", "--interval", "0.2", "--config", &lab.config_path.to_string_lossy()]).unwrap();
    let windowed: serde_json::Value = serde_json::from_str(&windowed).unwrap();
    assert!(windowed["window_seconds"].as_f64().is_some_and(|w| w > 0.0), "{windowed}");
    assert!(windowed["backends"].as_array().unwrap().iter().all(|b| b["packets_per_second"].is_number()), "{windowed}");

    // Stop b2's server: its gauge flips to 0, its ring share goes to the others.
    lab.stop_server(1).unwrap();
    let b2 = v4(2).to_string();
    let pair = [(labels::VIP, "web-v4"), (labels::BACKEND, b2.as_str())];
    let bound = Duration::from_millis(INTERVAL_MS * u64::from(FAILS) + CHECK_TIMEOUT_MS) + SLACK;
    let t0 = Instant::now();
    let samples = loop {
        let (_, samples) = scrape(&lab);
        if value(&samples, names::BACKEND_UP, &pair) == 0.0 {
            break samples;
        }
        assert!(t0.elapsed() < bound, "b2 still up in the metrics after {bound:?}; agent log:\n{}", lab.agent.log_tail(20));
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("[{TEST}] lb_backend_up of b2 went to 0 after {:?}", t0.elapsed());
    assert_eq!(value(&samples, names::VIP_BACKENDS_UP, &[(labels::VIP, "web-v4")]), (BACKENDS - 1) as f64);
    assert_eq!(value(&samples, names::RING_SHARE, &pair), 0.0);
    assert_eq!(value(&samples, names::BACKEND_HEALTH_CHANGES, &pair), 1.0);
    assert!(value(&samples, names::BACKEND_HEALTH_AGE, &pair) < bound.as_secs_f64(), "the change is recent");
    let s = Stats::parse(&lab.stats_output(true).unwrap()).unwrap();
    let member = s.vip(VIP_V4.into(), 80, Proto::Tcp).unwrap().backends.iter().find(|m| m.address == b2).cloned().unwrap();
    assert_eq!(member.state.as_deref(), Some("down"), "stats agrees: {member:?}");

    // A reload that changes a weight: new generation, new fingerprint.
    let mut reweighted = lab.config.clone();
    let web_v4 = reweighted["vip"].as_array_mut().unwrap().iter_mut().find(|v| v["name"].as_str() == Some("web-v4")).unwrap();
    web_v4["backend"].as_array_mut().unwrap()[0].as_table_mut().unwrap().insert("weight".into(), toml::Value::Integer(2));
    let out = lab.reload(reweighted).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.status.success(), "reload failed: {}", String::from_utf8_lossy(&out.stderr));
    let (_, samples) = scrape(&lab);
    assert_eq!(value(&samples, names::CONFIG_GENERATION, &[]), 2.0);
    let reloaded = fingerprint_of(&lab);
    assert_ne!(reloaded, fingerprint);
    assert_eq!(value(&samples, names::CONFIG_INFO, &[(labels::FINGERPRINT, &reloaded)]), 1.0);
    assert!(lab.agent.try_status().is_none(), "the agent exited; log:\n{}", lab.agent.log_tail(30));
}

/// The fingerprint `lb-agent check` prints for the lab's config file.
fn fingerprint_of(lab: &Lab) -> String {
    let check = lab.topo.exec_ok(LB, &lab.bins.agent.to_string_lossy(), &["check", "--config", &lab.config_path.to_string_lossy()]).unwrap();
    check.lines().find_map(|l| l.strip_prefix("fingerprint")).map(|f| f.trim().to_string()).expect("check prints the fingerprint")
}

/// Every `lb_*` metric an expression names, with histogram suffixes stripped.
fn metric_names_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(start) = text[i..].find("lb_").map(|p| p + i) {
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(text.len(), |p| p + start);
        if boundary {
            let name = &text[start..end];
            let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s).filter(|b| names::ALL.contains(b))).unwrap_or(name);
            out.push(base.to_string());
        }
        i = end;
    }
    out
}

#[test]
fn contrib_rules_config_and_dashboard_load_and_name_served_metrics() {
    let rules = contrib().join("prometheus/alerts.yml");
    let out = metrics::promtool_check(&["rules", &rules.to_string_lossy()]).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{out}");
    let config = contrib().join("prometheus/prometheus.yml");
    metrics::promtool_check(&["config", &config.to_string_lossy()]).unwrap_or_else(|e| panic!("{e:#}"));

    let dashboard = std::fs::read_to_string(contrib().join("grafana/lb-dashboard.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let alerts = std::fs::read_to_string(&rules).unwrap();
    for (file, text) in [("alerts.yml", &alerts), ("lb-dashboard.json", &dashboard)] {
        let used = metric_names_in(text);
        assert!(!used.is_empty(), "{file} names no metric");
        for name in used {
            assert!(names::ALL.contains(&name.as_str()), "{file} uses {name}, which the agent does not serve");
        }
    }
}
