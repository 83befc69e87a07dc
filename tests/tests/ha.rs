//! Several LB hosts as one, with real routing daemons: two LB hosts each
//! running `lb-agent` and BIRD, a router running BIRD with ECMP over BGP,
//! three backends (see `lb_tests::ha_topology`).
//!
//! - identical fingerprints for configs in another order on another interface;
//! - active-active: an LB host crashes (link down, agent and BIRD killed);
//!   every connection that crossed it continues through the other one, on
//!   its original backend;
//! - active-passive: traffic only through the active host; it crashes; the
//!   standby takes over within the BGP hold time, connections survive;
//! - an LB host joins: the flows ECMP re-hashes onto it keep their backends;
//! - a VIP whose backends all fail is withdrawn, and announced again when
//!   one recovers; a reload to standby re-announces with the worse
//!   preference; a killed agent's routes go with `lb-agent detach`;
//! - `lb-agent maintenance` withdraws, drains and stops without breaking a
//!   connection.
//!
//! BIRD runs BFD as shipped (100 ms x 3): after a crash the router must
//! converge within [`CONVERGENCE_BOUND`] and the connections that crossed
//! the dead host stall no longer than [`STALL_BOUND`]. Every scenario that
//! moves traffic runs once per address family (`_ipv4`, `_ipv6`).
//!
//! Each prints its counts and convergence times. Needs root; run one at a time.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use lb_tests::agent::{self, Stats};
use lb_tests::client::HoldRecord;
use lb_tests::ha_topology::{
    self, BFD_INTERVAL_MS, BFD_MULTIPLIER, BGP_UP, ECHO_PORT, Family, HaLab, LB2_IFACE, Role,
};
use lb_tests::lab::{LabBins, hold_records};
use lb_tests::topology::{self, IFACE};

const CONNECTIONS: u32 = 64;
const INTERVAL_MS: u64 = 100;
/// Long enough to span the failure and the BGP hold time with room to spare.
const HOLD_MS: u64 = 10_000;
/// An answer may wait this long: the hold time plus TCP's retransmission backoff.
const ANSWER_TIMEOUT_MS: u64 = 15_000;
const HOLD_SLACK: Duration = Duration::from_secs(20);
/// Connections talk for a moment before anything fails.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long the tests wait for the routes to move after a crash (the
/// bound they assert is [`CONVERGENCE_BOUND`]; this only ends the wait).
const CONVERGENCE_WAIT: Duration = Duration::from_secs(10);
/// Issue 15's targets with BFD: the router stops using a crashed LB host
/// within 0.5 s; a connection through it waits at most 1 s for an answer.
const CONVERGENCE_BOUND: Duration = Duration::from_millis(500);
const STALL_BOUND_MS: f64 = 1000.0;
/// An answer slower than this waited for a TCP retransmission (Linux's minimum RTO is 200 ms).
const STALLED_MS: f64 = 200.0;
/// Health checks (200 ms, 2 fails/passes) plus the announcer's round.
const HEALTH_TO_ROUTER: Duration = Duration::from_secs(10);

fn can_run(test: &str) -> bool {
    topology::root_or_skip(test, "network namespaces, XDP, BIRD")
}

fn bins() -> LabBins {
    lb_tests::lab_bins!()
}

fn start(roles: [Role; 2]) -> HaLab {
    HaLab::start(bins(), roles, &|m| eprintln!("[ha] {m}")).unwrap_or_else(|e| panic!("{e:#}"))
}

fn target(family: Family) -> SocketAddr {
    SocketAddr::new(family.vip_all(), ECHO_PORT)
}

