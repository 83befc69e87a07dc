//! The Prometheus endpoint end to end (see `lb_tests::lab`): after real
//! traffic the scraped text passes `promtool check metrics`, the per-backend
//! packet counts equal what the clients sent, `lb-agent stats --json` shows
//! the same counters, the health gauge flips when a backend's server
//! stops, and a reload bumps the generation and fingerprint; the agent's
//! process metrics and the flow table's occupancy are served;
//! `lb.metrics_listen` moves on reload (a taken port refuses the reload and
//! the old listener keeps serving; the same port on the wildcard is handed
//! over). Also: the alert rules and scrape config in `contrib/` load in
//! promtool, pass their unit tests (`alerts_test.yml`, one per rule) and name only metrics the agent serves; the non-SYN miss counter
//! rises when the flow table is too small for the live connections, and
//! stays 0 when it is big enough; the endpoint closes slowloris clients
//! after its header timeout, never holds more than its connection cap, keeps
//! serving scrapes meanwhile, and answers a client that half-closes.
//! Root only (namespaces, XDP), like `e2e.rs`; run with `--test-threads=1`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lb_common::metrics::{self as names, labels};
use lb_tests::agent::{self, Proto, Stats};
use lb_tests::lab::{Lab, LabOptions, hold_records};
use lb_tests::metrics::{self, Sample};
use lb_tests::topology::{self, LB, TopologyOptions, VIP_V4, VIP_V6, backend_v4, backend_v6};

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
    topology::root_or_skip(test, "network namespaces, XDP")
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
    let bins = lb_tests::lab_bins!();
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
    // Per (VIP, backend): dns-v4's UDP is exactly what each v4 backend got,
    // web-v6's TCP what each v6 backend got; each VIP's members add up to it.
    for (vip, sent) in [("dns-v4", &udp), ("web-v6", &tcp)] {
        let mut packets = 0;
        for address in sent.keys() {
            let member = [(labels::VIP, vip), (labels::BACKEND, &address.to_string())];
            let counted = value(&samples, names::VIP_BACKEND_PACKETS, &member) as u64;
            assert_eq!(counted, value(&samples, names::BACKEND_PACKETS, &[(labels::BACKEND, &address.to_string())]) as u64, "{vip} -> {address}");
            packets += counted;
            assert!(value(&samples, names::VIP_BACKEND_BYTES, &member) > 0.0 || counted == 0, "{vip} -> {address}: packets without bytes");
        }
        assert_eq!(packets, value(&samples, names::VIP_PACKETS, &[(labels::VIP, vip)]) as u64, "{vip}: its members add up to its total");
        let json: u64 = stats.vips.iter().filter(|v| v.name == vip).flat_map(|v| v.backends.iter().filter(|m| sent.contains_key(&m.address.parse().unwrap())).map(|m| m.packets)).sum();
        assert_eq!(json, packets, "stats --json members of {vip}");
    }
    let forwarded = value(&samples, names::PACKETS, &[(labels::REASON, "forwarded"), (labels::ACTION, "tx")]) as u64;
    assert_eq!(forwarded, stats.reason("forwarded"));
    for event in lb_common::flows::FlowEvent::ALL {
        let label = event.label();
        assert_eq!(value(&samples, names::FLOW_LOOKUPS, &[(labels::RESULT, label)]) as u64, stats.flow(label), "flow table {label}");
    }
    assert!(stats.flow("hit") > 0, "TCP packets after the SYN hit the flow table: {:?}", stats.flows);
    // Every TCP connection was recorded (distinct 5-tuples); no more entries than recorded misses.
    let entries = value(&samples, names::FLOW_TABLE_ENTRIES, &[]) as u64;
    assert!((u64::from(TCP_CONNECTIONS)..=stats.flow("miss")).contains(&entries), "{entries} flow table entries, {} misses", stats.flow("miss"));
    // The agent's own process, from the prometheus crate's process collector.
    assert!(value(&samples, "process_open_fds", &[]) >= 3.0);
    assert!(value(&samples, "process_resident_memory_bytes", &[]) > 1e6);
    // Whole seconds (the crate's counter is an integer): present, maybe still 0.
    assert!(value(&samples, "process_cpu_seconds_total", &[]) >= 0.0);
    let started = value(&samples, "process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(started > now - 600.0 && started <= now, "start time {started}, now {now}");

    // Health and rings: all up, a third of web-v4's ring each, checks timed (per VIP).
    for i in 1..=BACKENDS {
        let pair = [(labels::VIP, "web-v4"), (labels::BACKEND, &*v4(i).to_string())];
        assert_eq!(value(&samples, names::BACKEND_UP, &pair), 1.0);
        let share = value(&samples, names::RING_SHARE, &pair);
        assert!((share - 1.0 / BACKENDS as f64).abs() < 0.02, "b{i} owns {share} of the ring");
    }
    let checks = value(&samples, &format!("{}_count", names::HEALTH_CHECK_DURATION), &[(labels::VIP, "web-v4")]);
    assert!(checks >= BACKENDS as f64, "every backend of web-v4 was checked: {checks} checks timed");
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
    metrics_listen_moves_on_reload(&mut lab);
    assert!(lab.agent.try_status().is_none(), "the agent exited; log:\n{}", lab.agent.log_tail(30));
}

