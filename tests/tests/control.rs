//! The control socket under a stopped agent and slow clients (issue 11,
//! findings 2 and 3): `lb-agent reload` gives up within its `--timeout`
//! with the "did not answer" exit code when the agent is stopped
//! (SIGSTOP); clients that connect and send nothing delay neither a reload
//! nor SIGTERM; SIGTERM during a maintenance drain stops the agent at once
//! with its routes withdrawn. Needs root; run one at a time.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use lb_agent::control::exit_code::ExitCode;
use lb_tests::lab::Lab;
use lb_tests::topology::{self, IFACE, LB, LB_V4, LB_V6, TopologyOptions, VIP_V4, backend_v4};

/// What `reload --timeout` may take beyond its timeout (starting the
/// process in the namespace, a loaded machine).
const SLACK: Duration = Duration::from_secs(2);
/// Clients that connect and never send a request. The agent gives each 2 s
/// for its request: served one after the other they would cost 6 s.
const SILENT_CLIENTS: usize = 3;
/// The `[announce]` routes' table and protocol (the defaults).
const ROUTE_TABLE: &str = "250";

fn can_run(test: &str) -> bool {
    topology::root_or_skip(test, "network namespaces, XDP")
}

/// One TCP VIP over one backend; with `announce`, an `[announce]` table
/// whose drain lasts (no traffic needed) 20 s.
fn config(announce: bool) -> toml::Table {
    let mut s = format!(
        "[lb]\ninterface = \"{IFACE}\"\ntunnel_source_v4 = \"{LB_V4}\"\ntunnel_source_v6 = \"{LB_V6}\"\nbpffs_dir = \"/unset\"\nflow_table_size = 65536\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP_V4}\"\nport = 80\nprotocol = \"tcp\"\n\n[[vip.backend]]\naddress = \"{}\"\n",
        backend_v4(1)
    );
    if announce {
        s += "\n[announce]\ndrain_quiet = \"20s\"\ndrain_timeout = \"30s\"\n";
    }
    s.parse().expect("the generated config is valid TOML")
}

fn start(announce: bool) -> Lab {
    let bins = lb_tests::lab_bins!();
    Lab::start_with(bins, TopologyOptions { backends: 1, ..Default::default() }, config(announce), &|m| eprintln!("[control] {m}"))
        .unwrap_or_else(|e| panic!("starting the lab: {e:#}"))
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A stopped process (SIGSTOP), continued (SIGCONT) when dropped, also when an assertion fails.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        // SAFETY: the pid of a child the lab started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0, "SIGSTOP {pid}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

/// `lb-agent reload --timeout SECONDS`, and how long it took.
fn reload(lab: &Lab, timeout: &str) -> (Output, Duration) {
    let started = Instant::now();
    let out = lab.agent_command(&["reload", "--config", &s(&lab.config_path), "--timeout", timeout]).unwrap_or_else(|e| panic!("{e:#}"));
    (out, started.elapsed())
}

fn describe(out: &Output) -> String {
    format!("{}: stdout {:?}, stderr {:?}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn assert_applied(out: &Output, what: &str) {
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("ok"), "{what}: {}", describe(out));
}

/// Connections to the agent's control socket that never send anything.
fn silent_clients(lab: &Lab) -> Vec<UnixStream> {
    let socket = lb_agent::control::socket_path(&lab.topo.agent_run_dir(), IFACE);
    (0..SILENT_CLIENTS).map(|_| UnixStream::connect(&socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display()))).collect()
}

/// Lines of the agent's log containing `needle`, once at least `at_least` are there (at most 2 s).
fn log_lines(lab: &Lab, needle: &str, at_least: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = std::fs::read_to_string(lab.agent.log_path()).unwrap_or_default();
        let n = text.lines().filter(|l| l.contains(needle)).count();
        if n >= at_least || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_stopped_agent_fails_a_reload_within_its_timeout_and_silent_clients_delay_nothing() {
    if !can_run("a_stopped_agent_fails_a_reload_within_its_timeout_and_silent_clients_delay_nothing") {
        return;
    }
    let lab = start(false);

    let (out, took) = {
        let _stopped = Stopped::new(lab.agent.pid());
        reload(&lab, "2")
    };
    eprintln!("[control] reload of a stopped agent gave up after {:.2} s", took.as_secs_f64());
    assert_eq!(out.status.code(), Some(ExitCode::NoAnswer.code()), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer"), "{}", describe(&out));
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(2) + SLACK, "took {took:?}");

    let (out, baseline) = reload(&lab, "5");
    assert_applied(&out, "a reload once the agent runs again");
    assert_eq!(log_lines(&lab, "reload of", 1), 1, "the request abandoned while the agent was stopped must not be applied when it resumes");

    let silent = silent_clients(&lab);
    let (out, took) = reload(&lab, "5");
    assert_applied(&out, "a reload beside silent clients");
    eprintln!("[control] reload: {:.2} s alone, {:.2} s beside {SILENT_CLIENTS} silent clients", baseline.as_secs_f64(), took.as_secs_f64());
    assert!(took < baseline + Duration::from_secs(2), "silent clients delayed the reload: {took:?} (alone: {baseline:?})");
    drop(silent);

    let _silent = silent_clients(&lab);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let status = lab.agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    let took = started.elapsed();
    eprintln!("[control] SIGTERM beside {SILENT_CLIENTS} silent clients: exited after {:.2} s", took.as_secs_f64());
    assert!(status.success(), "the agent's exit: {status}");
    assert!(took < Duration::from_secs(4), "silent clients delayed SIGTERM: {took:?}");
}

/// The VIP routes the agent has in the LB's kernel (`[announce]`).
fn announced(lab: &Lab) -> String {
    lab.topo.exec_ok(LB, "ip", &["route", "show", "table", ROUTE_TABLE]).unwrap_or_else(|e| panic!("{e:#}"))
}

fn wait_routes(lab: &Lab, present: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if announced(lab).contains(&VIP_V4.to_string()) == present {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_during_a_maintenance_drain_stops_the_agent_at_once_with_routes_withdrawn() {
    if !can_run("sigterm_during_a_maintenance_drain_stops_the_agent_at_once_with_routes_withdrawn") {
        return;
    }
    let lab = start(true);
    assert!(wait_routes(&lab, true), "the VIP was never announced: {}", announced(&lab));

    let maintenance = lab
        .topo
        .spawn(LB, &s(&lab.bins.agent), &["maintenance", "--config", &s(&lab.config_path), "--timeout", "5"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(wait_routes(&lab, false), "maintenance did not withdraw the VIP route: {}", announced(&lab));

    let started = Instant::now();
    let status = lab.agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    let took = started.elapsed();
    eprintln!("[control] SIGTERM during a 20 s drain: exited after {:.2} s", took.as_secs_f64());
    assert!(status.success(), "the agent's exit: {status}");
    assert!(took < Duration::from_secs(4), "the drain delayed SIGTERM: {took:?}");
    assert!(!announced(&lab).contains(&VIP_V4.to_string()), "the route came back: {}", announced(&lab));

    let client = maintenance.wait_exit(Duration::from_secs(15)).unwrap_or_else(|e| panic!("{e:#}"));
    // The reader thread may still be collecting the last line.
    let deadline = Instant::now() + Duration::from_secs(2);
    while maintenance.stdout_lines().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = maintenance.stdout_lines().join("\n");
    assert!(client.success(), "lb-agent maintenance: {client}: {answer}\n{}", maintenance.log_tail(5));
    assert!(answer.contains("routes withdrawn; SIGTERM ended the drain early"), "{answer}");
}
