//! Health checks at scale: thousands of checks against listening, refusing
//! and unreachable addresses, with reloads that reorder the config, and every
//! reported state and state change compared with the truth of its backend.
//!
//! One namespace (b1) holds the answering addresses on its eth0, all served
//! by one in-process listener on port 80; port 81 refuses. The unreachable
//! addresses are in the LB's subnet but on no host (ARP never resolves).
//! Every VIP has the same backends; VIPs checking port 80 see answering
//! addresses pass, VIPs checking port 81 see them refuse. Root only; run
//! with `--test-threads=1` (`cargo xtask test health_scale`).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lb_tests::agent::{self, Stats};
use lb_tests::netns::NsListener;
use lb_tests::topology::{self, LB, LB_V4, Proc, Topology, TopologyOptions};

const VIPS: usize = 30;
/// Per VIP: the first `ANSWERING` have an address on b1, the rest on no host.
const BACKENDS: usize = 100;
const ANSWERING: usize = 40;
const LISTEN_PORT: u16 = 80;
const CLOSED_PORT: u16 = 81;
/// One result changes the state (fails = passes = 1), so any wrong result
/// shows as a state change. The timeout leaves room for a loaded machine.
const INTERVAL_MS: u64 = 2000;
const TIMEOUT_MS: u64 = 1000;
/// Time for every check to have run a few times after the last reload.
const SETTLE: Duration = Duration::from_millis(3 * INTERVAL_MS + TIMEOUT_MS);
/// Reloads while the first results change thousands of states (the agent
/// at its busiest), each moving every pair to other indices.
const RELOADS: usize = 4;
const RELOAD_GAP: Duration = Duration::from_millis(INTERVAL_MS / 2);
/// Rings large enough that building them keeps the agent busy (as the
/// default 65,537 does at 10,000 checks), small enough for a debug build.
const RING_SIZE: u32 = 16_381;
const PATIENCE: Duration = Duration::from_secs(30);

fn backend(b: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 100 + b as u8)
}

fn vip_address(v: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 1 + v as u8)
}

/// The port VIP `v` checks: even VIPs the listening one, odd the closed one.
fn check_port(v: usize) -> u16 {
    if v.is_multiple_of(2) { LISTEN_PORT } else { CLOSED_PORT }
}

/// What every check of backend `b` under VIP `v` must say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Truth {
    Passes,
    Refused,
    Unreachable,
}

fn truth(v: usize, b: usize) -> Truth {
    match (b < ANSWERING, check_port(v)) {
        (false, _) => Truth::Unreachable,
        (true, LISTEN_PORT) => Truth::Passes,
        (true, _) => Truth::Refused,
    }
}

impl Truth {
    /// Whether a state change to `up` (true) or `down` for this reason can be right.
    fn allows(self, up: bool, reason: &str) -> bool {
        match self {
            Truth::Passes => up && reason.starts_with("passed"),
            Truth::Refused => !up && reason == "connection refused",
            // No answer at all: the timeout, or the kernel giving up on ARP (EHOSTUNREACH).
            Truth::Unreachable => !up && (reason == "timeout" || reason.starts_with("error: No route to host")),
        }
    }
    /// The state and `stats` reason once settled.
    fn settled(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Truth::Passes => ("up", &["passed"]),
            Truth::Refused => ("down", &["refused"]),
            Truth::Unreachable => ("down", &["timeout", "error"]),
        }
    }
}