fn hold(lab: &HaLab, family: Family, port_base: u16) -> topology::Proc {
    lab.hold_client(target(family), CONNECTIONS, port_base, HOLD_MS, INTERVAL_MS, ANSWER_TIMEOUT_MS).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `wait_next_hops_of` that panics with its message.
fn wait_hops(lab: &HaLab, vip: IpAddr, expected: &[IpAddr], limit: Duration) -> Duration {
    lab.wait_next_hops_of(vip, expected, limit).unwrap_or_else(|e| panic!("{e:#}"))
}

/// One `#[test]` per address family for a scenario `fn(Family)`.
macro_rules! both_families {
    ($scenario:ident: $v4:ident, $v6:ident) => {
        #[test]
        fn $v4() {
            if can_run(stringify!($v4)) {
                $scenario(Family::V4);
            }
        }
        #[test]
        fn $v6() {
            if can_run(stringify!($v6)) {
                $scenario(Family::V6);
            }
        }
    };
}

fn finish(client: &topology::Proc) -> Vec<HoldRecord> {
    let records = hold_records(client, Duration::from_millis(HOLD_MS) + HOLD_SLACK).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(records.len(), CONNECTIONS as usize, "one record per connection");
    records
}

/// The LB host each connection crosses (by client port), from the LB
/// hosts' flow tables; every connection must be in exactly one.
fn lb_per_connection(lab: &HaLab, family: Family) -> BTreeMap<u16, IpAddr> {
    let mut out = BTreeMap::new();
    for (index, address) in [(0, family.lb(0)), (1, family.lb(1))] {
        for port in lab.flows_through(index, ECHO_PORT).unwrap_or_else(|e| panic!("{e:#}")) {
            assert!(out.insert(port, address).is_none(), "client port {port} in both flow tables");
        }
    }
    assert_eq!(out.len(), CONNECTIONS as usize, "every connection in one LB host's flow table: {out:?}");
    out
}

fn port_of(r: &HoldRecord) -> u16 {
    r.src.parse::<SocketAddr>().unwrap_or_else(|e| panic!("record source {:?}: {e}", r.src)).port()
}

/// Prints kept/broken of the connections that crossed `via` and of the
/// others; asserts none broke. Returns the longest stall (ms) of those
/// that crossed `via`.
fn report(what: &str, records: &[HoldRecord], lbs: &BTreeMap<u16, IpAddr>, via: IpAddr, convergence: Duration) -> f64 {
    let (crossed, others): (Vec<&HoldRecord>, Vec<&HoldRecord>) = records.iter().partition(|r| lbs.get(&port_of(r)) == Some(&via));
    let kept = |rs: &[&HoldRecord]| rs.iter().filter(|r| r.kept()).count();
    let stall = |rs: &[&HoldRecord]| rs.iter().map(|r| r.max_ms).fold(0.0, f64::max);
    let stalled = |rs: &[&HoldRecord]| rs.iter().filter(|r| r.max_ms > STALLED_MS).count();
    eprintln!(
        "[ha] {what}: {} connections crossed the LB host taken out ({via}): {} survived on their original backend, {} broken ({} stalled, longest {:.0} ms); \
         the other {}: {} survived, {} broken ({} stalled, longest {:.0} ms); router converged {:.2} s after it went (BFD {BFD_INTERVAL_MS} ms x {BFD_MULTIPLIER})",
        crossed.len(),
        kept(&crossed),
        crossed.len() - kept(&crossed),
        stalled(&crossed),
        stall(&crossed),
        others.len(),
        kept(&others),
        others.len() - kept(&others),
        stalled(&others),
        stall(&others),
        convergence.as_secs_f64()
    );
    let bad: Vec<&HoldRecord> = records.iter().filter(|r| !r.kept()).collect();
    assert!(bad.is_empty(), "{what}: {} connections broken or moved to another backend: {bad:?}", bad.len());
    stall(&crossed)
}

/// Issue 15's bounds on a crash, with the measured figures in the message.
fn assert_fast_failover(what: &str, convergence: Duration, stall_ms: f64) {
    assert!(
        convergence <= CONVERGENCE_BOUND,
        "{what}: the router converged {:.3} s after the crash, more than {:.1} s: BFD ({BFD_INTERVAL_MS} ms x {BFD_MULTIPLIER}) should have noticed; \
         see BIRD's log in the run's log directory",
        convergence.as_secs_f64(),
        CONVERGENCE_BOUND.as_secs_f64()
    );
    assert!(
        stall_ms <= STALL_BOUND_MS,
        "{what}: a connection through the crashed host waited {stall_ms:.0} ms for an answer, more than {STALL_BOUND_MS:.0} ms \
         (convergence took {:.3} s; TCP retransmits after 0.2, 0.6, 1.4 s)",
        convergence.as_secs_f64()
    );
}

fn stats(lab: &HaLab, index: usize) -> Stats {
    let out = lab.agent_command(index, &["stats", "--json"]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.status.success(), "lb-agent stats: {}", String::from_utf8_lossy(&out.stderr));
    Stats::parse(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The `fingerprint` line of `lb-agent check`.
fn fingerprint(config: &Path) -> String {
    let out = std::process::Command::new(agent::agent_bin().unwrap_or_else(|e| panic!("{e:#}")))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run lb-agent check");
    assert!(out.status.success(), "lb-agent check {}: {}", config.display(), String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint").map(|f| f.trim().to_string()))
        .unwrap_or_else(|| panic!("no fingerprint line in:\n{stdout}"))
}

#[test]
fn lb_hosts_agree_whatever_the_config_order_and_interface() {
    // Pure: `check` touches nothing in the kernel, so no root needed.
    let dir = std::env::temp_dir().join(format!("lb-ha-fingerprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (bpffs, run) = (Path::new("/sys/fs/bpf/unused"), Path::new("/run/unused"));
    let a = write("a.toml", ha_topology::agent_config(IFACE, bpffs, run, Role::Active, false));
    let b = write("b.toml", ha_topology::agent_config(LB2_IFACE, &bpffs.join("2"), &run.join("2"), Role::Standby, true));
    let (fa, fb) = (fingerprint(&a), fingerprint(&b));
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("[ha] fingerprints: {fa} (eth0, file order) and {fb} (ens5, reversed order, standby)");
    assert_eq!(fa, fb, "same VIPs and backends in another order, on another interface, must fingerprint the same");
}

both_families!(crash_active_active: active_active_every_connection_survives_an_lb_host_crash_ipv4, active_active_every_connection_survives_an_lb_host_crash_ipv6);

fn crash_active_active(family: Family) {
    let lab = start([Role::Active, Role::Active]);
    let (vip, lb1, lb2) = (family.vip_all(), family.lb(0), family.lb(1));
    let up = wait_hops(&lab, vip, &[lb1, lb2], BGP_UP);
    eprintln!("[ha] both LB hosts announced {vip} after {:.1} s", up.as_secs_f64());
    let client = hold(&lab, family, 41_000);
    std::thread::sleep(WARM_UP);
    let lbs = lb_per_connection(&lab, family);
    let via_lb1 = lbs.values().filter(|v| **v == lb1).count();
    eprintln!("[ha] the router spreads the {CONNECTIONS} connections: {via_lb1} via lb, {} via lb2", lbs.len() - via_lb1);
    assert!(via_lb1 > 0 && via_lb1 < lbs.len(), "ECMP should use both LB hosts: {lbs:?}");

    let failed_at = lab.crash_lb_at(0).unwrap_or_else(|e| panic!("{e:#}"));
    wait_hops(&lab, vip, &[lb2], CONVERGENCE_WAIT);
    let convergence = failed_at.elapsed();
    let records = finish(&client);
    let what = format!("{} active-active, lb crashed", family.name());
    let stall = report(&what, &records, &lbs, lb1, convergence);
    assert_fast_failover(&what, convergence, stall);
}

both_families!(crash_active_passive: active_passive_the_standby_takes_over_at_once_ipv4, active_passive_the_standby_takes_over_at_once_ipv6);

fn crash_active_passive(family: Family) {
    let lab = start([Role::Active, Role::Standby]);
    let (vip, lb1, lb2) = (family.vip_all(), family.lb(0), family.lb(1));
    lab.wait_bgp_routes(vip, 2, BGP_UP).unwrap_or_else(|e| panic!("{e:#}"));
    wait_hops(&lab, vip, &[lb1], BGP_UP);
    let client = hold(&lab, family, 42_000);
    std::thread::sleep(WARM_UP);
    let lbs = lb_per_connection(&lab, family);
    assert!(lbs.values().all(|v| *v == lb1), "every connection through the active host: {lbs:?}");
    let (active, standby) = (stats(&lab, 0).vip_packets_total(), stats(&lab, 1).vip_packets_total());
    eprintln!("[ha] before the failure: {active} VIP packets through the active host, {standby} through the standby");
    assert!(active > 0 && standby == 0, "traffic only through the active host: {active} / {standby}");

    let failed_at = lab.crash_lb_at(0).unwrap_or_else(|e| panic!("{e:#}"));
    wait_hops(&lab, vip, &[lb2], CONVERGENCE_WAIT);
    let convergence = failed_at.elapsed();
    let records = finish(&client);
    assert!(stats(&lab, 1).vip_packets_total() > 0, "the standby carries the traffic now");
    let what = format!("{} active-passive, active crashed", family.name());
    let stall = report(&what, &records, &lbs, lb1, convergence);
    assert_fast_failover(&what, convergence, stall);
}

both_families!(
    withdraw_and_announce: a_vip_without_healthy_backends_is_withdrawn_and_announced_again_ipv4,
    a_vip_without_healthy_backends_is_withdrawn_and_announced_again_ipv6
);

fn withdraw_and_announce(family: Family) {
    let mut lab = start([Role::Active, Role::Active]);
    let (all, solo, lb1, lb2) = (family.vip_all(), family.vip_solo(), family.lb(0), family.lb(1));
    for vip in [all, solo] {
        wait_hops(&lab, vip, &[lb1, lb2], BGP_UP);
    }
    // b3 is the solo VIP's only backend (and one of the other's three).
    lab.stop_server(3).unwrap_or_else(|e| panic!("{e:#}"));
    let withdrawn = wait_hops(&lab, solo, &[], HEALTH_TO_ROUTER);
    assert_eq!(lab.next_hops_of(all).unwrap().len(), 2, "{all} keeps two healthy backends and stays announced");
    lab.start_server(3).unwrap_or_else(|e| panic!("{e:#}"));
    let back = wait_hops(&lab, solo, &[lb1, lb2], HEALTH_TO_ROUTER);
    // lb2 becomes a standby by reload: its routes change metric without a
    // withdrawal (the router keeps both), and the router prefers lb.
    let config = std::fs::read_to_string(&lab.lbs[1].config_path).unwrap();
    std::fs::write(&lab.lbs[1].config_path, config.replace("role = \"active\"", "role = \"standby\"")).unwrap();
    let out = lab.agent_command(1, &["reload"]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.status.success(), "lb-agent reload: {}", String::from_utf8_lossy(&out.stderr));
    let demoted = wait_hops(&lab, all, &[lb1], HEALTH_TO_ROUTER);
    lab.wait_bgp_routes(all, 2, HEALTH_TO_ROUTER).unwrap_or_else(|e| panic!("{e:#}"));

    // A killed agent leaves its routes (its pinned balancer still
    // forwards); `lb-agent detach` removes both.
    lab.lbs[1].agent.kill().unwrap_or_else(|e| panic!("{e:#}"));
    let out = lab.agent_command(1, &["detach"]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.status.success(), "lb-agent detach: {}", String::from_utf8_lossy(&out.stderr));
    let started = Instant::now();
    lab.wait_bgp_routes(all, 1, HEALTH_TO_ROUTER).unwrap_or_else(|e| panic!("{e:#}"));
    let detached = started.elapsed();
    eprintln!(
        "[ha] {} {solo}: withdrawn from the router {:.2} s after its only backend failed, announced again {:.2} s after it recovered; \
         lb2 demoted to standby by reload: the router preferred lb after {:.2} s; \
         lb2's routes left the router {:.2} s after `lb-agent detach` of its killed agent",
        family.name(),
        withdrawn.as_secs_f64(),
        back.as_secs_f64(),
        demoted.as_secs_f64(),
        detached.as_secs_f64()
    );
}

both_families!(
    maintenance: maintenance_withdraws_drains_and_stops_without_breaking_a_connection_ipv4,
    maintenance_withdraws_drains_and_stops_without_breaking_a_connection_ipv6
);

fn maintenance(family: Family) {
    let lab = start([Role::Active, Role::Active]);
    let (vip, lb1, lb2) = (family.vip_all(), family.lb(0), family.lb(1));
    wait_hops(&lab, vip, &[lb1, lb2], BGP_UP);
    let client = hold(&lab, family, 43_000);
    std::thread::sleep(WARM_UP);
    let lbs = lb_per_connection(&lab, family);

    let started = Instant::now();
    let out = lab.agent_command(0, &["maintenance"]).unwrap_or_else(|e| panic!("{e:#}"));
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "lb-agent maintenance: {}{answer}", String::from_utf8_lossy(&out.stderr));
    assert!(answer.contains("traffic drained"), "the drain ended quietly: {answer}");
    // Both families' VIPs go: maintenance is per host, not per VIP.
    for f in Family::BOTH {
        assert_eq!(lab.next_hops_of(f.vip_all()).unwrap(), [f.lb(1)].into(), "lb withdrew {}", f.vip_all());
    }
    let status = lab.lbs[0].agent.wait_exit(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "the agent stops after maintenance: {status}");
    eprintln!("[ha] lb-agent maintenance took {:.1} s: {}", took.as_secs_f64(), answer.trim());
    let records = finish(&client);
    report(&format!("{} maintenance of lb", family.name()), &records, &lbs, lb1, took);
}

both_families!(
    join: flows_that_ecmp_moves_to_a_new_lb_host_keep_their_backends_ipv4,
    flows_that_ecmp_moves_to_a_new_lb_host_keep_their_backends_ipv6
);

fn join(family: Family) {
    let mut lab = start([Role::Active, Role::Active]);
    let (vip, lb1, lb2) = (family.vip_all(), family.lb(0), family.lb(1));
    wait_hops(&lab, vip, &[lb1, lb2], BGP_UP);
    // lb2 leaves the cluster (its BIRD stops; its balancer keeps running, empty).
    lab.stop_bird(1).unwrap_or_else(|e| panic!("{e:#}"));
    wait_hops(&lab, vip, &[lb1], BGP_UP);
    let client = hold(&lab, family, 44_000);
    std::thread::sleep(WARM_UP);
    let before = lb_per_connection(&lab, family);
    assert!(before.values().all(|v| *v == lb1), "all through lb while lb2 is out: {before:?}");

    // lb2 joins: the router re-hashes some flows onto it.
    let joined_at = Instant::now();
    lab.start_bird(1).unwrap_or_else(|e| panic!("{e:#}"));
    wait_hops(&lab, vip, &[lb1, lb2], BGP_UP);
    let converged = joined_at.elapsed();
    std::thread::sleep(WARM_UP);
    let moved = lab.flows_through(1, ECHO_PORT).unwrap_or_else(|e| panic!("{e:#}"));
    let records = finish(&client);
    let moved_kept = records.iter().filter(|r| moved.contains(&port_of(r)) && r.kept()).count();
    eprintln!(
        "[ha] {} lb2 joined (router had both routes {:.2} s after its BIRD started): ECMP moved {} of {CONNECTIONS} connections onto it, {moved_kept} of them kept their backend",
        family.name(),
        converged.as_secs_f64(),
        moved.len()
    );
    assert!(!moved.is_empty(), "the re-hash should move some connections to lb2");
    let bad: Vec<&HoldRecord> = records.iter().filter(|r| !r.kept()).collect();
    assert!(bad.is_empty(), "{} connections broken or moved to another backend: {bad:?}", bad.len());
}

/// The shipped BIRD configs parse as they are and as the tests template them.
#[test]
fn contrib_bird_configs_parse() {
    let dir = std::env::temp_dir().join(format!("lbc-bird-parse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root = lb_tests::agent::workspace_root().join("contrib/bird");
    let mut files = Vec::new();
    for name in ["lb-host.conf", "router.conf"] {
        files.push(root.join(name));
        // The timings the tests assert (and the README reports) are the shipped timers'.
        let shipped = std::fs::read_to_string(root.join(name)).unwrap();
        for line in [format!("define BFD_INTERVAL_MS = {BFD_INTERVAL_MS};"), format!("define BFD_MULTIPLIER  = {BFD_MULTIPLIER};")] {
            assert!(shipped.contains(&line), "{name} does not ship `{line}`, the BFD timers the HA tests use");
        }
        let templated = dir.join(name);
        let text = ha_topology::bird_config(name, &[("HOLD_TIME", "5".into()), ("BFD_MULTIPLIER", "4".into())]).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(text.contains("define BFD_MULTIPLIER = 4;") && text.contains("bfd on;"), "{name} templated:\n{text}");
        std::fs::write(&templated, text).unwrap();
        files.push(templated);
    }
    for file in &files {
        let out = match std::process::Command::new("bird").arg("-p").arg("-c").arg(file).output() {
            Ok(out) => out,
            Err(e) => panic!("running `bird -p -c {}`: {e}; install BIRD 2 (`cargo xtask setup`)", file.display()),
        };
        assert!(out.status.success(), "`bird -p -c {}`: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
