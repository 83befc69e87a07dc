//! What the agent costs with a large config (100 VIPs x 100 backends): the
//! time from SIGHUP to every changed ring slot being live, its resident
//! memory idle and with 10,000 health checks running, and what a scrape of
//! `/metrics` and `lb-agent stats --json` cost at 10,000 (VIP, backend)
//! members. The agent runs for real, attached to the LB's veth in a
//! namespace topology.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::MapData;
use lb_agent::{config, dataplane::rings::MappedRings, plan};
use lb_common::maps;
use lb_tests::{
    agent,
    configs::{TestBackend, TestConfig, TestVip},
    topology::{Proc, Topology, TopologyOptions, LB, LB_V4},
};
use serde_json::{json, Value};

pub const VIPS: u32 = 100;
pub const BACKENDS: u32 = 100;
/// How long the agent may take to start or to apply a reload before the
/// bench gives up (a large config, a busy machine).
const PATIENCE: Duration = Duration::from_secs(60);
/// Memory is read after the agent has settled for this long.
const SETTLE: Duration = Duration::from_secs(3);
/// After this long every (VIP, backend) pair has been checked (every 5 s,
/// 1 s timeout; 10,000 failing checks take the agent a while to report).
const EVERY_PAIR_CHECKED: Duration = Duration::from_secs(20);

/// The bench config: VIP i on 192.0.2.(i+1):80, all with the same 100
/// backends (static MACs: no neighbour resolution needed);
/// `weight_of_first(vip)` is the weight of the VIP's first backend (the
/// reloads change it); `health` adds TCP checks of every (VIP, backend) pair.
pub fn config_text(bpffs: &str, run_dir: &str, weight_of_first: impl Fn(u32) -> u32, health: bool) -> String {
    let lb = TestConfig::new().tunnel_source_v4(LB_V4).lb("bpffs_dir", bpffs).lb("run_dir", run_dir).max_vips(128).max_backends(128);
    (0..VIPS)
        .map(|v| {
            let vip = TestVip::new(&format!("vip{v}"), &format!("192.0.2.{}:80", v + 1));
            let vip = if health { vip.health("check", "tcp").health("interval", "5s").health("timeout", "1s") } else { vip };
            (0..BACKENDS).fold(vip, |vip, b| {
                let weight = if b == 0 { weight_of_first(v) } else { 1 };
                vip.backend(TestBackend::new(backend_address(b)).weight(weight).mac(&format!("02:00:00:00:01:{b:02x}")))
            })
        })
        .fold(lb, TestConfig::vip)
        .to_toml()
}

/// Backend b: 198.51.100.100 + b, in the topology's subnet but not on any host.
pub fn backend_address(b: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 100 + b as u8)
}

/// Resident memory (KiB) of `pid`: the total, and the anonymous part (the
/// agent's own heap and stacks; the rest is mostly the mmapped RINGS map,
/// kernel memory shared with the data path, and the binary).
pub fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("RssAnon:")?))
}

/// The agent's own pid: `Proc` runs it under `ip netns exec`, which execs it.
pub fn start_agent(topo: &Topology, config_path: &str) -> Result<Proc> {
    let bin = agent::agent_bin()?;
    let agent = topo.spawn(LB, &bin.to_string_lossy(), &["run", "--config", config_path, "--unload-on-exit"])?;
    agent.wait_for_line("ready:", PATIENCE)?;
    Ok(agent)
}