/// The config; `turn` rotates the order of the VIPs and of their backends
/// (a reload to it moves every pair to other indices).
fn config_text(topo: &Topology, turn: usize) -> String {
    let mut s = format!(
        "[lb]\ninterface = \"eth0\"\ntunnel_source_v4 = \"{LB_V4}\"\nbpffs_dir = \"{}\"\nrun_dir = \"{}\"\n\
         max_vips = {}\nmax_backends = {}\nring_size = {RING_SIZE}\n",
        topo.bpffs_dir().display(),
        topo.agent_run_dir().display(),
        VIPS + 2,
        BACKENDS + 2
    );
    for i in 0..VIPS {
        let v = (i + turn * 7) % VIPS;
        let _ = write!(
            s,
            "\n[[vip]]\nname = \"v{v}\"\naddress = \"{}\"\nport = 80\n  [vip.health]\n  check = \"tcp\"\n  port = {}\n  \
             interval = \"{INTERVAL_MS}ms\"\n  timeout = \"{TIMEOUT_MS}ms\"\n  fails = 1\n  passes = 1\n",
            vip_address(v),
            check_port(v)
        );
        for j in 0..BACKENDS {
            let b = (j + turn * 13) % BACKENDS;
            // Static MACs: the start does not wait for the unreachable ones' ARP.
            let _ = write!(s, "  [[vip.backend]]\n  address = \"{}\"\n  mac = \"02:00:00:00:01:{b:02x}\"\n", backend(b));
        }
    }
    s
}

/// `vip v7: backend 198.51.100.3 DOWN: connection refused (...` -> (7, 3, false, "connection refused").
fn parse_change(line: &str) -> Option<(usize, usize, bool, String)> {
    let rest = &line[line.find("vip v")? + 5..];
    let (v, rest) = rest.split_once(": ")?;
    let rest = rest.strip_prefix("backend ")?;
    let (address, rest) = rest.split_once(' ')?;
    let (state, rest) = rest.split_once(": ")?;
    let reason = rest.split(" (").next()?;
    let address: Ipv4Addr = address.parse().ok()?;
    let b = usize::from(address.octets()[3]).checked_sub(100)?;
    Some((v.parse().ok()?, b, state == "UP", reason.to_string()))
}

/// The state changes the agent logged: how many, those that contradict
/// their backend's truth, and the timeouts of answering backends (a check
/// the loaded machine did not run within its timeout: tolerated, counted).
fn wrong_changes(agent: &Proc) -> (usize, Vec<String>, usize) {
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    let (mut changes, mut late) = (0, 0);
    let mut wrong = Vec::new();
    for line in log.lines().filter(|l| l.contains(" UP: ") || l.contains(" DOWN: ")) {
        changes += 1;
        match parse_change(line) {
            Some((v, b, up, reason)) if truth(v, b).allows(up, &reason) => {}
            Some((_, _, false, reason)) if reason == "timeout" => late += 1,
            Some((v, b, ..)) => wrong.push(format!("{line}\n    (truth: {:?})", truth(v, b))),
            None => wrong.push(format!("unparsed state change: {line}")),
        }
    }
    (changes, wrong, late)
}

