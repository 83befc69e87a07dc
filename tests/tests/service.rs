//! The systemd unit as shipped (`contrib/systemd/lb-agent.service`) and the
//! agent's side of it. PID 1 here is not systemd, so the unit cannot run;
//! what runs for real:
//! - `systemd-analyze verify` on the unit, with the agent at the unit's
//!   path (`/usr/bin/lb-agent`) under a scratch root: no error, no warning;
//! - `systemd-analyze security --offline=yes --threshold=` on it: the
//!   exposure stays at or below [`EXPOSURE_THRESHOLD`];
//! - the notify protocol of a real `lb-agent run` in the namespace lab,
//!   against a notify socket the test reads: READY=1 with the `ready:` line,
//!   the watchdog bound from `announce.liveness`, WATCHDOG=1 at half of it,
//!   none while the agent is SIGSTOPped and again after SIGCONT,
//!   RELOADING=1 with MONOTONIC_USEC then READY=1 around a reload,
//!   STOPPING=1 on SIGTERM.
//!
//! Needs root for the lab; the unit checks need only systemd-analyze.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lb_tests::lab::{AGENT_READY, Lab, LabBins};
use lb_tests::route_liveness::{self, NotifySocket, UNIT_AGENT};
use lb_tests::topology::{self, LB, TopologyOptions};

/// `systemd-analyze security` exposure (0 safest .. 10) the unit must not
/// exceed: 5.2 before the hardening, 2.0 after (systemd 252); the rest is
/// what an XDP loader needs (root's uid for bpffs, CAP_BPF/NET_ADMIN,
/// netlink and inet sockets, the host's network).
const EXPOSURE_THRESHOLD: u32 = 25;
/// The lab's `announce.liveness`.
const LIVENESS: Duration = Duration::from_secs(2);
/// Scheduling slack on a loaded 2-CPU machine.
const SLACK: Duration = Duration::from_millis(600);

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].iter().map(PathBuf::from).find(|p| p.exists())
}

fn unit_text() -> String {
    std::fs::read_to_string(route_liveness::unit_path()).expect("reading the shipped unit")
}

/// A scratch root with the agent (a wrapper that runs it) at the unit's path and the unit installed.
struct ScratchRoot(PathBuf);

impl ScratchRoot {
    fn new() -> ScratchRoot {
        let root = std::env::temp_dir().join(format!("lbd-unit-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let bin = root.join(UNIT_AGENT.trim_start_matches('/'));
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        let agent = lb_tests::agent::agent_bin().unwrap_or_else(|e| panic!("{e:#}"));
        // A wrapper, not a symlink: under --root, a link's absolute target resolves inside the root.
        std::fs::write(&bin, format!("#!/bin/sh\nexec {} \"$@\"\n", agent.display())).unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let units = root.join("etc/systemd/system");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::copy(route_liveness::unit_path(), units.join("lb-agent.service")).unwrap();
        ScratchRoot(root)
    }

    fn unit(&self) -> PathBuf {
        self.0.join("etc/systemd/system/lb-agent.service")
    }
}

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_shipped_unit_verifies_without_a_warning() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!("SKIP the_shipped_unit_verifies_without_a_warning: systemd-analyze not installed (Debian package systemd)");
        return;
    };
    let root = ScratchRoot::new();
    // --man=no: the man page comes with the Debian package, not a checkout.
    let out = Command::new(&analyze)
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(format!("--root={}", root.0.display()))
        .arg(root.unit())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {}\n{stderr}", out.status);
    eprintln!("[service] systemd-analyze verify: clean");

