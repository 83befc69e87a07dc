//! Established connections survive what operators do to a running load
//! balancer: reloading a config with a new backend, killing the agent with
//! SIGKILL and starting it again, a reload with a bad config, draining and
//! then removing a backend.
//!
//! Each test holds many long-lived TCP connections (`lb-testclient
//! --hold-ms`: a message every 100 ms on each, answered by `lb-testsrv
//! --echo-port` with the backend's name) from distinct client ports through
//! the whole scenario, and counts the connections kept and broken. A
//! connection is kept when it never failed, every message was answered, and
//! one backend answered all of them. Needs root; run one at a time.
//!
//! The agent runs without `--unload-on-exit` (the balancer outlives it);
//! every test detaches in teardown.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lb_tests::agent::{self, Stats};
use lb_tests::client::HoldRecord;
use lb_tests::lab::{Lab, LabOptions, hold_records};
use lb_tests::topology::{self, LB, LB_V4, LB_V6, TopologyOptions, VIP_V4, backend_v4};

/// Backends in the topology; configs name a subset.
const HOSTS: usize = 4;
const ECHO_PORT: u16 = 7;
const CONNECTIONS: u32 = 32;
/// A message every 100 ms on each connection, as the issue asks.
const INTERVAL_MS: u64 = 100;
/// How long the connections of a scenario live.
const HOLD_MS: u64 = 5_000;
/// Extra time for a hold client to print its records after `HOLD_MS`.
const HOLD_SLACK: Duration = Duration::from_secs(10);
/// A flow table small enough to allocate quickly in every test.
const FLOW_TABLE_SIZE: u32 = 65_536;
/// A lost packet shows as a TCP retransmission, at least 200 ms (Linux's
/// minimum RTO) after the original: answers faster than that saw no loss.
const NO_LOSS_MS: f64 = 200.0;

fn can_run(test: &str) -> bool {
    topology::root_or_skip(test, "network namespaces, XDP")
}

/// The echo VIP 192.0.2.10:7/tcp over `backends` (topology index from 1, weight).
fn config(backends: &[(usize, u32)]) -> toml::Table {
    let mut s = format!(
        "[lb]\ninterface = \"eth0\"\ntunnel_source_v4 = \"{LB_V4}\"\ntunnel_source_v6 = \"{LB_V6}\"\nbpffs_dir = \"/unset\"\nflow_table_size = {FLOW_TABLE_SIZE}\n\n[[vip]]\nname = \"echo\"\naddress = \"{VIP_V4}\"\nport = {ECHO_PORT}\nprotocol = \"tcp\"\n"
    );
    for (i, weight) in backends {
        s += &format!("\n[[vip.backend]]\naddress = \"{}\"\nweight = {weight}\n", backend_v4(*i));
    }
    s.parse().expect("the generated config is valid TOML")
}

/// A lab whose balancer outlives its agent; detached when dropped.
struct Scenario(Lab);

impl Drop for Scenario {
    fn drop(&mut self) {
        // The last config the agent accepted (a test may leave a bad one on disk).
        let accepted = toml::to_string(&self.0.config).unwrap_or_default();
        if let Err(e) = self.0.write_config_text(&accepted).and_then(|_| self.0.detach()) {
            eprintln!("[restart] teardown: {e:#}");
        }
    }
}

fn start(initial: &[(usize, u32)]) -> Scenario {
    let bins = lb_tests::lab_bins!();
    let options = LabOptions { unload_on_exit: false, server_extra: vec!["--echo-port".into(), ECHO_PORT.to_string()], ..LabOptions::default() };
    let lab = Lab::start_with_options(bins, TopologyOptions { backends: HOSTS, ..Default::default() }, config(initial), options, &|m| eprintln!("[restart] {m}"))
        .unwrap_or_else(|e| panic!("starting the lab: {e:#}"));
    Scenario(lab)
}

fn target() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), ECHO_PORT)
}

fn hold(lab: &Lab, connections: u32, port_base: u16, hold_ms: u64) -> topology::Proc {
    lab.hold_client(target(), connections, port_base, hold_ms, INTERVAL_MS).unwrap_or_else(|e| panic!("{e:#}"))
}

