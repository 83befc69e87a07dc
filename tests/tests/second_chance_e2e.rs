//! Second chance end to end, in namespaces (see `lb_tests::lab`): a VIP with
//! `flow_state = "backend"` keeps every established TCP connection through
//! the ring changes an operator makes (a backend added, one removed, a
//! weight changed, one marked down by its health check), with no flow state
//! on the LB host; the same steps with `flow_state = "none"` (pure Maglev)
//! break the connections whose slots moved. What second chance buys is the
//! difference.
//!
//! Before each step a new generation of connections is opened (each must be
//! answered by its slot's current owner: new connections follow the ring),
//! then the step is applied and every live connection of every generation
//! is checked by one line out and one answer back. What a connection should
//! do is predicted from the kernel's own maps (`lb_tests::owners`): with
//! "backend" it survives while its backend is its slot's current owner or
//! one of its previous owners (up to `MAX_PREVIOUS_OWNERS`, 2), with "none"
//! while it is the current one. With "backend" the newest generation (its
//! slots changed at most once) and the one before it (at most twice: A ->
//! B -> C, sent on by C to B and by B to A) must lose nothing, and the
//! share that moved must fit the share of the ring that changed. An older
//! connection whose slot changed three times has lost its backend from
//! every owner the slot keeps and breaks in either mode; that is the
//! design's limit, and the test checks that it is exactly those.
//!
//! IPv6 and mixed families: a "backend" IPv6 VIP and an IPv4 VIP, both over
//! IPv6 backends (6-in-6 and 4-in-6 GUE), on a non-default GUE port.
//! Needs root; run with `--test-threads=1`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use lb_common::DecapReason;
use lb_common::metrics::{self as names, labels};
use lb_tests::agent::{Proto, Stats};
use lb_tests::metrics;
use lb_tests::held::{Broken, HeldSet};
use lb_tests::lab::{Lab, LabBins, LabOptions};
use lb_tests::netns::NsListener;
use lb_tests::owners::RingSnapshot;
use lb_tests::topology::{self, CLIENT, LB_V4, LB_V6, TopologyOptions, VIP_V4, VIP_V6, backend_name, backend_v4, backend_v6};

/// Backend hosts: the config starts with b1..b3; b4 is added by a step.
const HOSTS: usize = 4;
const ECHO_PORT: u16 = 7;
/// The health checks' port, served apart from the echo port so that a
/// backend can fail its check while its connections live on.
const HEALTH_PORT: u16 = 8081;
const CHECK_INTERVAL_MS: u64 = 300;
/// Three in a row: a check that times out once on a loaded machine must not
/// flap a backend (a flap moves slots twice and breaks what the step did not).
const CHECK_FAILS: u32 = 3;
/// A stopped health endpoint is noticed within interval × fails + timeout;
/// generous for a loaded machine.
const DOWN_WITHIN: Duration = Duration::from_secs(10);
/// New connections per generation (per VIP).
const CONNECTIONS: u16 = 200;
/// A non-default GUE port for the IPv6 case (agent and decap must agree).
const GUE_PORT: u16 = 7000;
/// Where each backend's `lb-agent decap` serves its counters (its own namespace's loopback).
const DECAP_METRICS: &str = "127.0.0.1:9111";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Backend,
    None,
}

impl Mode {
    fn flow_state(self) -> &'static str {
        match self {
            Mode::Backend => "backend",
            Mode::None => "none",
        }
    }
}

/// One VIP of a scenario; its backends are b1.. of `backend_v6`'s family.
#[derive(Clone, Copy, Debug)]
struct VipPlan {
    name: &'static str,
    address: IpAddr,
    backend_v6: bool,
}

impl VipPlan {
    fn target(&self) -> SocketAddr {
        SocketAddr::new(self.address, ECHO_PORT)
    }

