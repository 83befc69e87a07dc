//! Routes must not outlive the agent that health-checks them: the router
//! (BIRD, ECMP over two LB hosts, see `lb_tests::ha_topology`) stops using
//! an LB host whose agent
//! - was killed (kill -9): the unit's `ExecStopPost=` (`lb-agent withdraw`,
//!   taken from the shipped unit, run with `SERVICE_RESULT=signal` as systemd
//!   would) withdraws; a restart (`Restart=on-failure`) announces again;
//! - failed to start: `lb-agent run` withdraws what its predecessor left
//!   before it exits (an interface that is gone), and so does `ExecStopPost=`
//!   after `ExecStartPre=lb-agent check` refused a bad config;
//! - hung (SIGSTOP): its keep-alives stop, the watchdog (done by the test as
//!   systemd does: SIGKILL once the bound the agent asked for,
//!   `announce.liveness`, has passed) kills it, `ExecStopPost=` withdraws;
//!
//! while a clean restart (SIGTERM, `ExecStopPost=` with `success`, start)
//! keeps the host announced throughout and breaks no connection.
//! Prints the measured times. Needs root; run one at a time.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use lb_tests::ha_topology::{BGP_UP, ECHO_PORT, HaLab, LB1_V4, LB2_V4, Role, VIP_ALL};
use lb_tests::lab::{AGENT_READY, LabBins, hold_records};
use lb_tests::route_liveness::{self, NotifySocket};
use lb_tests::topology::{self, Proc};

/// `announce.liveness` of the LB host under test.
const LIVENESS: Duration = Duration::from_secs(2);
/// From a withdrawal in the kernel table to the router: BIRD's kernel
/// protocol hears it over netlink, BGP sends the update at once.
const ROUTER_SLACK: Duration = Duration::from_secs(3);
const ROUTE_POLL: Duration = Duration::from_millis(50);
/// A killed agent's routes, left alone, are still announced after this long.
const LEFT_ALONE: Duration = Duration::from_secs(2);
const HELD: u32 = 16;
const HOLD_MS: u64 = 8_000;

fn can_run(test: &str) -> bool {
    topology::root_or_skip(test, "network namespaces, XDP, BIRD")
}

/// The LB host under test: `lb` (index 0); `lb2` stays up throughout.
const UNDER_TEST: usize = 0;

struct Host<'a> {
    lab: &'a HaLab,
    agent_bin: &'a Path,
    unit: String,
    notify: NotifySocket,
}

