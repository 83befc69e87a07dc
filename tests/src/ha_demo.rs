//! The scenario of `cargo xtask demo --ha` (`lb-demo-ha`), on an [`HaLab`]:
//! a router running BIRD (BGP + BFD, ECMP) over two active LB hosts, three
//! health-checked backends, a client holding connections to an IPv4 and an
//! IPv6 VIP.
//!
//! 1. one LB host crashes (link down, agent and BIRD killed) while the
//!    connections talk: how many were kept or broken, how long the router
//!    took to stop using the host, how long the connections stalled;
//! 2. a backend's health check fails (its server stops): the same flows,
//!    sent again, show that only the flows of that backend moved; when it
//!    recovers they come back.
//!
//! [`run`] returns the figures so a test can hold the demo to them.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::agent::Stats;
use crate::client::HoldRecord;
use crate::ha_topology::{BFD_INTERVAL_MS, BFD_MULTIPLIER, BGP_UP, ECHO_PORT, Family, HaLab, Role};
use crate::lab::{LabBins, hold_records};
use crate::topology::{CLIENT, Proc, backend_name};

/// How long the demo runs its parts.
#[derive(Clone, Debug)]
pub struct HaDemoOptions {
    /// Long-lived connections per address family.
    pub connections: u32,
    /// How long each lives (spans the crash).
    pub hold: Duration,
    /// Short-lived flows sent before and after the backend fails.
    pub flows: u32,
}

impl Default for HaDemoOptions {
    fn default() -> Self {
        Self { connections: 32, hold: Duration::from_secs(6), flows: 60 }
    }
}

/// What the crash did to one family's connections.
#[derive(Clone, Debug)]
pub struct CrashFigures {
    pub family: Family,
    /// Connections the router had sent through the crashed host.
    pub crossed: usize,
    /// Of all connections: still on their first backend, every message answered.
    pub kept: usize,
    pub broken: usize,
    /// The router's next hops were the live host only this long after the crash.
    pub convergence: Duration,
    /// Slowest answer of a connection through the crashed host.
    pub longest_stall_ms: f64,
}

/// Which flows moved when one backend's health check failed.
#[derive(Clone, Debug)]
pub struct HealthFigures {
    pub failed_backend: String,
    /// Flows on the failed backend before, and how many of them moved.
    pub on_failed: usize,
    pub moved_from_failed: usize,
    /// Flows on the other backends before, and how many of them moved (0).
    pub on_others: usize,
    pub moved_from_others: usize,
    /// Flows back on the failed backend after it recovered, of `on_failed`.
    pub returned: usize,
    pub detected: Duration,
}

#[derive(Clone, Debug)]
pub struct HaDemoReport {
    pub crash: Vec<CrashFigures>,
    pub health: HealthFigures,
}

/// The backend that fails in part 2 (1-based).
const FAILING_BACKEND: usize = 2;
const INTERVAL_MS: u64 = 100;
const ANSWER_TIMEOUT_MS: u64 = 15_000;
const WARM_UP: Duration = Duration::from_secs(1);
const CONVERGENCE_WAIT: Duration = Duration::from_secs(10);
/// The HA configs check every 200 ms and need 2 results to change state.
const HEALTH_WAIT: Duration = Duration::from_secs(10);
/// Short flows: a connection, a line, its answer, closed.
const FLOW_HOLD_MS: u64 = 200;
const FLOW_PORT_BASE: u16 = 47_000;

/// Builds the lab, runs both parts, tears everything down (also on error).
pub fn run(bins: LabBins, options: &HaDemoOptions, keep_logs: bool, say: &dyn Fn(&str)) -> Result<HaDemoReport> {
    if options.connections == 0 || options.flows == 0 {
        bail!("the HA demo needs at least one connection and one flow");
    }
    let mut lab = HaLab::start(bins, [Role::Active, Role::Active], say)?;
    if keep_logs {
        lab.topo.keep_logs();
    }
    let result = scenario(&mut lab, options, say);
    if result.is_err() {
        lab.topo.keep_logs();
    }
    say("tearing down...");
    let problems = lab.topo.cleanup();
    drop(lab);
    let report = result?;
    if !problems.is_empty() {
        bail!("teardown problems: {}", problems.join("; "));
    }
    Ok(report)
}

