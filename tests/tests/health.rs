//! Health checks end to end, in namespaces with real servers (see
//! `lb_tests::lab`): a stopped backend leaves the ring and comes back, the
//! other backends' flows never move, backups, HTTP status and hung backends.
//! Root only, like `e2e.rs`; run with `--test-threads=1`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_tests::agent::{Proto, Stats};
use lb_tests::client::ClientRecord;
use lb_tests::lab::Lab;
use lb_tests::topology::{self, LB_V4, LB_V6, VIP_V4, backend_v4};

const BACKENDS: usize = 3;
const TIMEOUT_MS: u64 = 2000;
/// Short checks keep the suite fast; the bounds below derive from them.
const INTERVAL: Duration = Duration::from_millis(300);
const CHECK_TIMEOUT: Duration = Duration::from_millis(200);
const FAILS: u32 = 2;
const PASSES: u32 = 2;
/// Scheduling slack on a loaded 2-core machine (the agent, the servers and
/// another engineer's tests share it).
const SLACK: Duration = Duration::from_secs(2);
const PORT: u16 = 80;

fn can_run(test: &str) -> bool {
    topology::root_or_skip(test, "network namespaces, XDP")
}

/// One TCP VIP on b1..b3 with health checks; `backend_extra[i]` goes into
/// backend i's table (e.g. `backup = true`), `health_extra` into `[vip.health]`.
fn config(health_extra: &str, backend_extra: &[&str]) -> toml::Table {
    let mut s = format!(
        "[lb]\ninterface = \"eth0\"\ntunnel_source_v4 = \"{LB_V4}\"\ntunnel_source_v6 = \"{LB_V6}\"\nbpffs_dir = \"/unset\"\n\
         \n[[vip]]\nname = \"web\"\naddress = \"{VIP_V4}\"\nport = {PORT}\nprotocol = \"tcp\"\n\
         [vip.health]\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nfails = {FAILS}\npasses = {PASSES}\n{health_extra}\n",
        INTERVAL.as_millis(),
        CHECK_TIMEOUT.as_millis()
    );
    for i in 1..=BACKENDS {
        let extra = backend_extra.get(i - 1).copied().unwrap_or("");
        s += &format!("\n[[vip.backend]]\naddress = \"{}\"\n{extra}\n", backend_v4(i));
    }
    s.parse().expect("valid TOML")
}

fn start(test: &str, config: toml::Table) -> Lab {
    let bins = lb_tests::lab_bins!();
    Lab::start(bins, BACKENDS, config, &|m| eprintln!("[{test}] {m}")).unwrap_or_else(|e| panic!("starting the lab: {e:#}"))
}

fn stats(lab: &Lab) -> Stats {
    Stats::parse(&lab.stats_output(true).unwrap_or_else(|e| panic!("{e:#}"))).unwrap()
}

/// The state (`up`, `down`) `stats` shows for backend `i` (1-based) and its last reason.
fn member(stats: &Stats, i: usize) -> (String, String) {
    let v = stats.vip(VIP_V4.into(), PORT, Proto::Tcp).unwrap();
    let addr = backend_v4(i).to_string();
    let m = v.backends.iter().find(|m| m.address == addr).unwrap_or_else(|| panic!("{addr} not in {v:?}"));
    (m.state.clone().unwrap_or_default(), m.reason.clone().unwrap_or_default())
}

/// Polls `stats` until `done` holds; returns how long it took. Panics after `limit`.
fn wait_until(lab: &Lab, limit: Duration, what: &str, done: impl Fn(&Stats) -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        let s = stats(lab);
        if done(&s) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}; stats: {s:?}\nagent log:\n{}", lab.agent.log_tail(30));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `count` connections from source ports `base..`; all must succeed.