    // The check is not vacuous: a misspelt directive and a missing binary are reported.
    let broken = root.0.join("etc/systemd/system/lb-agent-broken.service");
    std::fs::write(&broken, unit_text().replace("ProtectClock=", "ProtectClok=")).unwrap();
    let out = Command::new(&analyze).args(["verify", "--man=no", "--recursive-errors=no"]).arg(format!("--root={}", root.0.display())).arg(&broken).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("ProtectClok"), "a misspelt key went unnoticed");
    std::fs::remove_file(root.0.join(UNIT_AGENT.trim_start_matches('/'))).unwrap();
    let out = Command::new(&analyze).args(["verify", "--man=no", "--recursive-errors=no"]).arg(format!("--root={}", root.0.display())).arg(root.unit()).output().unwrap();
    assert!(!out.status.success(), "a missing /usr/bin/lb-agent went unnoticed");
}

#[test]
fn the_shipped_unit_is_hardened() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!("SKIP the_shipped_unit_is_hardened: systemd-analyze not installed (Debian package systemd)");
        return;
    };
    let root = ScratchRoot::new();
    let threshold = format!("--threshold={EXPOSURE_THRESHOLD}");
    let out = Command::new(&analyze).args(["security", "--offline=yes", &threshold, "--no-pager"]).arg(root.unit()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let overall = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or("no overall line").to_string();
    eprintln!("[service] {overall}");
    assert!(out.status.success(), "exposure above {EXPOSURE_THRESHOLD}: {overall}\n{text}{}", String::from_utf8_lossy(&out.stderr));
    let unit = unit_text();
    for wanted in ["Type=notify", "WatchdogSec=", "ExecStopPost=", "Documentation=man:lb-agent(1)", "SystemCallFilter=", "ProtectKernelTunables=yes", "ProtectClock=yes"] {
        assert!(unit.contains(wanted), "the unit lost {wanted}");
    }
    let caps = route_liveness::unit_values(&unit, "CapabilityBoundingSet");
    assert!(caps.iter().all(|c| !c.contains("CAP_NET_RAW") && !c.contains("CAP_SYS_ADMIN")), "{caps:?}");
}

fn can_run(test: &str) -> bool {
    topology::root_or_skip(test, "network namespaces and XDP")
}

fn notify_config() -> toml::Table {
    let mut config = lb_tests::agent::e2e_config(1);
    let announce: toml::Table = format!("liveness = \"{}s\"", LIVENESS.as_secs()).parse().unwrap();
    config.insert("announce".into(), toml::Value::Table(announce));
    config
}

/// Waits until `pred` holds, at most `limit`.
fn wait_until(limit: Duration, pred: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if pred() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    pred()
}