fn scenario(lab: &mut HaLab, options: &HaDemoOptions, say: &dyn Fn(&str)) -> Result<HaDemoReport> {
    for family in Family::BOTH {
        let vip = family.vip_all();
        let took = lab.wait_next_hops_of(vip, &[family.lb(0), family.lb(1)], BGP_UP)?;
        say(&format!("router: {vip} via lb and lb2 (ECMP) after {:.1} s", took.as_secs_f64()));
    }
    let crash = crash_part(lab, options, say)?;
    let health = health_part(lab, options, say)?;
    Ok(HaDemoReport { crash, health })
}

fn port_of(src: &str) -> Result<u16> {
    Ok(src.parse::<SocketAddr>().with_context(|| format!("client address {src:?}"))?.port())
}

/// Part 1: long-lived connections in both families; lb crashes.
fn crash_part(lab: &HaLab, options: &HaDemoOptions, say: &dyn Fn(&str)) -> Result<Vec<CrashFigures>> {
    let hold_ms = options.hold.as_millis() as u64;
    let mut clients: Vec<(Family, Proc)> = Vec::new();
    for (i, family) in Family::BOTH.into_iter().enumerate() {
        let target = SocketAddr::new(family.vip_all(), ECHO_PORT);
        let base = 41_000 + 1_000 * i as u16;
        say(&format!("client: {} connections to {target}, a line every {INTERVAL_MS} ms for {:.0} s", options.connections, options.hold.as_secs_f64()));
        clients.push((family, lab.hold_client(target, options.connections, base, hold_ms, INTERVAL_MS, ANSWER_TIMEOUT_MS)?));
    }
    std::thread::sleep(WARM_UP);
    // Which LB host each connection crosses, from the hosts' flow tables
    // (both families share the echo port; their client ports differ).
    let through_lb = lab.flows_through(0, ECHO_PORT)?;
    let through_lb2 = lab.flows_through(1, ECHO_PORT)?;
    say(&format!("ECMP: {} connections cross lb, {} cross lb2", through_lb.len(), through_lb2.len()));

    say("crashing lb: link down, lb-agent and BIRD killed...");
    let crashed_at = lab.crash_lb_at(0)?;
    let mut convergence = BTreeMap::new();
    for family in Family::BOTH {
        let vip = family.vip_all();
        lab.wait_next_hops_of(vip, &[family.lb(1)], CONVERGENCE_WAIT)?;
        convergence.insert(family.name(), crashed_at.elapsed());
    }
    // The other family's route may have moved while we waited for the first.
    let mut figures = Vec::new();
    for (family, client) in &clients {
        let records: Vec<HoldRecord> = hold_records(client, options.hold + Duration::from_millis(ANSWER_TIMEOUT_MS) + Duration::from_secs(5))?;
        if records.len() != options.connections as usize {
            bail!("lb-testclient printed {} records for {} connections", records.len(), options.connections);
        }
        let mut crossed = 0;
        let mut longest_stall_ms: f64 = 0.0;
        for r in &records {
            if through_lb.contains(&port_of(&r.src)?) {
                crossed += 1;
                longest_stall_ms = longest_stall_ms.max(r.max_ms);
            }
        }
        let kept = records.iter().filter(|r| r.kept()).count();
        let f = CrashFigures {
            family: *family,
            crossed,
            kept,
            broken: records.len() - kept,
            convergence: convergence[family.name()],
            longest_stall_ms,
        };
        say(&format!(
            "{}: router converged {:.2} s after the crash (BFD {BFD_INTERVAL_MS} ms x {BFD_MULTIPLIER}); \
             {} connections kept, {} broken; the {} through lb stalled {:.0} ms at most",
            family.name(),
            f.convergence.as_secs_f64(),
            f.kept,
            f.broken,
            f.crossed,
            f.longest_stall_ms
        ));
        figures.push(f);
    }
    Ok(figures)
}

/// The client closes each short flow first, so its ports sit in TIME_WAIT;
/// with `tcp_tw_reuse` a connect may take such a port again once this has
/// passed (the kernel's rule: more than a second).
const TIME_WAIT_REUSE: Duration = Duration::from_millis(1_100);

