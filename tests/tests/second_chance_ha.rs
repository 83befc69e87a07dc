//! Second chance across LB hosts, with real routing daemons (see
//! `lb_tests::ha_topology`): two active LB hosts behind a BIRD router with
//! ECMP, connections spread over both; the backend set changes on both
//! hosts (b4 joins, so ring slots move), then one LB host crashes and its
//! flows cross to the other.
//!
//! - `flow_state = "backend"`: no LB host holds TCP flow state, both have
//!   the same rings and the same previous owners, so the crash changes
//!   nothing for any flow: every connection survives, the moved ones
//!   through their new owner's redirect to their previous owner.
//! - `flow_state = "lb"` (the flow table): a flow whose slot moved lives on
//!   through the flow-table entry of the LB host it crosses; the other host
//!   has no entry for it, so once the crash sends it there it follows the
//!   new ring and breaks. Exactly those break (at least one: the evidence).
//!
//! Each prints its counts. Needs root; run one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_tests::agent::{Proto, Stats};
use lb_tests::client::HoldRecord;
use lb_tests::ha_topology::{BGP_UP, ECHO_PORT, HOLD_TIME_S, HaLab, HaOptions, HaVips, LB1_V4, LB2, LB2_V4, Role, VIP_ALL};
use lb_tests::lab::{LabBins, hold_records};
use lb_tests::owners::RingSnapshot;
use lb_tests::topology;

const CONNECTIONS: u32 = 64;
const INTERVAL_MS: u64 = 100;
/// Spans the warm-up, the reloads of both hosts, the crash and the BGP hold time.
const HOLD_MS: u64 = 16_000;
/// An answer may wait this long: the hold time plus TCP's retransmission backoff.
const ANSWER_TIMEOUT_MS: u64 = 15_000;
const HOLD_SLACK: Duration = Duration::from_secs(20);
/// Connections talk for a moment before (and after) anything changes.
const WARM_UP: Duration = Duration::from_secs(1);
const CONVERGENCE_SLACK: Duration = Duration::from_secs(5);
/// b1..b3 serve the VIP; b4 joins.
const HOSTS: usize = 4;

fn can_run(test: &str) -> bool {
    topology::root_or_skip(test, "network namespaces, XDP, BIRD")
}

fn bins() -> LabBins {
    lb_tests::lab_bins!()
}

fn target() -> SocketAddr {
    SocketAddr::new(VIP_ALL.into(), ECHO_PORT)
}

fn port_of(r: &HoldRecord) -> u16 {
    r.src.parse::<SocketAddr>().unwrap_or_else(|e| panic!("record source {:?}: {e}", r.src)).port()
}

fn stats(lab: &HaLab, index: usize) -> Stats {
    let out = lab.agent_command(index, &["stats", "--json", "--interval", "0"]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.status.success(), "lb-agent stats: {}", String::from_utf8_lossy(&out.stderr));
    Stats::parse(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|e| panic!("{e:#}"))
}

fn vip_packets(lab: &HaLab, index: usize) -> u64 {
    stats(lab, index).vip(VIP_ALL.into(), ECHO_PORT, Proto::Tcp).map(|v| v.packets).unwrap_or(0)
}

/// What one run saw.
struct Outcome {
    records: Vec<HoldRecord>,
    /// Client ports whose slot's current owner (on the surviving host,
    /// after the change) is not the backend that answered them first.
    moved: BTreeSet<u16>,
    /// Client ports in the crashed host's flow table just before the crash
    /// (empty for "backend": TCP leaves no flow state on an LB host).
    crossed: BTreeSet<u16>,
    convergence: Duration,
}