/// Returns source port -> backend name.
fn connect_all(lab: &Lab, base: u16, count: u32, what: &str) -> BTreeMap<u16, String> {
    let records: Vec<ClientRecord> =
        lab.client(Proto::Tcp, SocketAddr::new(VIP_V4.into(), PORT), count, Some(base), TIMEOUT_MS).unwrap_or_else(|e| panic!("{e:#}"));
    let failed: Vec<&ClientRecord> = records.iter().filter(|r| !r.ok).collect();
    assert!(failed.is_empty(), "{what}: {} connections failed: {failed:?}", failed.len());
    assert_eq!(records.len(), count as usize, "{what}");
    records.iter().map(|r| (r.src_addr().unwrap().port(), r.backend.clone().unwrap())).collect()
}

fn down_bound() -> Duration {
    INTERVAL * FAILS + CHECK_TIMEOUT + Duration::from_secs(1)
}

#[test]
fn stopped_backend_leaves_and_returns_without_moving_other_flows() {
    const TEST: &str = "stopped_backend_leaves_and_returns_without_moving_other_flows";
    if !can_run(TEST) {
        return;
    }
    const N: u32 = 60;
    const BASE: u16 = 21000;
    let mut lab = start(TEST, config("", &[]));
    let before = connect_all(&lab, BASE, N, "all up");
    assert!(before.values().any(|b| b == "b2"), "b2 got no flow: {before:?}");

    lab.stop_server(1).unwrap();
    let stopped = Instant::now();
    let detected = wait_until(&lab, down_bound() + SLACK, "b2 marked down", |s| member(s, 2).0 == "down");
    let (_, reason) = member(&stats(&lab), 2);
    assert_eq!(reason, "refused");
    // The bound: within interval × fails + timeout + 1 s every new connection succeeds.
    std::thread::sleep(down_bound().saturating_sub(stopped.elapsed()));
    let during = connect_all(&lab, BASE, N, "b2 stopped");
    let moved: Vec<u16> = before.iter().filter(|(p, b)| *b != "b2" && during[*p] != **b).map(|(p, _)| *p).collect();
    assert!(moved.is_empty(), "flows of healthy backends moved: {moved:?}");
    assert!(during.values().all(|b| b != "b2"));
    let share = before.values().filter(|b| *b == "b2").count() as f64 / f64::from(N);
    eprintln!("[{TEST}] b2 marked down after {detected:?}; {:.0}% of flows moved (all of them b2's)", share * 100.0);

    // A reload that leaves this VIP as it is (it adds another VIP): the VIP
    // keeps its health state and its ring, so b2 stays down and no flow moves.
    let mut more = lab.config.clone();
    let vips = more.get_mut("vip").and_then(|v| v.as_array_mut()).expect("[[vip]] in the config");
    let mut extra = vips[0].as_table().expect("a VIP table").clone();
    extra.insert("name".into(), "extra".into());
    extra.insert("port".into(), (i64::from(PORT) + 1).into());
    extra.insert("health".into(), toml::Value::Table([("check".to_string(), "none".into())].into_iter().collect()));
    vips.push(extra.into());
    let out = lab.reload(more).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.status.success(), "reload adding a VIP: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(member(&stats(&lab), 2).0, "down", "b2 stays down across a reload that leaves its VIP unchanged");
    let reloaded = connect_all(&lab, BASE, N, "after a reload adding a VIP");
    assert_eq!(reloaded, during, "a reload that leaves the VIP unchanged moves none of its flows");

    lab.start_server(1, &[]).unwrap();
    let up_bound = INTERVAL * PASSES + INTERVAL + SLACK;
    let back = wait_until(&lab, up_bound, "b2 marked up", |s| member(s, 2).0 == "up");
    eprintln!("[{TEST}] b2 marked up {back:?} after its restart");
    let after = connect_all(&lab, BASE, N, "b2 back");
    assert_eq!(after, before, "with b2 back every flow goes where it went before");
    lab.check_running().unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn backup_serves_only_without_primaries() {
    const TEST: &str = "backup_serves_only_without_primaries";
    if !can_run(TEST) {
        return;
    }
    const N: u32 = 30;
    let mut lab = start(TEST, config("", &["", "", "backup = true"]));
    let t = connect_all(&lab, 22000, N, "primaries up");
    assert!(t.values().all(|b| b != "b3"), "the backup got flows while primaries are up: {t:?}");

    lab.stop_server(0).unwrap();
    lab.stop_server(1).unwrap();
    wait_until(&lab, down_bound() + SLACK, "serving from the backup", |s| {
        s.vip(VIP_V4.into(), PORT, Proto::Tcp).unwrap().health.as_deref() == Some("backup")
    });
    let t = connect_all(&lab, 22100, N, "primaries down");
    assert!(t.values().all(|b| b == "b3"), "{t:?}");

    lab.start_server(0, &[]).unwrap();
    wait_until(&lab, INTERVAL * PASSES + INTERVAL + SLACK, "b1 back", |s| member(s, 1).0 == "up");
    let t = connect_all(&lab, 22200, N, "b1 back");
    assert!(t.values().all(|b| b == "b1"), "new flows must leave the backup: {t:?}");
}

#[test]
fn http_500_and_hung_backend_are_marked_down() {
    const TEST: &str = "http_500_and_hung_backend_are_marked_down";
    if !can_run(TEST) {
        return;
    }
    let mut lab = start(TEST, config("check = \"http\"\nuri = \"/health\"", &[]));
    wait_until(&lab, SLACK, "HTTP checks pass", |s| (1..=BACKENDS).all(|i| member(s, i) == ("up".into(), "passed".into())));
    lab.stop_server(1).unwrap();
    lab.start_server(1, &["--http-status", "500"]).unwrap();
    lab.stop_server(2).unwrap();
    lab.start_server(2, &["--hang"]).unwrap();
    wait_until(&lab, down_bound() + SLACK, "b2 and b3 down", |s| member(s, 2).0 == "down" && member(s, 3).0 == "down");
    let s = stats(&lab);
    assert_eq!(member(&s, 2).1, "http_status 500");
    assert_eq!(member(&s, 3).1, "timeout");
    assert_eq!(s.vip(VIP_V4.into(), PORT, Proto::Tcp).unwrap().health.as_deref(), Some("degraded"));
    let t = connect_all(&lab, 23000, 20, "only b1 healthy");
    assert!(t.values().all(|b| b == "b1"), "{t:?}");
}

/// DSR-aware checks go to the VIP, encapsulated toward each backend like real
/// traffic: a backend whose server answers on its own address but which does
/// not own the VIP fails them; backends with the VIP on lo pass.
#[test]
fn dsr_checks_fail_a_backend_without_the_vip() {
    const TEST: &str = "dsr_checks_fail_a_backend_without_the_vip";
    if !can_run(TEST) {
        return;
    }
    let lab = start(TEST, config("dsr = true", &[]));
    let b1 = topology::backend_name(1);
    lab.topo.exec_ok(&b1, "ip", &["addr", "del", &format!("{VIP_V4}/32"), "dev", "lo"]).unwrap_or_else(|e| panic!("{e:#}"));
    let took = wait_until(&lab, down_bound() + SLACK, "b1 down, b2 and b3 up by DSR checks", |s| {
        member(s, 1).0 == "down" && member(s, 2) == ("up".into(), "passed".into()) && member(s, 3) == ("up".into(), "passed".into())
    });
    eprintln!("[{TEST}] b1 marked down {took:?} after losing the VIP");
    // A check of b1's own address would still pass: its server is fine.
    let direct = lab
        .client(Proto::Tcp, SocketAddr::new(backend_v4(1).into(), PORT), 1, None, TIMEOUT_MS)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(direct.iter().all(|r| r.ok), "b1 answers on its own address: {direct:?}");
    let t = connect_all(&lab, 24000, 20, "b1 out of the ring");
    assert!(t.values().all(|b| *b != b1), "no new connection reaches b1: {t:?}");
}