/// The generation scraped at `listen`, or why not.
fn generation_at(lab: &Lab, listen: &str) -> anyhow::Result<f64> {
    let text = metrics::scrape(&lab.topo, Path::new(env!("CARGO_BIN_EXE_lb-scrape")), listen)?;
    metrics::value(&metrics::parse(&text)?, names::CONFIG_GENERATION, &[])
}

/// Reloads with `lb.metrics_listen = listen`; the reload's output.
fn reload_listening_at(lab: &mut Lab, listen: &str) -> std::process::Output {
    let mut config = lab.config.clone();
    config["lb"].as_table_mut().unwrap().insert("metrics_listen".into(), toml::Value::String(listen.into()));
    lab.reload(config).unwrap_or_else(|e| panic!("{e:#}"))
}

/// After the reweighting reload (generation 2), listening at the default.
fn metrics_listen_moves_on_reload(lab: &mut Lab) {
    // A port taken in the LB namespace: the reload is refused, nothing moves.
    let taken = in_namespace(lab, LB, || std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let taken_addr = taken.local_addr().unwrap().to_string();
    let out = reload_listening_at(lab, &taken_addr);
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a reload to a taken port must be refused: {said}");
    assert!(said.contains(&taken_addr), "the refusal names the address: {said}");
    assert_eq!(generation_at(lab, metrics::DEFAULT_LISTEN).unwrap(), 2.0, "the old listener serves, the old config runs");
    drop(taken);

    // The same port on the wildcard: handed over, still reachable on loopback.
    let wildcard = format!("0.0.0.0:{}", metrics::DEFAULT_LISTEN.rsplit_once(':').unwrap().1);
    let out = reload_listening_at(lab, &wildcard);
    assert!(out.status.success(), "reload to {wildcard}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(generation_at(lab, metrics::DEFAULT_LISTEN).unwrap(), 3.0);

    // Another port: served there, and no longer at the old one.
    let moved = "127.0.0.1:9119";
    let out = reload_listening_at(lab, moved);
    assert!(out.status.success(), "reload to {moved}: {}", String::from_utf8_lossy(&out.stderr));
    let reply = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(reply.contains(&format!("lb.metrics_listen: {wildcard} -> {moved}")), "the reply names the move: {reply}");
    assert_eq!(generation_at(lab, moved).unwrap(), 4.0);
    assert!(generation_at(lab, metrics::DEFAULT_LISTEN).is_err(), "the old address is closed");
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
    let tests = contrib().join("prometheus/alerts_test.yml");
    let out = metrics::promtool_test_rules(&tests).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{out}");
    // Every rule has a unit test.
    let (rules_text, tests_text) = (std::fs::read_to_string(&rules).unwrap(), std::fs::read_to_string(&tests).unwrap());
    let alerts: Vec<&str> = rules_text.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 9, "{alerts:?}");
    for alert in alerts {
        assert!(tests_text.contains(&format!("alertname: {alert}\n")), "alerts_test.yml has no test of {alert}");
    }

    let dashboard = std::fs::read_to_string(contrib().join("grafana/lb-dashboard.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let alerts = std::fs::read_to_string(&rules).unwrap();
    for (file, text) in [("alerts.yml", &alerts), ("lb-dashboard.json", &dashboard)] {
        let used = metric_names_in(text);
        assert!(!used.is_empty(), "{file} names no metric");
        for name in used {
            let known = names::ALL.contains(&name.as_str());
            assert!(known, "{file} uses {name}, which the agent does not serve");
        }
    }
}

/// Long-lived connections of the eviction test: more than one CPU's share of
/// [`SMALL_FLOW_TABLE`] (each CPU has `flow_table_size / possible CPUs`
/// entries), far fewer than [`BIG_FLOW_TABLE`]'s.
const HELD_CONNECTIONS: u32 = 600;
const SMALL_FLOW_TABLE: u32 = lb_common::flows::MIN_FLOW_TABLE_SIZE;
/// Big enough for everything the test sends, small enough to allocate quickly.
const BIG_FLOW_TABLE: u32 = 65_536;
/// New UDP flows sent while the connections are held: churn that takes
/// table entries as a busy VIP's new clients do.
const CHURN_FLOWS: u32 = 1_000;
const ECHO_PORT: u16 = 7;
const HOLD_MS: u64 = 6_000;
const HOLD_INTERVAL_MS: u64 = 500;
const HELD_PORT_BASE: u16 = 20_000;
const CHURN_PORT_BASE: u16 = 30_000;

/// Runs the rest of this thread (and every process it starts) on CPU 0:
/// XDP on veth runs on the sender's CPU, and each CPU records into and
/// evicts from its own LRU list of the flow table (`BPF_F_NO_COMMON_LRU`,
/// each list a share of the entries), so the table a churn meets depends on
/// how its packets spread over CPUs. Real NICs keep a flow on one queue
/// (RSS); this makes the lab do the same.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set), 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
    }
}

/// Holds [`HELD_CONNECTIONS`] connections through a flow table of
/// `flow_table_size` while [`CHURN_FLOWS`] new UDP flows pass; returns the
/// non-SYN misses as the metric and `stats --json` count them (asserted equal).
fn non_syn_misses_with_table(test: &str, flow_table_size: u32) -> u64 {
    pin_to_cpu0();
    let mut config = agent::e2e_config(BACKENDS);
    config["lb"].as_table_mut().expect("[lb]").insert("flow_table_size".into(), toml::Value::Integer(flow_table_size.into()));
    let mut echo: toml::Table = format!("name = \"echo\"\naddress = \"{VIP_V4}\"\nport = {ECHO_PORT}\nprotocol = \"tcp\"\n").parse().expect("valid TOML");
    echo.insert("backend".into(), config["vip"][0]["backend"].clone());
    config["vip"].as_array_mut().expect("VIPs").push(toml::Value::Table(echo));
    let bins = lb_tests::lab_bins!();
    let options = LabOptions { server_extra: vec!["--echo-port".into(), ECHO_PORT.to_string()], ..LabOptions::default() };
    let topology = TopologyOptions { backends: BACKENDS, ..TopologyOptions::default() };
    let lab = Lab::start_with_options(bins, topology, config, options, &|m| eprintln!("[{test}] {m}")).unwrap_or_else(|e| panic!("starting the lab: {e:#}"));

    let echo_vip = SocketAddr::new(VIP_V4.into(), ECHO_PORT);
    let held = lab.hold_client(echo_vip, HELD_CONNECTIONS, HELD_PORT_BASE, HOLD_MS, HOLD_INTERVAL_MS).unwrap_or_else(|e| panic!("{e:#}"));
    let churn = lab.client(Proto::Udp, SocketAddr::new(VIP_V4.into(), 53), CHURN_FLOWS, Some(CHURN_PORT_BASE), TIMEOUT_MS).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(churn.len() == CHURN_FLOWS as usize && churn.iter().all(|r| r.ok), "every churn request answered");
    let records = hold_records(&held, Duration::from_millis(HOLD_MS) + SLACK * 3).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(records.len(), HELD_CONNECTIONS as usize, "one record per held connection");
    // The ring did not change, so a lost entry re-hashes to the same backend.
    let broken = records.iter().filter(|r| !r.kept()).count();
    assert_eq!(broken, 0, "no held connection breaks while the ring stays");

    let stats = lab.settled_stats().unwrap_or_else(|e| panic!("{e:#}"));
    let (_, samples) = scrape(&lab);
    let counted = stats.flow(lb_common::flows::FlowEvent::NonSynMiss.label());
    assert_eq!(value(&samples, names::FLOW_NON_SYN_MISSES, &[]) as u64, counted, "the metric and stats --json agree");
    let text = lab.stats_output(false).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(text.lines().any(|l| l.split_whitespace().take(2).eq(["non_syn_miss", &*counted.to_string()])), "stats prints the counter:\n{text}");
    eprintln!("[{test}] flow_table_size {flow_table_size}: {counted} non-SYN misses, flows {:?}", stats.flows);
    counted
}

#[test]
fn non_syn_misses_rise_when_the_flow_table_is_too_small() {
    const TEST: &str = "non_syn_misses_rise_when_the_flow_table_is_too_small";
    if !can_run(TEST) {
        return;
    }
    let misses = non_syn_misses_with_table(TEST, SMALL_FLOW_TABLE);
    assert!(misses > 0, "{HELD_CONNECTIONS} connections in a {SMALL_FLOW_TABLE}-entry table must lose entries");
}

#[test]
fn non_syn_misses_stay_zero_when_the_flow_table_is_big_enough() {
    const TEST: &str = "non_syn_misses_stay_zero_when_the_flow_table_is_big_enough";
    if !can_run(TEST) {
        return;
    }
    assert_eq!(non_syn_misses_with_table(TEST, BIG_FLOW_TABLE), 0, "every held connection's entry stays in a {BIG_FLOW_TABLE}-entry table");
}

/// Slow clients of the endpoint test: far more than the endpoint's cap.
const SLOW_CLIENTS: usize = 4 * lb_agent::metrics::server::MAX_CONNECTIONS;
/// Descriptors the agent may open besides the capped connections while the
/// test runs (a scrape's pinned maps, the accept of a refused connection).
const FD_SLACK: usize = 16;

/// Runs `f` on a thread inside the network namespace of `host` (sockets it
/// opens stay in that namespace wherever they are used later).
fn in_namespace<T: Send + 'static>(lab: &Lab, host: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/run/netns").join(lab.topo.ns_name(host));
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        // SAFETY: setns on a namespace descriptor, for this thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({}): {}", path.display(), std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the namespace thread panicked")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or_else(|e| panic!("reading the agent's fds: {e}"))
}

fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("RssAnon:")).and_then(|v| v.split_whitespace().next()).and_then(|n| n.parse().ok()).expect("RssAnon")
}

/// Whether the server closed `stream` (EOF or reset) within `wait`.
fn closed_by_server(stream: &mut std::net::TcpStream, wait: Duration) -> bool {
    use std::io::Read as _;
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn the_endpoint_cuts_slow_clients_caps_connections_and_answers_half_closed_ones() {
    use std::io::{Read as _, Write as _};
    const TEST: &str = "the_endpoint_cuts_slow_clients_caps_connections_and_answers_half_closed_ones";
    if !can_run(TEST) {
        return;
    }
    let bins = lb_tests::lab_bins!();
    let lab = Lab::start(bins, BACKENDS, config(), &|m| eprintln!("[{TEST}] {m}")).unwrap_or_else(|e| panic!("starting the lab: {e:#}"));
    let pid = lab.agent.pid();
    scrape(&lab);
    let (fds_idle, rss_idle) = (open_fds(pid), rss_anon_kib(pid));
    let listen: std::net::SocketAddr = metrics::DEFAULT_LISTEN.parse().unwrap();

    // Slowloris: each sends half a request head and then nothing.
    let t0 = Instant::now();
    let mut slow = in_namespace(&lab, LB, move || {
        (0..SLOW_CLIENTS)
            .map(|_| {
                let mut s = std::net::TcpStream::connect_timeout(&listen, Duration::from_secs(2)).expect("connecting a slow client");
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\n").expect("sending half a head");
                s
            })
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(500));
    let fds_flooded = open_fds(pid);
    eprintln!("[{TEST}] agent fds: {fds_idle} idle, {fds_flooded} with {SLOW_CLIENTS} slow clients");
    assert!(
        fds_flooded <= fds_idle + lb_agent::metrics::server::MAX_CONNECTIONS + FD_SLACK,
        "{fds_flooded} fds with {SLOW_CLIENTS} slow clients: the cap of {} connections does not hold",
        lb_agent::metrics::server::MAX_CONNECTIONS
    );

    // Scrapes go on meanwhile, a half-closing client included.
    let (text, _) = scrape(&lab);
    assert!(text.contains(names::BUILD_INFO), "a scrape among slow clients is complete");
    let answer = in_namespace(&lab, LB, move || {
        let mut s = std::net::TcpStream::connect_timeout(&listen, Duration::from_secs(2)).expect("connecting");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).map(|_| answer)
    })
    .unwrap_or_else(|e| panic!("reading the answer after a half-close: {e}"));
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("a half-closed client got {} bytes: {answer:?}", answer.len()));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()));
    assert_eq!(length, Some(body.len()), "the whole body after a half-close");
    assert!(body.contains(names::BUILD_INFO));

    // Every slow client is cut off by the header timeout.
    let bound = lb_agent::metrics::server::HEADER_READ_TIMEOUT + SLACK;
    let open = slow.iter_mut().map(|s| closed_by_server(s, bound.saturating_sub(t0.elapsed()).max(Duration::from_millis(10)))).filter(|closed| !closed).count();
    assert_eq!(open, 0, "{open} of {SLOW_CLIENTS} slow clients still open {:?} after they connected", t0.elapsed());
    drop(slow);
    std::thread::sleep(Duration::from_millis(300));
    let (fds_after, rss_after) = (open_fds(pid), rss_anon_kib(pid));
    eprintln!("[{TEST}] slow clients closed after {:?}; agent fds {fds_after}, anonymous memory {rss_idle} KiB idle, {rss_after} KiB after", t0.elapsed());
    assert!(fds_after <= fds_idle + 2, "descriptors back to idle: {fds_after} (idle {fds_idle})");
    assert!(rss_after <= rss_idle + 8 * 1024, "memory back near idle: {rss_after} KiB (idle {rss_idle} KiB)");
    scrape(&lab);
    assert!(lab.agent.try_status().is_none(), "the agent exited; log:\n{}", lab.agent.log_tail(30));
}