fn finish(client: &topology::Proc, hold_ms: u64) -> Vec<HoldRecord> {
    hold_records(client, Duration::from_millis(hold_ms) + HOLD_SLACK).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Prints and returns (kept, broken); fails on a short count.
fn tally(what: &str, records: &[HoldRecord], expected: u32) -> (usize, usize) {
    assert_eq!(records.len(), expected as usize, "{what}: one record per connection");
    let kept = records.iter().filter(|r| r.kept()).count();
    let max_ms = records.iter().map(|r| r.max_ms).fold(0.0, f64::max);
    let messages: u32 = records.iter().map(|r| r.answered).sum();
    eprintln!(
        "[restart] {what}: {kept} connections kept, {} broken, of {}; {messages} messages answered, slowest answer {max_ms} ms",
        records.len() - kept,
        records.len()
    );
    (kept, records.len() - kept)
}

fn assert_all_kept(what: &str, records: &[HoldRecord], expected: u32) {
    let (_, broken) = tally(what, records, expected);
    let bad: Vec<&HoldRecord> = records.iter().filter(|r| !r.kept()).collect();
    assert_eq!(broken, 0, "{what}: broken connections: {bad:#?}");
}

fn stats(lab: &Lab) -> Stats {
    Stats::parse(&lab.stats_output(true).unwrap_or_else(|e| panic!("{e:#}"))).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The host name (`b1`, ...) `lb-agent lookup` gives a connection under the lab's config file.
fn ring_choice(lab: &Lab, r: &HoldRecord) -> String {
    let src: SocketAddr = r.src.parse().unwrap_or_else(|e| panic!("src {:?}: {e}", r.src));
    lab.predicted_backend(VIP_V4.into(), ECHO_PORT, agent::Proto::Tcp, src).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The XDP program id on the LB's interface (changes iff it was re-attached).
fn xdp_prog_id(lab: &Lab) -> String {
    let link = lab.topo.exec_ok(LB, "ip", &["-details", "link", "show", "dev", topology::IFACE]).unwrap();
    let at = link.find("prog/xdp id ").unwrap_or_else(|| panic!("no XDP program on the LB:\n{link}"));
    link[at..].split_whitespace().nth(2).unwrap_or_default().to_string()
}

fn assert_reload_ok(out: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: reload failed ({}): {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

/// (1) A new backend, reloaded: no connection breaks or moves, although the
/// new ring sends some of them elsewhere; new connections reach the new backend.
#[test]
fn reload_adding_a_backend_keeps_every_connection() {
    if !can_run("reload_adding_a_backend_keeps_every_connection") {
        return;
    }
    let mut s = start(&[(1, 1), (2, 1), (3, 1)]);
    let client = hold(&s.0, CONNECTIONS, 30_000, HOLD_MS);
    std::thread::sleep(Duration::from_secs(1));
    let out = s.0.reload(config(&[(1, 1), (2, 1), (3, 1), (4, 1)])).unwrap_or_else(|e| panic!("{e:#}"));
    let said = assert_reload_ok(&out, "adding b4");
    assert!(said.contains("1 backend(s) added"), "reload answer: {said}");
    let records = finish(&client, HOLD_MS);
    assert_all_kept("reload adding a backend", &records, CONNECTIONS);
    let moved_by_ring = records.iter().filter(|r| r.backend() != Some(ring_choice(&s.0, r).as_str())).count();
    eprintln!("[restart] the new ring places {moved_by_ring} of these connections elsewhere; the flow table kept them");

    let fresh = finish(&hold(&s.0, 64, 31_000, 500), 500);
    assert_all_kept("new connections after the reload", &fresh, 64);
    assert!(fresh.iter().any(|r| r.backend() == Some("b4")), "no new connection reached b4: {fresh:?}");
    s.0.check_running().unwrap_or_else(|e| panic!("{e:#}"));
}

/// (2) kill -9 the agent, wait, start it again: the balancer forwards all
/// along, without a visible loss; the new agent adopts it (same program, no
/// re-attach) and its counters continue.
#[test]
fn kill9_and_restart_keeps_every_connection() {
    if !can_run("kill9_and_restart_keeps_every_connection") {
        return;
    }
    let mut s = start(&[(1, 1), (2, 1), (3, 1)]);
    let client = hold(&s.0, CONNECTIONS, 32_000, HOLD_MS);
    std::thread::sleep(Duration::from_secs(1));
    let before = stats(&s.0);
    let prog = xdp_prog_id(&s.0);
    s.0.kill_agent().unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_millis(1500));
    let line = s.0.restart_agent().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(line.contains("adopted"), "the new agent should adopt the pinned balancer: {line}");
    assert_eq!(xdp_prog_id(&s.0), prog, "the program was re-attached");
    // A second agent for the same interface is refused while this one lives.
    let config_path = s.0.config_path.to_string_lossy().into_owned();
    let second = s.0.agent_command(&["run", "--config", &config_path]).unwrap_or_else(|e| panic!("{e:#}"));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success() && said.contains("already manages eth0"), "second agent: {said}");
    let records = finish(&client, HOLD_MS);
    assert_all_kept("kill -9 and restart", &records, CONNECTIONS);
    let max_ms = records.iter().map(|r| r.max_ms).fold(0.0, f64::max);
    assert!(max_ms < NO_LOSS_MS, "an answer took {max_ms} ms: a packet was lost and retransmitted");

    let after = stats(&s.0);
    let forwarded = (before.reason("forwarded"), after.reason("forwarded"));
    eprintln!("[restart] forwarded before kill {}, after restart {}; flow hits {} -> {}", forwarded.0, forwarded.1, before.flow("hit"), after.flow("hit"));
    assert!(forwarded.1 > forwarded.0, "counters did not continue from the pinned maps: {forwarded:?}");
    assert!(after.flow("hit") > before.flow("hit"), "flow hits did not continue");
    s.0.check_running().unwrap_or_else(|e| panic!("{e:#}"));
}

/// (3) A reload with an invalid config, and one that needs a full restart:
/// both refused with the reasons, nothing changes, connections carry on.
#[test]
fn invalid_reload_changes_nothing() {
    if !can_run("invalid_reload_changes_nothing") {
        return;
    }
    let mut s = start(&[(1, 1), (2, 1), (3, 1)]);
    let good = toml::to_string(&s.0.config).unwrap();
    let client = hold(&s.0, CONNECTIONS, 33_000, HOLD_MS);
    std::thread::sleep(Duration::from_secs(1));
    let before = stats(&s.0);

    let mut bad = config(&[(1, 5000), (2, 1), (3, 1)]);
    bad["vip"][0]["backend"][1]["address"] = toml::Value::String("198.51.100.x".into());
    let out = s.0.reload(bad).unwrap_or_else(|e| panic!("{e:#}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an invalid config was accepted: {stderr}");
    for needle in ["lb-agent.toml", "vip \"echo\".backend[0].weight", "5000", "backend[1].address", "198.51.100.x"] {
        assert!(stderr.contains(needle), "reload errors should name {needle:?}: {stderr}");
    }

    let mut resized = config(&[(1, 1), (2, 1), (3, 1)]);
    resized["lb"].as_table_mut().unwrap().insert("ring_size".into(), toml::Value::Integer(4099));
    let out = s.0.reload(resized).unwrap_or_else(|e| panic!("{e:#}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a ring size change was applied in place: {stderr}");
    assert!(stderr.contains("lb.ring_size: 65537 -> 4099") && stderr.contains("--full-restart"), "{stderr}");

    let records = finish(&client, HOLD_MS);
    assert_all_kept("invalid reloads", &records, CONNECTIONS);
    s.0.write_config_text(&good).unwrap();
    let after = stats(&s.0);
    // What the config and health decide (the traffic counters go on counting).
    let programmed = |stats: &Stats| -> Vec<_> {
        stats.vips[0].backends.iter().map(|m| (m.address.clone(), m.weight, m.backup, m.state.clone(), m.since_unix_ms)).collect()
    };
    assert_eq!(programmed(&after), programmed(&before), "the VIP's backends changed");
    for r in &records {
        assert_eq!(r.backend(), Some(ring_choice(&s.0, r).as_str()), "{r:?} is not where the old config puts it");
    }
    s.0.check_running().unwrap_or_else(|e| panic!("{e:#}"));
}

/// (4) Drain a backend (weight 0): its established connections continue,
/// new ones go elsewhere; then remove it: the other backends' connections
/// are untouched.
#[test]
fn drain_then_remove_keeps_established_connections() {
    if !can_run("drain_then_remove_keeps_established_connections") {
        return;
    }
    let mut s = start(&[(1, 1), (2, 1), (3, 1)]);
    let drained = "b1";
    let client = hold(&s.0, CONNECTIONS, 34_000, HOLD_MS);
    std::thread::sleep(Duration::from_secs(1));
    let out = s.0.reload(config(&[(1, 0), (2, 1), (3, 1)])).unwrap_or_else(|e| panic!("{e:#}"));
    assert_reload_ok(&out, "draining b1");

    let fresh = finish(&hold(&s.0, 64, 35_000, 500), 500);
    assert_all_kept("new connections while b1 drains", &fresh, 64);
    assert!(fresh.iter().all(|r| r.backend() != Some(drained)), "a new connection went to the drained b1: {fresh:?}");

    let records = finish(&client, HOLD_MS);
    assert_all_kept("connections established before the drain", &records, CONNECTIONS);
    let on_drained = records.iter().filter(|r| r.backend() == Some(drained)).count();
    eprintln!("[restart] {on_drained} connections on the drained b1 continued");
    assert!(on_drained > 0, "no connection was on b1 to begin with: {records:?}");

    let others = hold(&s.0, CONNECTIONS, 36_000, 2_000);
    std::thread::sleep(Duration::from_millis(500));
    let out = s.0.reload(config(&[(2, 1), (3, 1)])).unwrap_or_else(|e| panic!("{e:#}"));
    let said = assert_reload_ok(&out, "removing b1");
    assert!(said.contains("1 removed"), "reload answer: {said}");
    let records = finish(&others, 2_000);
    assert_all_kept("connections to the remaining backends while b1 is removed", &records, CONNECTIONS);
    let addresses: Vec<IpAddr> = stats(&s.0).vips[0].member_addresses();
    assert!(!addresses.contains(&IpAddr::from(backend_v4(1))), "b1 still configured: {addresses:?}");
    s.0.check_running().unwrap_or_else(|e| panic!("{e:#}"));
}