pub fn measure() -> Result<Value> {
    println!("\nAgent with {VIPS} VIPs x {BACKENDS} backends (release build, real attach in a namespace)");
    let topo = Topology::build(TopologyOptions { backends: 1, ..TopologyOptions::default() })?;
    let bpffs = topo.bpffs_dir().join("bench");
    let run_dir = topo.log_dir().join("run");
    std::fs::create_dir_all(&run_dir)?;
    let config_path = topo.log_dir().join("bench.toml");
    let (bpffs_s, run_s, config_s) =
        (bpffs.to_string_lossy().to_string(), run_dir.to_string_lossy().to_string(), config_path.to_string_lossy().to_string());

    // Idle footprint, then the reload.
    let text = |weight_of_first: &dyn Fn(u32) -> u32| config_text(&bpffs_s, &run_s, weight_of_first, false);
    std::fs::write(&config_path, text(&|_| 1))?;
    let t = Instant::now();
    let agent = start_agent(&topo, &config_s)?;
    let start_time = t.elapsed();
    std::thread::sleep(SETTLE);
    let idle_rss = rss_kib(agent.pid())?;
    let idle_scrape = scrape(&topo)?;
    // Worst case: every VIP changes (the first backend's weight, 1 -> 2).
    let reload = reload_time(&agent, &bpffs, &config_path, &text(&|_| 1), &text(&|_| 2))?;
    // The usual case: one VIP of the hundred changes (2 -> 3).
    let one = reload_time(&agent, &bpffs, &config_path, &text(&|_| 2), &text(&|v| if v == 0 { 3 } else { 2 }))?;
    agent.stop()?;

    // With health checks of every pair running.
    std::fs::write(&config_path, config_text(&bpffs_s, &run_s, |_| 1, true))?;
    let agent = start_agent(&topo, &config_s)?;
    std::thread::sleep(SETTLE);
    let checking_rss = rss_kib(agent.pid())?;
    // Scrapes once every pair has been checked (a 5 s interval, 1 s timeout),
    // as in steady state: the first after start, then the next one.
    std::thread::sleep(EVERY_PAIR_CHECKED.saturating_sub(SETTLE));
    let checking_scrape = scrape(&topo)?;
    let next_scrape = scrape(&topo)?;
    let stats_json = stats_json(&topo, &config_s)?;
    agent.stop()?;

    println!("{:<44} {:>9.1}ms", "start to ready (load, maps, attach)", start_time.as_secs_f64() * 1e3);
    println!("{:<44} {:>9.1}ms   ({} ring slots changed in {VIPS} rings)", "reload: SIGHUP to every changed slot live", reload.0.as_secs_f64() * 1e3, reload.1);
    println!("{:<44} {:>9.1}ms   ({} ring slots changed in 1 ring)", "reload changing one VIP of the 100", one.0.as_secs_f64() * 1e3, one.1);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("{:<44} {:>9.1}MiB   ({:.1} MiB anonymous)", "resident memory, idle", mib(idle_rss.0), mib(idle_rss.1));
    println!(
        "{:<44} {:>9.1}MiB   ({:.1} MiB anonymous)",
        format!("resident memory, {} health checks", VIPS * BACKENDS),
        mib(checking_rss.0),
        mib(checking_rss.1)
    );
    let members = VIPS * BACKENDS;
    for (what, (bytes, took)) in [
        (format!("GET /metrics, {members} members, no checks"), idle_scrape),
        (format!("GET /metrics, {members} members checked"), checking_scrape),
        (format!("the next GET /metrics, {members} checked"), next_scrape),
        (format!("stats --json, {members} members checked"), stats_json),
    ] {
        println!("{what:<44} {:>9.1}ms   ({:.2} MB)", took.as_secs_f64() * 1e3, bytes as f64 / 1e6);
    }
    Ok(json!({
        "vips": VIPS, "backends": BACKENDS,
        "scrape_ms": idle_scrape.1.as_secs_f64() * 1e3, "scrape_bytes": idle_scrape.0,
        "scrape_checked_ms": checking_scrape.1.as_secs_f64() * 1e3, "scrape_checked_bytes": checking_scrape.0,
        "scrape_checked_next_ms": next_scrape.1.as_secs_f64() * 1e3, "scrape_checked_next_bytes": next_scrape.0,
        "stats_json_ms": stats_json.1.as_secs_f64() * 1e3, "stats_json_bytes": stats_json.0,
        "start_ms": start_time.as_secs_f64() * 1e3,
        "reload_ms": reload.0.as_secs_f64() * 1e3, "reload_changed_slots": reload.1,
        "reload_one_vip_ms": one.0.as_secs_f64() * 1e3, "reload_one_vip_changed_slots": one.1,
        "rss_idle_kib": idle_rss.0, "rss_idle_anon_kib": idle_rss.1,
    }))
}