/// Every pair whose state or last reason in `stats` is not its truth.
fn wrong_states_once(topo: &Topology, config_path: &str) -> Vec<String> {
    let bin = agent::agent_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let out = topo
        .exec_ok(LB, &bin.to_string_lossy(), &["stats", "--config", config_path, "--interval", "0", "--json"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let stats = Stats::parse(&out).unwrap();
    let mut wrong = Vec::new();
    let mut seen = 0;
    for v in 0..VIPS {
        let vip = stats.vips.iter().find(|s| s.name == format!("v{v}")).unwrap_or_else(|| panic!("VIP v{v} missing from stats"));
        for m in &vip.backends {
            let address: Ipv4Addr = m.address.parse().unwrap();
            let b = usize::from(address.octets()[3]) - 100;
            let (state, reasons) = truth(v, b).settled();
            let (got_state, got_reason) = (m.state.as_deref().unwrap_or(""), m.reason.as_deref().unwrap_or(""));
            seen += 1;
            if got_state != state || !reasons.iter().any(|r| got_reason.starts_with(r)) {
                wrong.push(format!("v{v} {address}: {got_state} ({got_reason}), truth {:?}", truth(v, b)));
            }
        }
    }
    assert_eq!(seen, VIPS * BACKENDS, "stats lists every pair");
    wrong
}

/// The pairs wrong in each of a few reads an interval apart: a check that
/// timed out on the loaded machine is right again at its next check, a
/// wrong state stays.
fn wrong_states(topo: &Topology, config_path: &str) -> Vec<String> {
    let mut wrong = wrong_states_once(topo, config_path);
    for _ in 0..2 {
        if wrong.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(INTERVAL_MS + TIMEOUT_MS));
        let again = wrong_states_once(topo, config_path);
        let pair = |w: &String| w.split(':').next().unwrap_or_default().to_string();
        let pairs: Vec<String> = again.iter().map(pair).collect();
        wrong.retain(|w| pairs.contains(&pair(w)));
    }
    wrong
}

#[test]
fn thousands_of_checks_report_the_truth_for_every_backend_across_reloads() {
    const TEST: &str = "thousands_of_checks_report_the_truth_for_every_backend_across_reloads";
    if !topology::is_root() {
        eprintln!("SKIPPED {TEST}: needs root (network namespaces, XDP); run `cargo xtask test`");
        return;
    }
    let t0 = Instant::now();
    let topo = Topology::build(TopologyOptions { backends: 1, backend_vips: Vec::new(), ..TopologyOptions::default() })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let b1 = topo.backends()[0].clone();
    for b in 0..ANSWERING {
        topo.exec_ok(&b1, "ip", &["addr", "add", &format!("{}/24", backend(b)), "dev", "eth0"]).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let listener = NsListener::start(topo.ns_name(&b1), LISTEN_PORT).unwrap_or_else(|e| panic!("{e:#}"));
    let config_path = topo.log_dir().join("lb-agent.toml").to_string_lossy().into_owned();
    std::fs::write(&config_path, config_text(&topo, 0)).unwrap();
    let bin = agent::agent_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let bin = bin.to_string_lossy();
    let agent = topo.spawn(LB, &bin, &["run", "--config", &config_path, "--unload-on-exit"]).unwrap_or_else(|e| panic!("{e:#}"));
    agent.wait_for_line("ready:", PATIENCE).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("[{TEST}] {} checks running after {:?}", VIPS * BACKENDS, t0.elapsed());
    for turn in 1..=RELOADS {
        std::thread::sleep(RELOAD_GAP);
        std::fs::write(&config_path, config_text(&topo, turn)).unwrap();
        let out = topo.exec_timeout(LB, &bin, &["reload", "--config", &config_path], PATIENCE).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(out.status.success(), "reload {turn}: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::thread::sleep(SETTLE);
    let accepted = listener.accepted();
    let (changes, wrong, late) = wrong_changes(&agent);
    let states = wrong_states(&topo, &config_path);
    eprintln!(
        "[{TEST}] {changes} state changes logged, {} wrong, {late} timeouts of answering backends; {} of {} final states wrong; \
         {accepted} checks answered; {:?} in all",
        wrong.len(),
        states.len(),
        VIPS * BACKENDS,
        t0.elapsed()
    );
    if !wrong.is_empty() || !states.is_empty() {
        topo.keep_logs();
    }
    assert!(wrong.is_empty(), "state changes that contradict the backend's truth:\n{}", wrong.join("\n"));
    assert!(states.is_empty(), "final states that contradict the truth:\n{}", states.join("\n"));
    // A few checks may miss their timeout on a loaded machine; many mean the
    // agent starves its checks (as when it built a ring per state change).
    assert!(late * 20 <= VIPS * BACKENDS, "{late} timeouts of answering backends: the checks are starved");
    // Every pair changed at least once at the start (all start up, 60 % must
    // go down), so the log check above checked something.
    let must_go_down = (0..VIPS).flat_map(|v| (0..BACKENDS).map(move |b| truth(v, b))).filter(|t| *t != Truth::Passes).count();
    assert!(changes >= must_go_down, "{changes} state changes logged, fewer than the {must_go_down} pairs that must go down");
    assert!(accepted > 0, "no check reached the listener");
    agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
}