impl Host<'_> {
    fn config(&self) -> &Path {
        &self.lab.lbs[UNDER_TEST].config_path
    }

    fn host(&self) -> &str {
        self.lab.lbs[UNDER_TEST].host
    }

    /// `lb-agent run` as the unit starts it (no --unload-on-exit), with the notify socket.
    fn start(&self) -> Proc {
        let watchdog = route_liveness::unit_watchdog(&self.unit).unwrap();
        route_liveness::spawn_notified_agent(&self.lab.topo, self.host(), self.agent_bin, self.config(), &self.notify.path, watchdog, &[])
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn start_ready(&self) -> Proc {
        let agent = self.start();
        agent.wait_for_line("ready:", AGENT_READY).unwrap_or_else(|e| panic!("{e:#}"));
        agent
    }

    /// The unit's ExecStopPost= with `result` as $SERVICE_RESULT; its stdout.
    fn exec_stop_post(&self, result: &str) -> String {
        let argv = route_liveness::exec_stop_post(&self.unit, self.agent_bin, self.config(), result).unwrap_or_else(|e| panic!("{e:#}"));
        let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        let out = self.lab.topo.exec_timeout(self.host(), &argv[0], &args, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e:#}"));
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(out.status.success(), "ExecStopPost ({result}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        eprintln!("[liveness]   ExecStopPost (SERVICE_RESULT={result}): {stdout}");
        stdout
    }

    /// Waits until the router uses only `lb2`; the time since `since`.
    fn wait_withdrawn(&self, since: Instant, limit: Duration) -> Duration {
        self.lab.wait_next_hops(VIP_ALL, &[LB2_V4], limit).unwrap_or_else(|e| panic!("{e:#}"));
        since.elapsed()
    }

    fn wait_announced(&self, since: Instant) -> Duration {
        self.lab.wait_next_hops(VIP_ALL, &[LB1_V4, LB2_V4], BGP_UP).unwrap_or_else(|e| panic!("{e:#}"));
        since.elapsed()
    }

    fn announced(&self) -> bool {
        self.lab.next_hops(VIP_ALL).unwrap_or_else(|e| panic!("{e:#}")).contains(&LB1_V4)
    }
}

/// `lb-agent withdraw`'s or `run`'s word that it removed routes.
fn withdrew_some(said: &str) -> bool {
    said.contains("withdrew ") && !said.contains("withdrew 0 ")
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[test]
fn routes_follow_the_agent_through_crash_failed_start_hang_and_clean_restart() {
    if !can_run("routes_follow_the_agent_through_crash_failed_start_hang_and_clean_restart") {
        return;
    }
    let bins: LabBins = lb_tests::lab_bins!();
    let lab = HaLab::start(bins.clone(), [Role::Active, Role::Active], &|m| eprintln!("[liveness] {m}")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_next_hops(VIP_ALL, &[LB1_V4, LB2_V4], BGP_UP).unwrap_or_else(|e| panic!("{e:#}"));
    let unit = std::fs::read_to_string(route_liveness::unit_path()).unwrap();
    let notify = NotifySocket::bind(lab.topo.log_dir().join("notify-lb.sock")).unwrap_or_else(|e| panic!("{e:#}"));
    let host = Host { lab: &lab, agent_bin: &bins.agent, unit, notify };

    // The lab's agent (--unload-on-exit) gives way to one run as the unit runs it.
    let config = std::fs::read_to_string(host.config()).unwrap();
    let with_liveness = config.replacen("[announce]\n", &format!("[announce]\nliveness = \"{}s\"\n", LIVENESS.as_secs()), 1);
    assert_ne!(config, with_liveness, "the lab's config has no [announce] table");
    std::fs::write(host.config(), &with_liveness).unwrap();
    lab.lbs[UNDER_TEST].agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    let mut agent = host.start_ready();
    host.wait_announced(Instant::now());
    let mut figures = Vec::new();

    // 1. Clean restart: announced throughout, no connection broken.
    let client = lab.hold_client(SocketAddr::new(VIP_ALL.into(), ECHO_PORT), HELD, 41000, HOLD_MS, 100, 5_000).unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_secs(1));
    let through_lb = lab.flows_through(UNDER_TEST, ECHO_PORT).unwrap_or_else(|e| panic!("{e:#}")).len();
    assert!(through_lb > 0, "no held connection crosses lb: the clean restart would prove nothing");
    let began = Instant::now();
    let status = agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "SIGTERM: {status}");
    assert!(host.announced(), "a clean stop withdrew the routes");
    let said = host.exec_stop_post("success");
    assert!(said.contains("stay announced"), "{said}");
    agent = host.start();
    let mut gaps = 0;
    let deadline = Instant::now() + AGENT_READY;
    while !agent.stdout_lines().iter().any(|l| l.contains("ready:")) {
        assert!(Instant::now() < deadline && agent.try_status().is_none(), "the restarted agent did not get ready:\n{}", agent.log_tail(20));
        gaps += usize::from(!host.announced());
        std::thread::sleep(ROUTE_POLL);
    }
    let restart = began.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(gaps, 0, "the router lost lb during a clean restart");
    assert!(host.announced(), "lb is not announced after the clean restart");
    let records = hold_records(&client, Duration::from_millis(HOLD_MS) + Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}"));
    let broken: Vec<_> = records.iter().filter(|r| r.error.is_some() || r.backends.len() != 1).collect();
    let stall = records.iter().map(|r| r.max_ms).fold(0.0, f64::max);
    assert_eq!(records.len(), HELD as usize);
    assert!(broken.is_empty(), "connections broken or moved by a clean restart: {broken:?}");
    figures.push(format!("clean restart: stopped and ready again in {}, lb announced throughout, {HELD}/{HELD} connections kept ({through_lb} through lb; slowest answer {stall:.0} ms)", secs(restart)));

    // 2. kill -9: left alone, the routes stay (the balancer still forwards,
    // nobody checks the backends); ExecStopPost withdraws; a restart announces.
    agent.kill().unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(LEFT_ALONE);
    assert!(host.announced(), "the routes went with kill -9 before ExecStopPost ran (was something else withdrawing?)");
    let post = Instant::now();
    let said = host.exec_stop_post("signal");
    assert!(withdrew_some(&said), "{said}");
    let withdrawn = host.wait_withdrawn(post, ROUTER_SLACK);
    let restarted = Instant::now();
    agent = host.start_ready();
    let back = host.wait_announced(restarted);
    figures.push(format!(
        "kill -9: still announced {} later (no ExecStopPost yet); router withdrew lb {} after ExecStopPost began; restarted and announced again {} after the start",
        secs(LEFT_ALONE),
        secs(withdrawn),
        secs(back)
    ));

    // 3a. A start that fails after taking the interface (the interface is
    // gone): `run` withdraws what its predecessor left.
    agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(host.announced());
    let iface = lab.lbs[UNDER_TEST].iface;
    std::fs::write(host.config(), with_liveness.replace(&format!("interface = \"{iface}\""), "interface = \"lbd-gone0\"")).unwrap();
    let began = Instant::now();
    let out = lab.topo.exec_timeout(host.host(), &bins.agent.to_string_lossy(), &["run", "--config", &host.config().to_string_lossy()], AGENT_READY).unwrap();
    assert!(!out.status.success(), "run on a missing interface succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(withdrew_some(&stderr), "{stderr}");
    let failed = host.wait_withdrawn(began, ROUTER_SLACK);
    std::fs::write(host.config(), &with_liveness).unwrap();
    agent = host.start_ready();
    host.wait_announced(Instant::now());

    // 3b. A config that ExecStartPre's check refuses: ExecStopPost withdraws,
    // reading the [announce] table alone.
    agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(host.announced());
    std::fs::write(host.config(), with_liveness.replace("[lb]\n", "[lb]\nring_size = \"big\"\n")).unwrap();
    let began = Instant::now();
    let check = lab.topo.exec(host.host(), &bins.agent.to_string_lossy(), &["check", "--config", &host.config().to_string_lossy()]).unwrap();
    assert_eq!(check.status.code(), Some(3), "check of a bad config: {:?}", check.status);
    let said = host.exec_stop_post("exit-code");
    assert!(withdrew_some(&said) && said.contains("[announce] table alone"), "{said}");
    let refused = host.wait_withdrawn(began, ROUTER_SLACK);
    std::fs::write(host.config(), &with_liveness).unwrap();
    agent = host.start_ready();
    host.wait_announced(Instant::now());
    figures.push(format!(
        "failed start: run on a missing interface exited and the router withdrew lb {} after it began; a config check refused: withdrawn {} after",
        secs(failed),
        secs(refused)
    ));

    // 4. Hung (SIGSTOP): the watchdog kills it after the bound, ExecStopPost withdraws.
    assert_eq!(host.notify.watchdog_bound(), Some(LIVENESS), "the agent did not ask for announce.liveness");
    std::thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    route_liveness::signal(&agent, libc::SIGSTOP).unwrap();
    let fired = host.notify.wait_watchdog_expiry(LIVENESS * 3).unwrap_or_else(|e| panic!("{e:#}"));
    agent.kill().unwrap_or_else(|e| panic!("{e:#}"));
    host.exec_stop_post("watchdog");
    let hung = host.wait_withdrawn(stopped, LIVENESS + ROUTER_SLACK);
    figures.push(format!(
        "SIGSTOP: watchdog fired {} after (liveness {}), router withdrew lb {} after the SIGSTOP",
        secs(fired - stopped),
        secs(LIVENESS),
        secs(hung)
    ));
    assert!(hung <= LIVENESS + ROUTER_SLACK, "a hung agent stayed announced {}", secs(hung));

    // Leave nothing: a clean start and stop, then detach (pins and routes).
    agent = host.start_ready();
    host.wait_announced(Instant::now());
    agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    let out = lab.agent_command(UNDER_TEST, &["detach"]).unwrap();
    assert!(out.status.success(), "detach: {}", String::from_utf8_lossy(&out.stderr));
    for f in &figures {
        eprintln!("[liveness] {f}");
    }
}

/// Without systemd: `run --liveness-guard` does what the unit's watchdog and
/// `ExecStopPost=` do. kill -9: withdrawn at once; SIGSTOP: killed and
/// withdrawn after `announce.liveness`; SIGTERM: the routes stay.
#[test]
fn the_liveness_guard_withdraws_for_a_dead_or_hung_agent_without_systemd() {
    if !can_run("the_liveness_guard_withdraws_for_a_dead_or_hung_agent_without_systemd") {
        return;
    }
    let bins: LabBins = lb_tests::lab_bins!();
    let lab = HaLab::start(bins.clone(), [Role::Active, Role::Active], &|m| eprintln!("[guard] {m}")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_next_hops(VIP_ALL, &[LB1_V4, LB2_V4], BGP_UP).unwrap_or_else(|e| panic!("{e:#}"));
    let unit = std::fs::read_to_string(route_liveness::unit_path()).unwrap();
    let notify = NotifySocket::bind(lab.topo.log_dir().join("notify-unused.sock")).unwrap_or_else(|e| panic!("{e:#}"));
    let host = Host { lab: &lab, agent_bin: &bins.agent, unit, notify };
    let config = std::fs::read_to_string(host.config()).unwrap();
    std::fs::write(host.config(), config.replacen("[announce]\n", &format!("[announce]\nliveness = \"{}s\"\n", LIVENESS.as_secs()), 1)).unwrap();
    lab.lbs[UNDER_TEST].agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    let start = || {
        let config = host.config().to_string_lossy().into_owned();
        let agent = lab.topo.spawn(host.host(), &bins.agent.to_string_lossy(), &["run", "--config", &config, "--liveness-guard"]).unwrap_or_else(|e| panic!("{e:#}"));
        agent.wait_for_line("ready:", AGENT_READY).unwrap_or_else(|e| panic!("{e:#}"));
        host.wait_announced(Instant::now());
        agent
    };

    let agent = start();
    let killed = Instant::now();
    agent.kill().unwrap_or_else(|e| panic!("{e:#}"));
    let dead = host.wait_withdrawn(killed, ROUTER_SLACK);

    let agent = start();
    std::thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    route_liveness::signal(&agent, libc::SIGSTOP).unwrap();
    let hung = host.wait_withdrawn(stopped, LIVENESS + ROUTER_SLACK);
    let status = agent.wait_exit(Duration::from_secs(5)).unwrap_or_else(|e| panic!("the guard did not kill the hung agent: {e:#}"));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "{status}");
    // The guard counts from the last heartbeat, which came at most one
    // period (half the bound) before the SIGSTOP.
    assert!(hung >= LIVENESS / 2, "withdrawn {} after SIGSTOP, before the bound", secs(hung));

    let agent = start();
    let status = agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "SIGTERM: {status}");
    std::thread::sleep(LIVENESS * 2);
    assert!(host.announced(), "the guard withdrew after a clean stop");

    let agent = start();
    agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    let out = lab.agent_command(UNDER_TEST, &["detach"]).unwrap();
    assert!(out.status.success(), "detach: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "[guard] kill -9: router withdrew lb {} after; SIGSTOP: agent killed and lb withdrawn {} after (liveness {}); SIGTERM: still announced {} later",
        secs(dead),
        secs(hung),
        secs(LIVENESS),
        secs(LIVENESS * 2)
    );
}