/// One `GET /metrics` from the LB's namespace (curl, as a scraper would):
/// the body's size in bytes and the time to the last byte, as curl measured.
fn scrape(topo: &Topology) -> Result<(u64, Duration)> {
    let url = format!("http://{}/metrics", lb_tests::metrics::DEFAULT_LISTEN);
    let max_time = PATIENCE.as_secs().to_string();
    let out = topo.exec_ok(LB, "curl", &["-sS", "--max-time", &max_time, "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", &url])?;
    let fields: Vec<&str> = out.split_whitespace().collect();
    let [code, size, seconds] = fields[..] else { bail!("unexpected curl output {out:?}") };
    if code != "200" {
        bail!("GET {url}: HTTP {code}");
    }
    Ok((size.parse()?, Duration::from_secs_f64(seconds.parse()?)))
}

/// One `lb-agent stats --json --interval 0`: its output's size and the command's wall time.
fn stats_json(topo: &Topology, config_path: &str) -> Result<(u64, Duration)> {
    let bin = agent::agent_bin()?;
    let t = Instant::now();
    let out = topo.exec_timeout(LB, &bin.to_string_lossy(), &["stats", "--json", "--interval", "0", "--config", config_path], PATIENCE)?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!("lb-agent stats --json failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((out.stdout.len() as u64, took))
}

/// Writes `new_text` over the running `old_text`, sends SIGHUP, and polls
/// the pinned RINGS (mmapped) until every slot the new plan changes holds its
/// new backend. Backend ids are kept across reloads and no backend is added
/// or removed, so the new plan's ids are the live ids.
fn reload_time(agent: &Proc, bpffs: &std::path::Path, config_path: &std::path::Path, old_text: &str, new_text: &str) -> Result<(Duration, usize)> {
    let old = plan::plan(&config::parse(old_text, "old").map_err(|e| anyhow::anyhow!("{e}"))?);
    let new = plan::plan(&config::parse(new_text, "new").map_err(|e| anyhow::anyhow!("{e}"))?);
    let mut changed = Vec::new();
    for (o, n) in old.vips.iter().zip(&new.vips) {
        let base = n.row * new.ring_size;
        changed.extend(o.ring().iter().zip(n.ring()).enumerate().filter(|(_, (a, b))| a != b).map(|(s, (_, b))| (base + s as u32, *b)));
    }
    let data = MapData::from_pin(bpffs.join(maps::RINGS)).context("opening the pinned RINGS")?;
    let rings = MappedRings::from_map(&data)?;
    if changed.iter().all(|(slot, id)| rings.get(*slot) == Some(*id)) {
        bail!("the new ring is live before the reload: the bench's change does not change the rings");
    }
    std::fs::write(config_path, new_text)?;
    let t = Instant::now();
    // SAFETY: a signal to the agent we started.
    if unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) } != 0 {
        bail!("SIGHUP to the agent: {}", std::io::Error::last_os_error());
    }
    let mut pending: BTreeSet<(u32, u32)> = changed.iter().copied().collect();
    while !pending.is_empty() {
        pending.retain(|(slot, id)| rings.get(*slot) != Some(*id));
        if t.elapsed() > PATIENCE {
            bail!("{} changed slots still not live {PATIENCE:?} after SIGHUP; agent log:\n{}", pending.len(), agent.log_tail(20));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok((t.elapsed(), changed.len()))
}