    fn backend_address(&self, i: usize) -> IpAddr {
        if self.backend_v6 { backend_v6(i).into() } else { backend_v4(i).into() }
    }
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Add(usize),
    Remove(usize),
    Weight(usize, u32),
    HealthDown(usize),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Add(i) => write!(f, "add {}", backend_name(*i)),
            Step::Remove(i) => write!(f, "remove {}", backend_name(*i)),
            Step::Weight(i, w) => write!(f, "weight of {} to {w}", backend_name(*i)),
            Step::HealthDown(i) => write!(f, "{} down by its health check", backend_name(*i)),
        }
    }
}

/// The config: every VIP over `members` (backend index, weight), TCP
/// health checks on [`HEALTH_PORT`].
fn config(mode: Mode, vips: &[VipPlan], members: &[(usize, u32)], gue_port: Option<u16>) -> toml::Table {
    let mut s = format!("[lb]\ninterface = \"eth0\"\ntunnel_source_v4 = \"{LB_V4}\"\ntunnel_source_v6 = \"{LB_V6}\"\nbpffs_dir = \"/unset\"\n");
    if let Some(port) = gue_port {
        s += &format!("gue_port = {port}\n");
    }
    for v in vips {
        s += &format!(
            "\n[[vip]]\nname = \"{}\"\naddress = \"{}\"\nport = {ECHO_PORT}\nprotocol = \"tcp\"\nflow_state = \"{}\"\n\
             [vip.health]\ncheck = \"tcp\"\nport = {HEALTH_PORT}\ninterval = \"{CHECK_INTERVAL_MS}ms\"\ntimeout = \"{CHECK_INTERVAL_MS}ms\"\nfails = {CHECK_FAILS}\npasses = 1\n",
            v.name,
            v.address,
            mode.flow_state()
        );
        for (i, weight) in members {
            s += &format!("\n[[vip.backend]]\naddress = \"{}\"\nweight = {weight}\n", v.backend_address(*i));
        }
    }
    s.parse().expect("the generated config is valid TOML")
}

/// Connections of one VIP: one [`HeldSet`] per generation.
struct Tracked {
    vip: VipPlan,
    generations: Vec<HeldSet>,
}

/// What one step did to one VIP's connections.
#[derive(Debug, Default)]
struct StepCount {
    /// Connections alive before the step (all generations).
    live: usize,
    /// Of them, those whose slot's current owner is another backend now.
    moved: usize,
    broken: usize,
    /// The newest generation (opened just before the step).
    newest: usize,
    newest_moved: usize,
    newest_broken: usize,
    /// The generation before it (opened before the previous step: its
    /// slots changed at most twice).
    second: usize,
    second_moved: usize,
    second_broken: usize,
    /// Live connections whose backend is only their slot's older previous
    /// owner (the slot changed twice since they opened): kept by two hops.
    via_older: usize,
}

struct Scenario {
    test: &'static str,
    mode: Mode,
    vips: Vec<VipPlan>,
    gue_port: Option<u16>,
    connections: u16,
    /// Health endpoints per backend host (index 0 = b1); `None` once stopped.
    health: Vec<Option<NsListener>>,
    members: Vec<(usize, u32)>,
    tracked: Vec<Tracked>,
    /// One summary line per step and VIP, for the report.
    lines: Vec<String>,
    /// Last field: torn down after the connections and listeners in its namespaces.
    lab: Lab,
}

fn bins() -> LabBins {
    lb_tests::lab_bins!()
}