/// Sends `count` short flows from fixed client ports to the IPv4 VIP;
/// returns each flow's backend by client port.
fn flows(lab: &HaLab, count: u32, last: &mut Option<Instant>) -> Result<BTreeMap<u16, String>> {
    if let Some(at) = last {
        std::thread::sleep(TIME_WAIT_REUSE.saturating_sub(at.elapsed()));
    }
    let target = SocketAddr::new(Family::V4.vip_all(), ECHO_PORT);
    let client = lab.hold_client(target, count, FLOW_PORT_BASE, FLOW_HOLD_MS, INTERVAL_MS, 2_000)?;
    let records = hold_records(&client, Duration::from_secs(20))?;
    *last = Some(Instant::now());
    let mut out = BTreeMap::new();
    for r in &records {
        match (r.kept(), r.backend()) {
            (true, Some(b)) => out.insert(port_of(&r.src)?, b.to_string()),
            _ => bail!("flow {} failed: {:?}", r.src, r.error),
        };
    }
    if out.len() != count as usize {
        bail!("{} answers for {count} flows", out.len());
    }
    Ok(out)
}

/// Waits until the live LB host reports the failing backend `state` for the IPv4 VIP.
fn wait_backend_state(lab: &HaLab, state: &str) -> Result<Duration> {
    let address: IpAddr = Family::V4.backend(FAILING_BACKEND);
    let started = Instant::now();
    loop {
        let out = lab.agent_command(1, &["stats", "--json"])?;
        if !out.status.success() {
            bail!("lb-agent stats on lb2: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stats = Stats::parse(&String::from_utf8_lossy(&out.stdout))?;
        let vip = stats.vip(Family::V4.vip_all(), ECHO_PORT, crate::agent::Proto::Tcp)?;
        let now = vip.backends.iter().find(|m| m.address.parse::<IpAddr>().ok() == Some(address)).and_then(|m| m.state.clone());
        if now.as_deref() == Some(state) {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= HEALTH_WAIT {
            bail!("lb2 still reports {address} as {now:?}, not {state}, after {} s", HEALTH_WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Part 2: the failing backend's flows, and only those, move (through the
/// LB host left); they come back when it recovers.
fn health_part(lab: &mut HaLab, options: &HaDemoOptions, say: &dyn Fn(&str)) -> Result<HealthFigures> {
    let failed = backend_name(FAILING_BACKEND);
    say(&format!("sending {} short flows from fixed client ports to {}...", options.flows, Family::V4.vip_all()));
    // The same client ports again and again (see TIME_WAIT_REUSE).
    lab.topo.exec_ok(CLIENT, "sh", &["-c", "echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse"])?;
    let mut last = None;
    let before = flows(lab, options.flows, &mut last)?;
    say(&format!("stopping {failed}'s server: its health check fails..."));
    lab.stop_server(FAILING_BACKEND)?;
    let detected = wait_backend_state(lab, "down")?;
    say(&format!("lb2 marked {failed} down after {:.2} s; sending the same flows again...", detected.as_secs_f64()));
    let after = flows(lab, options.flows, &mut last)?;
    lab.start_server(FAILING_BACKEND)?;
    let recovered = wait_backend_state(lab, "up")?;
    say(&format!("{failed}'s server is back: marked up after {:.2} s; the same flows once more...", recovered.as_secs_f64()));
    let again = flows(lab, options.flows, &mut last)?;

    let backends: Vec<String> = lab.topo.backends().to_vec();
    println!();
    println!("  backend  flows before  after {failed} failed  moved  back after recovery");
    for b in &backends {
        let mine: Vec<u16> = before.iter().filter(|(_, v)| *v == b).map(|(p, _)| *p).collect();
        let moved = mine.iter().filter(|p| after.get(p) != Some(b)).count();
        let now = after.values().filter(|v| *v == b).count();
        let back = again.values().filter(|v| *v == b).count();
        println!("  {b:<7}  {:>12}  {now:>15}  {moved:>5}  {back:>19}", mine.len());
    }
    println!();
    let on_failed: Vec<u16> = before.iter().filter(|(_, v)| **v == failed).map(|(p, _)| *p).collect();
    let moved_from_failed = on_failed.iter().filter(|p| after.get(p) != Some(&failed)).count();
    let others: Vec<u16> = before.iter().filter(|(_, v)| **v != failed).map(|(p, _)| *p).collect();
    let moved_from_others = others.iter().filter(|p| after.get(p) != before.get(p)).count();
    let returned = on_failed.iter().filter(|p| again.get(p) == Some(&failed)).count();
    let f = HealthFigures {
        failed_backend: failed.clone(),
        on_failed: on_failed.len(),
        moved_from_failed,
        on_others: others.len(),
        moved_from_others,
        returned,
        detected,
    };
    say(&format!(
        "{failed} failed: {} of its {} flows moved, {} of the other {} flows moved; {} came back when it recovered",
        f.moved_from_failed, f.on_failed, f.moved_from_others, f.on_others, f.returned
    ));
    Ok(f)
}
