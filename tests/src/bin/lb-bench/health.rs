//! What 10,000 TCP health checks (100 VIPs x 100 backends, interval 5 s,
//! timeout 1 s) cost the agent: CPU and resident memory with every check
//! passing, and with 70 % of them timing out (backends whose ARP never
//! resolves: no host has their address). One namespace (b1) holds the
//! addresses that answer, all served by one in-process listener.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use lb_tests::{
    netns::NsListener,
    topology::{Topology, TopologyOptions, LB},
};
use serde_json::{json, Value};

use crate::agent::{backend_address, config_text, rss_kib, start_agent, BACKENDS, VIPS};

/// Checks reach a steady state after the first interval (spread by the
/// initial jitter) plus the kernel's ARP failure time (3 probes, 1 s apart).
const SETTLE: Duration = Duration::from_secs(10);
/// CPU is averaged over two check intervals.
const WINDOW: Duration = Duration::from_secs(10);
/// Backends with an address on b1 in the failing run: the other 70 % time out.
const ANSWERING_WHEN_FAILING: u32 = BACKENDS * 30 / 100;

struct Footprint {
    cpu_percent: f64,
    rss_kib: u64,
    anon_kib: u64,
    /// Connections the listener accepted during the window.
    accepted: u64,
}

/// User + system CPU time of `pid` so far.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks: u64 = fields.get(11..13).context("short /proc/PID/stat")?.iter().map(|f| f.parse::<u64>().unwrap_or(0)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis(ticks * 1000 / hz))
}

/// Runs the agent with checks of every pair, `answering` of the backends
/// having an address on b1, and measures it once it has settled.
fn footprint(topo: &Topology, paths: (&str, &str, &str), answering: u32) -> Result<Footprint> {
    let (bpffs, run_dir, config_path) = paths;
    let b1 = topo.backends().first().context("the bench topology has no backend")?.clone();
    // Addresses of a previous run must not resolve from the LB's cache.
    topo.exec_ok(LB, "ip", &["neigh", "flush", "all"])?;
    for b in 0..answering {
        topo.exec_ok(&b1, "ip", &["addr", "add", &format!("{}/24", backend_address(b)), "dev", "eth0"])?;
    }
    let listener = NsListener::start(topo.ns_name(&b1), 80)?;
    std::fs::write(config_path, config_text(bpffs, run_dir, |_| 1, true))?;
    let agent = start_agent(topo, config_path)?;
    std::thread::sleep(SETTLE);
    let (cpu0, accepted0, t0) = (cpu_time(agent.pid())?, listener.accepted(), Instant::now());
    std::thread::sleep(WINDOW);
    let cpu = cpu_time(agent.pid())? - cpu0;
    let elapsed = t0.elapsed();
    let accepted = listener.accepted() - accepted0;
    let (rss_kib, anon_kib) = rss_kib(agent.pid())?;
    agent.stop()?;
    drop(listener);
    for b in 0..answering {
        topo.exec_ok(&b1, "ip", &["addr", "del", &format!("{}/24", backend_address(b)), "dev", "eth0"])?;
    }
    Ok(Footprint { cpu_percent: cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0, rss_kib, anon_kib, accepted })
}

pub fn measure() -> Result<Value> {
    let checks = VIPS * BACKENDS;
    println!("\nAgent with {checks} TCP health checks (interval 5 s, timeout 1 s; release build, real attach in a namespace)");
    let topo = Topology::build(TopologyOptions { backends: 1, ..TopologyOptions::default() })?;
    let bpffs = topo.bpffs_dir().join("bench").to_string_lossy().into_owned();
    let run_dir = topo.log_dir().join("run");
    std::fs::create_dir_all(&run_dir)?;
    let run_dir = run_dir.to_string_lossy().into_owned();
    let config_path = topo.log_dir().join("bench-health.toml").to_string_lossy().into_owned();
    let paths = (bpffs.as_str(), run_dir.as_str(), config_path.as_str());

    let failing = footprint(&topo, paths, ANSWERING_WHEN_FAILING)?;
    let passing = footprint(&topo, paths, BACKENDS)?;
    let mut out = json!({"checks": checks});
    for (name, f) in [("all_passing", &passing), ("70pct_timing_out", &failing)] {
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "{:<44} {:>8.1}% CPU  {:>6.1}MiB   ({:.1} MiB anonymous; {} checks answered per second)",
            format!("{checks} checks, {}", name.replace('_', " ")),
            f.cpu_percent,
            mib(f.rss_kib),
            mib(f.anon_kib),
            f.accepted / WINDOW.as_secs()
        );
        out[name] = json!({"cpu_percent": f.cpu_percent, "rss_kib": f.rss_kib, "rss_anon_kib": f.anon_kib, "accepted_per_s": f.accepted / WINDOW.as_secs()});
    }
    Ok(out)
}