#[test]
fn the_agent_speaks_the_notify_protocol() {
    if !can_run("the_agent_speaks_the_notify_protocol") {
        return;
    }
    let bins: LabBins = lb_tests::lab_bins!();
    let lab = Lab::start_with(bins.clone(), TopologyOptions { backends: 1, ..Default::default() }, notify_config(), &|m| eprintln!("[service] {m}"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The lab's own agent gives way to one started as systemd would.
    lab.agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    let notify = NotifySocket::bind(lab.topo.log_dir().join("notify.sock")).unwrap_or_else(|e| panic!("{e:#}"));
    let unit_watchdog = route_liveness::unit_watchdog(&unit_text()).unwrap();
    let agent = route_liveness::spawn_notified_agent(&lab.topo, LB, &bins.agent, &lab.config_path, &notify.path, unit_watchdog, &["--unload-on-exit"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ready_line = agent.wait_for_line("ready:", AGENT_READY).unwrap_or_else(|e| panic!("{e:#}"));

    // READY=1, with the ready line's words as its status.
    let (ready_at, ready) = notify.wait_for("READY=1", 0, Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e:#}"));
    let status = ready.value("STATUS").unwrap_or_default().to_string();
    assert!(ready_line.ends_with(&status) && !status.is_empty(), "READY=1 status {status:?} is not the ready line {ready_line:?}");
    assert_eq!(notify.watchdog_bound(), Some(LIVENESS), "the agent did not ask for announce.liveness as its watchdog bound");

    // Keep-alives at half the bound.
    let since = Instant::now();
    std::thread::sleep(LIVENESS * 2);
    let beats = notify.times_of("WATCHDOG=1", since);
    let gaps: Vec<f64> = beats.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    eprintln!("[service] keep-alives over {:.1} s: {}, gaps {gaps:.2?} s", (LIVENESS * 2).as_secs_f64(), beats.len());
    assert!(beats.len() >= 3, "too few keep-alives: {beats:?}");
    assert!(gaps.iter().all(|g| *g <= (LIVENESS / 2 + SLACK).as_secs_f64()), "a keep-alive came late: {gaps:?}");

    // A reload: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    let from = notify.notices().len();
    let out = lab.agent_command(&["reload", "--config", &lab.config_path.to_string_lossy()]).unwrap();
    assert!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
    let (reloading_at, reloading) = notify.wait_for("RELOADING=1", from, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(reloading.value("MONOTONIC_USEC").is_some_and(|v| v.parse::<u64>().is_ok()), "RELOADING=1 without MONOTONIC_USEC: {reloading:?}");
    let (after, reloaded) = notify.wait_for("READY=1", reloading_at + 1, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(reloaded.value("STATUS").unwrap_or_default().starts_with("reloaded"), "{reloaded:?}");
    assert!(after > ready_at);
    assert_eq!(notify.watchdog_bound(), Some(LIVENESS), "the reload left the widened watchdog bound");

    // SIGSTOP: no keep-alive while stopped; SIGCONT: they resume.
    route_liveness::signal(&agent, libc::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    std::thread::sleep(LIVENESS + SLACK);
    let during = notify.times_of("WATCHDOG=1", stopped);
    route_liveness::signal(&agent, libc::SIGCONT).unwrap();
    let resumed = Instant::now();
    assert!(during.is_empty(), "keep-alives while SIGSTOPped: {}", during.len());
    assert!(wait_until(LIVENESS, || !notify.times_of("WATCHDOG=1", resumed).is_empty()), "no keep-alive after SIGCONT");
    eprintln!(
        "[service] SIGSTOP: no keep-alive for {:.1} s; SIGCONT: the next came after {:.2} s",
        (resumed - stopped).as_secs_f64(),
        (notify.times_of("WATCHDOG=1", resumed)[0] - resumed).as_secs_f64()
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    let from = notify.notices().len();
    let status = agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    notify.wait_for("STOPPING=1", from, Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "exit status after SIGTERM: {status}\n{}", agent.log_tail(20));
}

/// The system calls of `systemd-analyze syscall-filter GROUP`, groups expanded.
fn syscalls_of(analyze: &std::path::Path, group: &str) -> std::collections::BTreeSet<String> {
    let out = Command::new(analyze).args(["syscall-filter", group]).output().unwrap();
    let mut set = std::collections::BTreeSet::new();
    for word in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim_start().starts_with('#')).flat_map(str::split_whitespace) {
        if word.starts_with('@') {
            if word != group {
                set.extend(syscalls_of(analyze, word));
            }
        } else {
            set.insert(word.to_string());
        }
    }
    set
}

/// What the unit's `SystemCallFilter=` lines allow: the first allows, a `~`
/// line denies, a later plain line allows again (as systemd applies them).
fn unit_allowed_syscalls(analyze: &std::path::Path, unit: &str) -> std::collections::BTreeSet<String> {
    let mut allowed = std::collections::BTreeSet::new();
    for line in route_liveness::unit_values(unit, "SystemCallFilter") {
        let (deny, list) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        for item in list.split_whitespace() {
            let calls = if item.starts_with('@') { syscalls_of(analyze, item) } else { [item.to_string()].into() };
            for c in calls {
                if deny {
                    allowed.remove(&c);
                } else {
                    allowed.insert(c);
                }
            }
        }
    }
    allowed
}

/// The seccomp filter cannot run without systemd, so the test checks what
/// it would let through against what a real agent calls (strace, from the
/// agent's execve on): start, a reload, SIGTERM, `check`, `withdraw`.
#[test]
fn every_system_call_the_agent_makes_passes_the_units_filter() {
    if !can_run("every_system_call_the_agent_makes_passes_the_units_filter") {
        return;
    }
    let (Some(analyze), true) = (systemd_analyze(), std::path::Path::new("/usr/bin/strace").exists()) else {
        eprintln!("SKIP every_system_call_the_agent_makes_passes_the_units_filter: needs systemd-analyze and strace (Debian packages systemd, strace)");
        return;
    };
    let allowed = unit_allowed_syscalls(&analyze, &unit_text());
    assert!(allowed.contains("bpf") && !allowed.contains("mount") && !allowed.contains("setuid"), "the filter lost its shape: {} calls", allowed.len());
    let bins: LabBins = lb_tests::lab_bins!();
    let lab = Lab::start_with(bins.clone(), TopologyOptions { backends: 1, ..Default::default() }, notify_config(), &|m| eprintln!("[service] {m}"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    let agent = bins.agent.to_string_lossy().into_owned();
    let config = lab.config_path.to_string_lossy().into_owned();
    let traces: Vec<PathBuf> = (0..3).map(|i| lab.topo.log_dir().join(format!("strace-{i}.txt"))).collect();
    let trace = |i: usize| traces[i].to_string_lossy().into_owned();
    let traced = lab.topo.spawn(LB, "strace", &["-f", "-qq", "-o", &trace(0), &agent, "run", "--config", &config, "--unload-on-exit"]).unwrap();
    traced.wait_for_line("ready:", AGENT_READY).unwrap_or_else(|e| panic!("{e:#}"));
    let out = lab.agent_command(&["reload", "--config", &config]).unwrap();
    assert!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
    let lock = lab.topo.agent_run_dir().join(format!("{}.lock", topology::IFACE));
    let pid: i32 = std::fs::read_to_string(&lock).unwrap().trim().parse().unwrap();
    // SAFETY: kill(2) on the traced agent's pid, read from its lock file while it runs.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = traced.wait_exit(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "the traced agent: {status}\n{}", traced.log_tail(20));
    for (i, args) in [(1, vec!["check", "--config", &config]), (2, vec!["withdraw", "--config", &config, "--service-result=signal"])] {
        let mut full = vec!["-f", "-qq", "-o", traces[i].to_str().unwrap(), &agent];
        full.extend(args);
        let out = lab.topo.exec(LB, "strace", &full).unwrap();
        assert!(out.status.success(), "{full:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut used = std::collections::BTreeSet::new();
    for path in &traces {
        let text = std::fs::read_to_string(path).unwrap();
        // From the agent's execve on: what `strace` itself does before it is not the agent's.
        let mut on = false;
        for line in text.lines() {
            let call = line.split_once(' ').map_or(line, |(_, rest)| rest.trim_start());
            on |= call.starts_with(&format!("execve(\"{agent}\""));
            let name = call.strip_prefix("<... ").unwrap_or(call);
            let name: String = name.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if on && !name.is_empty() && !call.starts_with("+++") && !call.starts_with("---") {
                used.insert(name);
            }
        }
    }
    // `mount`: the agent's fallback for a host without bpffs on /sys/fs/bpf
    // (here: `ip netns exec` remounts /sys). systemd mounts bpffs, and the
    // unit has no CAP_SYS_ADMIN for it anyway.
    used.remove("mount");
    let refused: Vec<&String> = used.iter().filter(|c| !allowed.contains(*c)).collect();
    eprintln!("[service] the agent made {} distinct system calls; the unit's filter allows {}", used.len(), allowed.len());
    assert!(used.len() > 30 && used.contains("bpf"), "the trace is too thin to judge: {used:?}");
    assert!(refused.is_empty(), "system calls the unit's SystemCallFilter would refuse (EPERM): {refused:?}");
}