impl Scenario {
    fn start(test: &'static str, mode: Mode, vips: Vec<VipPlan>, gue_port: Option<u16>, connections: u16) -> Scenario {
        let members = vec![(1, 1), (2, 1), (3, 1)];
        let mut options = LabOptions {
            server_extra: vec!["--echo-port".into(), ECHO_PORT.to_string()],
            decap_extra: vec!["--metrics".into(), DECAP_METRICS.into()],
            ..LabOptions::default()
        };
        if let Some(port) = gue_port {
            options.decap_extra.extend(["--gue-port".into(), port.to_string()]);
        }
        let lab = Lab::start_with_options(
            bins(),
            TopologyOptions { backends: HOSTS, ..Default::default() },
            config(mode, &vips, &members, gue_port),
            options,
            &|m| eprintln!("[{test}] {m}"),
        )
        .unwrap_or_else(|e| panic!("starting the lab: {e:#}"));
        // What the README asks of "backend" backends (both modes get it, so they differ in flow_state only).
        lab.topo.backends_reach_each_other().unwrap_or_else(|e| panic!("{e:#}"));
        let health = (1..=HOSTS)
            .map(|i| Some(NsListener::start(lab.topo.ns_name(&backend_name(i)), HEALTH_PORT).unwrap_or_else(|e| panic!("{e:#}"))))
            .collect();
        let tracked = vips.iter().map(|v| Tracked { vip: *v, generations: Vec::new() }).collect();
        let s = Scenario { test, mode, vips, gue_port, connections, health, members, tracked, lines: Vec::new(), lab };
        // Checks start `up`; wait for one to pass everywhere so no late
        // first result moves a slot in the middle of a step.
        s.wait_members(|state| state == "up", "every backend checked up");
        s
    }