/// Connections over both hosts; b4 joins on both; `lb` crashes.
fn run(test: &str, flow_state: &'static str, port_base: u16) -> Outcome {
    let options = HaOptions { backends: HOSTS, vips: HaVips { all: vec![1, 2, 3], flow_state: Some(flow_state) } };
    let mut lab = HaLab::start_with(bins(), [Role::Active, Role::Active], options, &|m| eprintln!("[{test}] {m}")).unwrap_or_else(|e| panic!("{e:#}"));
    // What the README asks of "backend" backends (both modes get it, so they differ in flow_state only).
    lab.topo.backends_reach_each_other().unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_next_hops(VIP_ALL, &[LB1_V4, LB2_V4], BGP_UP).unwrap_or_else(|e| panic!("{e:#}"));
    let client = lab.hold_client(target(), CONNECTIONS, port_base, HOLD_MS, INTERVAL_MS, ANSWER_TIMEOUT_MS).unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(WARM_UP);
    let packets_before = [vip_packets(&lab, 0), vip_packets(&lab, 1)];

    let changed_at = Instant::now();
    lab.reconfigure(HaVips { all: vec![1, 2, 3, 4], flow_state: Some(flow_state) }).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("[{test}] b4 joined on both LB hosts in {:.2} s", changed_at.elapsed().as_secs_f64());
    std::thread::sleep(WARM_UP);
    let packets = [vip_packets(&lab, 0), vip_packets(&lab, 1)];
    eprintln!("[{test}] VIP packets through lb / lb2 so far: {} / {} ({} / {} before the change)", packets[0], packets[1], packets_before[0], packets_before[1]);
    assert!(packets[0] > packets_before[0] && packets[1] > packets_before[1], "ECMP should use both LB hosts, before and after the change: {packets_before:?} -> {packets:?}");
    let crossed = if flow_state == "lb" { lab.flows_through(0, ECHO_PORT).unwrap_or_else(|e| panic!("{e:#}")) } else { BTreeSet::new() };
    let ring = RingSnapshot::read(&lab.topo.bpffs_dir().join(LB2), &lab.lbs[1].config_path, target(), Proto::Tcp).unwrap_or_else(|e| panic!("{e:#}"));

    let failed_at = Instant::now();
    lab.crash_lb(0).unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_next_hops(VIP_ALL, &[LB2_V4], Duration::from_secs(HOLD_TIME_S) + CONVERGENCE_SLACK).unwrap_or_else(|e| panic!("{e:#}"));
    let convergence = failed_at.elapsed();
    let records = hold_records(&client, Duration::from_millis(HOLD_MS) + HOLD_SLACK).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(records.len(), CONNECTIONS as usize, "one record per connection");

    let mut moved = BTreeSet::new();
    for r in &records {
        let first = r.backend().unwrap_or_else(|| panic!("connection {} never answered: {r:?}", r.src));
        let src: SocketAddr = r.src.parse().unwrap_or_else(|e| panic!("{e}"));
        let owner = ring.owners(src).unwrap_or_else(|e| panic!("{e:#}")).current;
        let owner = owner.and_then(|a| lab.topo.host_by_addr(a)).unwrap_or("<none>");
        if owner != first {
            moved.insert(src.port());
        }
    }
    Outcome { records, moved, crossed, convergence }
}

fn broken_ports(records: &[HoldRecord]) -> BTreeMap<u16, &HoldRecord> {
    records.iter().filter(|r| !r.kept()).map(|r| (port_of(r), r)).collect()
}

#[test]
fn backend_flow_state_keeps_every_connection_when_an_lb_host_dies_after_rings_moved() {
    const TEST: &str = "backend_flow_state_keeps_every_connection_when_an_lb_host_dies_after_rings_moved";
    if !can_run(TEST) {
        return;
    }
    let o = run(TEST, "backend", 45_000);
    let broken = broken_ports(&o.records);
    eprintln!(
        "[{TEST}] {} connections, {} on slots that moved to another backend; after the crash (router converged in {:.2} s, BGP hold time {HOLD_TIME_S} s): {} kept, {} broken",
        o.records.len(),
        o.moved.len(),
        o.convergence.as_secs_f64(),
        o.records.len() - broken.len(),
        broken.len()
    );
    assert!(!o.moved.is_empty(), "adding b4 should move some connections' slots, or the test shows nothing");
    assert!(broken.is_empty(), "{} connections broken: {:?}", broken.len(), broken.values().collect::<Vec<_>>());
}

#[test]
fn lb_flow_state_breaks_the_moved_connections_that_cross_to_the_other_host() {
    const TEST: &str = "lb_flow_state_breaks_the_moved_connections_that_cross_to_the_other_host";
    if !can_run(TEST) {
        return;
    }
    let o = run(TEST, "lb", 46_000);
    let broken = broken_ports(&o.records);
    let expected: BTreeSet<u16> = o.moved.intersection(&o.crossed).copied().collect();
    eprintln!(
        "[{TEST}] {} connections, {} crossed the crashed host, {} on slots that moved; {} of those crossed (expected to break); \
         after the crash (router converged in {:.2} s): {} kept, {} broken",
        o.records.len(),
        o.crossed.len(),
        o.moved.len(),
        expected.len(),
        o.convergence.as_secs_f64(),
        o.records.len() - broken.len(),
        broken.len()
    );
    assert!(!o.crossed.is_empty() && o.crossed.len() < o.records.len(), "ECMP should spread the connections over both hosts: {:?}", o.crossed);
    let broken_set: BTreeSet<u16> = broken.keys().copied().collect();
    assert!(!broken_set.is_empty(), "with LB flow state, the moved connections that cross should break (none did)");
    assert_eq!(broken_set, expected, "exactly the moved connections that crossed break; broken: {:?}", broken.values().collect::<Vec<_>>());
}