    fn stats(&self) -> Stats {
        Stats::parse(&self.lab.stats_output(true).unwrap_or_else(|e| panic!("{e:#}"))).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Polls `stats` until every member of every VIP satisfies `ok` (the
    /// member's state); `down` names one backend that must be `down` instead.
    fn wait_members(&self, ok: impl Fn(&str) -> bool, what: &str) {
        let started = Instant::now();
        loop {
            let stats = self.stats();
            let all = self.vips.iter().all(|v| {
                stats.vip(v.address, ECHO_PORT, Proto::Tcp).is_ok_and(|vs| vs.backends.iter().all(|m| ok(m.state.as_deref().unwrap_or(""))))
            });
            if all {
                return;
            }
            assert!(started.elapsed() < DOWN_WITHIN, "[{}] {what}: not within {DOWN_WITHIN:?}; stats: {stats:?}", self.test);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Packets counted under each of `reasons` by the decap programs of all backends.
    fn decap_counts<const N: usize>(&self, reasons: [DecapReason; N]) -> [u64; N] {
        let scraper = env!("CARGO_BIN_EXE_lb-scrape");
        let mut sums = [0; N];
        for i in 1..=HOSTS {
            let host = backend_name(i);
            let text = self.lab.topo.exec_ok(&host, scraper, &[DECAP_METRICS, "/metrics"]).unwrap_or_else(|e| panic!("{e:#}"));
            let samples = metrics::parse(&text).unwrap_or_else(|e| panic!("{e:#}"));
            for (sum, reason) in sums.iter_mut().zip(reasons) {
                let v = metrics::value(&samples, names::DECAP_PACKETS, &[(labels::REASON, reason.label())]).unwrap_or_else(|e| panic!("{host}: {e:#}"));
                *sum += v as u64;
            }
        }
        sums
    }

    fn snapshot(&self, vip: &VipPlan) -> RingSnapshot {
        RingSnapshot::read(self.lab.topo.bpffs_dir(), &self.lab.config_path, vip.target(), Proto::Tcp).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn host_of(&self, addr: IpAddr) -> String {
        self.lab.topo.host_by_addr(addr).unwrap_or_else(|| panic!("{addr} is no host of the topology")).to_string()
    }

    /// Opens a generation of connections to every VIP from `port_base` on;
    /// each must be answered by its slot's current owner.
    fn open_generation(&mut self, port_base: u16, keep: bool) {
        let ns = self.lab.topo.ns_name(CLIENT).to_string();
        for t in 0..self.tracked.len() {
            let vip = self.tracked[t].vip;
            let ring = self.snapshot(&vip);
            let set = HeldSet::open(&ns, vip.target(), port_base + t as u16 * self.connections, self.connections)
                .unwrap_or_else(|e| panic!("[{}] {}: {e:#}", self.test, vip.name));
            let astray: Vec<String> = set
                .conns
                .iter()
                .filter_map(|c| {
                    let want = ring.owners(c.src).unwrap_or_else(|e| panic!("{e:#}")).current.map(|a| self.host_of(a));
                    (want.as_deref() != Some(c.backend.as_str())).then(|| format!("{} answered by {}, ring says {want:?}", c.src, c.backend))
                })
                .collect();
            assert!(astray.is_empty(), "[{}] {}: new connections must follow the ring: {astray:?}", self.test, vip.name);
            if keep {
                self.tracked[t].generations.push(set);
            }
        }
    }

    fn apply(&mut self, step: Step) {
        match step {
            Step::Add(i) => self.members.push((i, 1)),
            Step::Remove(i) => self.members.retain(|(b, _)| *b != i),
            Step::Weight(i, w) => self.members.iter_mut().filter(|(b, _)| *b == i).for_each(|m| m.1 = w),
            Step::HealthDown(i) => {
                // The endpoint goes; the echo server and its connections stay.
                self.health[i - 1] = None;
                let addrs: BTreeSet<String> = self.vips.iter().map(|v| v.backend_address(i).to_string()).collect();
                let started = Instant::now();
                loop {
                    let stats = self.stats();
                    let down = self.vips.iter().all(|v| {
                        stats.vip(v.address, ECHO_PORT, Proto::Tcp).is_ok_and(|vs| {
                            vs.backends.iter().any(|m| addrs.contains(&m.address) && m.state.as_deref() == Some("down"))
                        })
                    });
                    if down {
                        return;
                    }
                    assert!(started.elapsed() < DOWN_WITHIN, "[{}] {step}: not marked down within {DOWN_WITHIN:?}: {stats:?}", self.test);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let out = self.lab.reload(config(self.mode, &self.vips, &self.members, self.gue_port)).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            out.status.success(),
            "[{}] reload for {step}: {}{}",
            self.test,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Applies `step` and checks every live connection against what the
    /// kernel's maps predict; returns the counts per VIP.
    fn step(&mut self, k: usize, step: Step) -> Vec<StepCount> {
        self.open_generation(20_000 + k as u16 * 1_000, true);
        let before: Vec<RingSnapshot> = self.vips.iter().map(|v| self.snapshot(v)).collect();
        let live_before: Vec<usize> = self.tracked.iter().map(|t| t.generations.iter().map(HeldSet::len).sum()).collect();
        // A redirect leaves by XDP_TX, or through the kernel's forwarding while the previous owner's neighbour is unresolved.
        let redirect_reasons = [DecapReason::Redirected, DecapReason::RedirectedViaStack, DecapReason::RedirectFailed];
        let decap_before = self.decap_counts(redirect_reasons);
        // Connections kept only because their new owner redirected them.
        let mut second_chances = 0;
        self.apply(step);
        let mut counts = Vec::new();
        for t in 0..self.tracked.len() {
            let vip = self.tracked[t].vip;
            let after = self.snapshot(&vip);
            let changed = after.changed_slots(&before[t]);
            let mut count = StepCount { live: live_before[t], ..StepCount::default() };
            let mut expected_broken = BTreeSet::new();
            let newest = self.tracked[t].generations.len() - 1;
            for (g, set) in self.tracked[t].generations.iter().enumerate() {
                for c in &set.conns {
                    let owners = after.owners(c.src).unwrap_or_else(|e| panic!("{e:#}"));
                    let is_backend = |a: Option<IpAddr>| a.is_some_and(|a| self.host_of(a) == c.backend);
                    let moved = !is_backend(owners.current);
                    let survives = !moved || (self.mode == Mode::Backend && owners.previous.iter().any(|&a| is_backend(Some(a))));
                    count.via_older += (moved && !is_backend(owners.previous.first().copied()) && is_backend(owners.previous.get(1).copied())) as usize;
                    count.moved += moved as usize;
                    second_chances += (moved && survives) as usize;
                    if g == newest {
                        count.newest += 1;
                        count.newest_moved += moved as usize;
                    }
                    if g + 1 == newest {
                        count.second += 1;
                        count.second_moved += moved as usize;
                    }
                    if !survives {
                        expected_broken.insert(c.src);
                    }
                }
            }
            let mut broken: Vec<Broken> = Vec::new();
            for (g, set) in self.tracked[t].generations.iter_mut().enumerate() {
                let b = set.check();
                if g == newest {
                    count.newest_broken = b.len();
                }
                if g + 1 == newest {
                    count.second_broken = b.len();
                }
                broken.extend(b);
            }
            count.broken = broken.len();
            let broken_srcs: BTreeSet<SocketAddr> = broken.iter().map(|b| b.src).collect();
            let line = format!(
                "{} {} / {step}: ring {:.1}% changed ({changed} slots; with a previous owner: {} before, {} after, with two: {} after); newest {}: {} moved, {} broken; the one before {}: {} moved, {} broken; all {}: {} moved ({} whose backend is the older previous owner), {} broken",
                self.mode.flow_state(),
                vip.name,
                100.0 * changed as f64 / after.ring_size() as f64,
                before[t].slots_with_previous(),
                after.slots_with_previous(),
                after.slots_with_two_previous(),
                count.newest,
                count.newest_moved,
                count.newest_broken,
                count.second,
                count.second_moved,
                count.second_broken,
                count.live,
                count.moved,
                count.via_older,
                count.broken
            );
            eprintln!("[{}] {line}", self.test);
            self.lines.push(line);

            let unexpected: Vec<&Broken> = broken.iter().filter(|b| !expected_broken.contains(&b.src)).collect();
            let missing: Vec<&SocketAddr> = expected_broken.iter().filter(|s| !broken_srcs.contains(s)).collect();
            assert!(unexpected.is_empty(), "[{}] {step}, {}: connections broke that the rings say should live: {unexpected:?}", self.test, vip.name);
            assert!(missing.is_empty(), "[{}] {step}, {}: connections live that the rings say must break: {missing:?}", self.test, vip.name);
            if self.mode == Mode::Backend {
                assert_eq!(count.newest_broken, 0, "[{}] {step}, {}: a slot changed once must keep its connections", self.test, vip.name);
                assert_eq!(count.second_broken, 0, "[{}] {step}, {}: a slot changed twice must keep its connections", self.test, vip.name);
            }
            assert_plausible_share(self.test, &format!("{step}, {}", vip.name), count.newest, count.newest_moved, changed, after.ring_size());
            counts.push(count);
        }
        // The decap programs' own account: every kept moved connection's
        // line was redirected at least once, and no redirect failed.
        let decap_after = self.decap_counts(redirect_reasons);
        let [tx, via_stack, failed] = [0, 1, 2].map(|i| decap_after[i] - decap_before[i]);
        let redirected = tx + via_stack;
        let line = format!("{step}: decap redirected {redirected} packets ({via_stack} through the kernel's forwarding), {failed} redirects failed");
        eprintln!("[{}] {line}", self.test);
        self.lines.push(line);
        assert_eq!(failed, 0, "[{}] {step}: redirects failed (see the decap logs)", self.test);
        match self.mode {
            Mode::Backend => {
                assert!(
                    redirected >= second_chances as u64,
                    "[{}] {step}: {second_chances} connections live on through a redirect, but only {redirected} packets were redirected",
                    self.test
                );
                // No backend has a neighbour entry for another before the first step (none is set up),
                // so its first redirects are the kernel's to resolve and send.
                assert!(k > 0 || via_stack > 0, "[{}] {step}: no redirect went through the kernel's forwarding, though no backend had a neighbour entry for another", self.test);
            }
            Mode::None => assert_eq!(redirected, 0, "[{}] {step}: nothing is redirected without second chance", self.test),
        }
        self.lab.check_running().unwrap_or_else(|e| panic!("{e:#}"));
        counts
    }
}

/// The step must move some of the newest connections (or it tested
/// nothing), and about the share of the ring that changed: their slots are
/// uniform, so the count is binomial; allow four standard deviations.
fn assert_plausible_share(test: &str, what: &str, n: usize, moved: usize, changed: usize, ring: usize) {
    let p = changed as f64 / ring as f64;
    let mean = n as f64 * p;
    let slack = 4.0 * (n as f64 * p * (1.0 - p)).sqrt() + 2.0;
    assert!(moved > 0, "[{test}] {what}: no connection of {n} moved ({changed} of {ring} slots changed): the step tests nothing");
    assert!(
        (moved as f64 - mean).abs() <= slack,
        "[{test}] {what}: {moved} of {n} connections moved, but {:.1}% of the ring changed (expected {mean:.0} ± {slack:.0})",
        100.0 * p
    );
}

fn can_run(test: &str) -> bool {
    topology::root_or_skip(test, "network namespaces, XDP")
}

const STEPS: [Step; 4] = [Step::Add(4), Step::Remove(1), Step::Weight(2, 3), Step::HealthDown(3)];

fn run_steps(test: &'static str, mode: Mode) -> Vec<StepCount> {
    let vips = vec![VipPlan { name: "echo", address: VIP_V4.into(), backend_v6: false }];
    let mut s = Scenario::start(test, mode, vips, None, CONNECTIONS);
    let started = Instant::now();
    let mut counts = Vec::new();
    for (k, step) in STEPS.into_iter().enumerate() {
        counts.extend(s.step(k, step));
    }
    // After the last step, too, new connections follow the ring.
    s.open_generation(20_000 + STEPS.len() as u16 * 1_000, false);
    eprintln!("[{test}] {} steps in {:.1} s:\n  {}", STEPS.len(), started.elapsed().as_secs_f64(), s.lines.join("\n  "));
    counts
}

#[test]
fn backend_flow_state_keeps_every_connection_through_ring_changes() {
    const TEST: &str = "backend_flow_state_keeps_every_connection_through_ring_changes";
    if !can_run(TEST) {
        return;
    }
    let counts = run_steps(TEST, Mode::Backend);
    assert_eq!(counts.len(), STEPS.len());
    // Some slot changed twice under a live connection, so the two-hop path was exercised.
    let via_older: usize = counts.iter().map(|c| c.via_older).sum();
    assert!(via_older > 0, "[{TEST}] no live connection's backend was its slot's older previous owner: {counts:?}");
}

#[test]
fn no_flow_state_breaks_the_moved_connections() {
    const TEST: &str = "no_flow_state_breaks_the_moved_connections";
    if !can_run(TEST) {
        return;
    }
    let counts = run_steps(TEST, Mode::None);
    for (step, c) in STEPS.iter().zip(&counts) {
        // What second chance buys: these break without it.
        assert!(c.newest_broken > 0, "[{TEST}] {step}: without flow state the moved connections break: {c:?}");
        assert_eq!(c.newest_broken, c.newest_moved, "[{TEST}] {step}: exactly the moved connections break: {c:?}");
    }
}

#[test]
fn ipv6_and_mixed_family_vips_keep_their_connections_over_gue() {
    const TEST: &str = "ipv6_and_mixed_family_vips_keep_their_connections_over_gue";
    if !can_run(TEST) {
        return;
    }
    let vips = vec![
        VipPlan { name: "echo6", address: VIP_V6.into(), backend_v6: true },
        VipPlan { name: "echo4in6", address: VIP_V4.into(), backend_v6: true },
    ];
    let mut s = Scenario::start(TEST, Mode::Backend, vips, Some(GUE_PORT), CONNECTIONS / 2);
    for (k, step) in [Step::Add(4), Step::Remove(1)].into_iter().enumerate() {
        s.step(k, step);
    }
    s.open_generation(30_000, false);
    eprintln!("[{TEST}] GUE port {GUE_PORT}:\n  {}", s.lines.join("\n  "));
}
