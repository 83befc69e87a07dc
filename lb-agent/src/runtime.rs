//! `lb-agent run`: adopt the pinned balancer of an earlier agent or load a
//! new one, reconcile it with the config, keep it healthy, apply reloads in
//! place, and leave it forwarding on exit (unless told to unload).

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _, Result};
use lb_common::{flows::LoadedState, programs};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{
    announce::drain::Drained,
    config::{self, Config},
    control::{self, Answer, Claim, Request},
    dataplane::{self, live::LiveMaps, reconcile, store::MapStore as _, LoadOptions, ResolvedBackend},
    health,
    health::supervisor::{self, SharedSupervisor, Supervisor},
    metrics::{self, Metrics},
    nexthop, pins,
    plan::{self, Plan},
};

/// How `lb-agent run` was asked to behave.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config_path: PathBuf,
    /// Replace a pinned balancer whose load-time settings differ from the
    /// config (drops its flow table) instead of refusing.
    pub full_restart: bool,
    /// Detach and unpin everything on exit (the old behaviour).
    pub unload_on_exit: bool,
    /// Load the balancer with kernel events (`kernel_events`).
    pub kernel_events: bool,
}

/// Loads and validates a config; the error lists every problem (file, field,
/// value) and ends the program with [`ExitCode::InvalidConfig`](control::exit_code::ExitCode).
pub fn load_config(path: &Path) -> Result<Config> {
    config::load(path).map_err(|e| control::exit_code::coded(control::exit_code::ExitCode::InvalidConfig, anyhow::anyhow!("invalid config:\n{e}")))
}

/// One line on stdout that supervisors and tests wait for.
pub fn ready(what: &str) {
    println!("ready: {what}");
    let _ = std::io::stdout().flush();
}

/// The state of a running agent.
struct Running {
    options: RunOptions,
    config: Config,
    plan: Plan,
    iface: nexthop::Interface,
    handle: rtnetlink::Handle,
    loaded: LoadedState,
    live: LiveMaps,
    supervisor: SharedSupervisor<LiveMaps>,
    checkers: Vec<JoinHandle<()>>,
    dsr: Dsr,
    /// The Prometheus endpoint's state, unless `lb.metrics_listen = "off"`.
    metrics: Option<Arc<Metrics>>,
    /// Routes the routing daemon announces (`[announce]`), if configured.
    announcer: Option<crate::announce::Announcer>,
    /// Whether the maps hold exactly what `plan` and the supervisor say. A
    /// reload that failed part-way leaves them mixed; the next reload then
    /// rewrites every VIP instead of keeping unchanged ones as they are.
    maps_match_plan: bool,
}

/// DSR-aware health checks: their routing and the object of their tc
/// program (loaded only when a check needs it). Not pinned: they matter
/// only while an agent runs checks.
#[derive(Default)]
struct Dsr {
    object: Option<aya::Ebpf>,
    routing: Option<health::dsr::DsrRouting>,
    pairs: Vec<health::dsr::DsrPair>,
}

impl Dsr {
    /// Installs the routing for `config`'s DSR-aware checks (replacing what
    /// an earlier config installed, if the pairs differ).
    async fn install(&mut self, config: &Config, plan: &Plan, opts: &LoadOptions, handle: &rtnetlink::Handle, iface: &nexthop::Interface) -> Result<()> {
        let pairs = dsr_check_pairs(config, plan);
        if pairs == self.pairs && (self.routing.is_some() || pairs.is_empty()) {
            return Ok(());
        }
        self.remove().await;
        if pairs.is_empty() {
            return Ok(());
        }
        let object = match self.object.as_mut() {
            Some(o) => o,
            None => self.object.insert(dataplane::load_health_encap_object(opts, &config.lb.bpffs_dir)?),
        };
        self.routing = Some(health::dsr::install(handle, iface, &pairs, object).await?);
        self.pairs = pairs;
        Ok(())
    }

    async fn remove(&mut self) {
        if let (Some(routing), Some(object)) = (self.routing.take(), self.object.as_mut()) {
            routing.remove(object).await;
        }
        self.pairs.clear();
    }
}

/// The (backend, VIP) pairs whose checks are DSR-aware.
fn dsr_check_pairs(config: &Config, plan: &Plan) -> Vec<health::dsr::DsrPair> {
    config
        .vips
        .iter()
        .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
        .filter(|(_, b)| b.check.dsr)
        .filter_map(|(v, b)| {
            let backend_id = plan.backend_id(b.address)?;
            Some(health::dsr::DsrPair { backend_id, backend: b.address, vip: v.address })
        })
        .collect()
}

pub async fn run(options: RunOptions) -> Result<()> {
    let config = load_config(&options.config_path)?;
    let claim = Claim::take(&config.lb.run_dir, &config.lb.interface)?;
    // Bound before anything is loaded: a taken port changes nothing.
    let metrics_listener = match config.lb.metrics_listen {
        Some(addr) => Some(metrics::server::bind(addr).await?),
        None => None,
    };
    let handle = nexthop::connect()?;
    let iface = nexthop::interface(&handle, &config.lb.interface)
        .await
        .with_context(|| format!("lb.interface = {:?}", config.lb.interface))?;
    crate::vlan_offload::keep_rx_vlan_tags(&iface.name);
    let opts = LoadOptions { kernel_events: options.kernel_events, ..load_options(&config, &iface)? };
    let loaded = dataplane::loaded_state(&opts, iface.index);
    let dir = config.lb.bpffs_dir.clone();

    let adopted = adoptable(&dir, &loaded, options.full_restart)?;
    let mut fresh = if adopted {
        None
    } else {
        let mut ebpf = dataplane::load_balancer_object(&opts)?;
        dataplane::load_program(&mut ebpf, programs::BALANCER)?;
        pins::pin_object(&mut ebpf, &dir)?;
        Some(ebpf)
    };
    let setup = async {
        let mut live = LiveMaps::open(&dir)?;
        if fresh.is_some() {
            live.set_loaded_state(loaded)?;
        }
        let plan = plan::plan_keeping(&config, &live.kept()?).map_err(anyhow::Error::msg)?;
        let resolved = resolve_backends(&handle, &iface, &plan, &opts).await?;
        let (supervisor, changes) = reconcile::apply(&mut live, &config, &plan, &resolved, None)?;
        let mut plan = plan;
        plan.forget_rings();
        release_freed_memory();
        let mut dsr = Dsr::default();
        dsr.install(&config, &plan, &opts, &handle, &iface).await?;
        anyhow::Ok((live, plan, supervisor, changes, dsr))
    };
    let (live, plan, supervisor, changes, dsr) = match setup.await {
        Ok(s) => s,
        Err(e) => {
            if fresh.is_some() {
                // Nothing was attached yet: leave no half-made pins behind.
                let _ = pins::remove_all(&dir);
            }
            return Err(e);
        }
    };
    let what = match fresh.as_mut() {
        Some(ebpf) => {
            let program: &mut aya::programs::Xdp =
                ebpf.program_mut(programs::BALANCER).context("balancer program missing")?.try_into()?;
            let attached = dataplane::attach(program, &iface.name, config.lb.xdp_mode).and_then(|(link, mode)| {
                pins::pin_link(program, link, &dir)?;
                Ok(mode)
            });
            match attached {
                Ok(mode) => format!("attached {} to {} in {mode} mode", programs::BALANCER, iface.name),
                Err(e) => {
                    let _ = pins::remove_all(&dir);
                    return Err(e);
                }
            }
        }
        None => format!("adopted the pinned {} on {} ({changes})", programs::BALANCER, iface.name),
    };
    drop(fresh);
    let kernel_events = follow_kernel_events(&live, &dir, options.kernel_events)?;
    tracing::info!(
        "balancing {} VIP(s) over {} backend(s) on {} (ring size {}, pinned in {}): {changes}",
        plan.vips.len(),
        plan.backends.len(),
        iface.name,
        plan.ring_size,
        dir.display()
    );
    let mut metrics_server = None;
    let metrics = match metrics_listener {
        Some(listener) => {
            let mode = crate::xdp_attach::mode(&handle, iface.index).await.unwrap_or_else(|e| {
                tracing::warn!("cannot tell the XDP mode of {}: {e:#}", iface.name);
                "unknown"
            });
            let m = Metrics::new(config.clone(), plan.clone(), metrics::Attachment { interface: iface.name.clone(), mode });
            tracing::info!(address = %listener.local_addr()?, "serving Prometheus metrics at {}", metrics::server::METRICS_PATH);
            metrics_server = Some(metrics::server::spawn(listener, m.clone()));
            Some(m)
        }
        None => None,
    };
    let previous_drain = crate::previous_owners::spawn(live.reopen()?);
    let supervisor = Arc::new(Mutex::new(observed(supervisor, &metrics)));
    let checkers = supervisor::spawn(&config, supervisor.clone());
    let (control_server, requests) = control::server::start(claim.listen()?);
    let announcer = crate::announce::follow(None, &config, &handle, &supervisor).await?;
    let mut running =
        Running { options, config, plan, iface, handle, loaded, live, supervisor, checkers, dsr, metrics, announcer, maps_match_plan: true };
    ready(&what);

    let signal = serve(&mut running, requests).await;
    control_server.stop().await;
    // Routers first: stop sending here before anything else changes.
    if let Some(announcer) = running.announcer.take() {
        announcer.stop(signal).await;
    }
    for task in running.checkers.iter().chain(&metrics_server).chain(&kernel_events).chain([&previous_drain]) {
        task.abort();
    }
    running.dsr.remove().await;
    if running.options.unload_on_exit {
        pins::remove_all(&dir)?;
        tracing::info!("{signal}: detached from {} and removed the pins in {}", running.iface.name, dir.display());
    } else {
        tracing::info!(
            "{signal}: exiting; the balancer keeps forwarding on {} (pinned in {}); `lb-agent detach` removes it",
            running.iface.name,
            dir.display()
        );
    }
    drop(claim);
    Ok(())
}

/// A maintenance drain in progress: the request, answered when it ends.
type Draining = (control::Pending, Pin<Box<dyn Future<Output = Drained>>>);

/// Serves reload requests (SIGHUP, the control socket's task) until
/// SIGINT/SIGTERM or the end of a maintenance drain. A signal during a drain
/// stops the agent at once (the routes stay withdrawn).
async fn serve(running: &mut Running, mut requests: mpsc::Receiver<control::Pending>) -> &'static str {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let mut draining: Option<Draining> = None;
    let stop = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break "SIGINT",
            _ = term.recv() => break "SIGTERM",
            _ = hup.recv() => {
                if draining.is_some() {
                    tracing::warn!("SIGHUP ignored: in maintenance, the agent stops once drained");
                } else {
                    let _ = reload(running).await;
                }
            }
            Some(pending) = requests.recv() => {
                if draining.is_some() {
                    pending.answer(Answer::Error("in maintenance: the routes are withdrawn and the agent stops once drained".into()));
                    continue;
                }
                match pending.request {
                    Request::Reload => {
                        let answer = match reload(running).await {
                            Ok(summary) => Answer::Ok(summary),
                            Err(e) => Answer::Error(format!("{e:#}")),
                        };
                        pending.answer(answer);
                    }
                    Request::Maintenance => match maintenance(running).await {
                        Some(drain) => draining = Some((pending, drain)),
                        None => {
                            pending.answer(Answer::Ok("no [announce] table, nothing to withdraw; stopping".into()));
                            return "maintenance";
                        }
                    },
                }
            }
            drained = async { draining.as_mut().expect("guarded by is_some").1.as_mut().await }, if draining.is_some() => {
                tracing::info!("maintenance: routes withdrawn, {drained}; stopping");
                let (pending, _) = draining.take().expect("guarded by is_some");
                pending.answer(Answer::Ok(format!("routes withdrawn, {drained}; stopping")));
                return "maintenance";
            }
        }
    };
    if let Some((pending, _)) = draining {
        tracing::info!("{stop} during the maintenance drain: stopping now; the routes stay withdrawn");
        pending.answer(Answer::Ok(format!("routes withdrawn; {stop} ended the drain early; stopping")));
    }
    stop
}

/// `lb-agent maintenance`: withdraws the routes and returns the drain to
/// wait for, which the main loop awaits alongside signals (None: nothing
/// is announced; stop at once).
async fn maintenance(running: &Running) -> Option<Pin<Box<dyn Future<Output = Drained>>>> {
    let Some(announcer) = running.announcer.as_ref() else {
        tracing::info!("maintenance: no [announce] table, nothing to withdraw; stopping");
        return None;
    };
    announcer.withdraw_all("maintenance").await;
    let settings = running.config.announce.clone().unwrap_or_else(|| unreachable!("an announcer has settings"));
    let bpffs_dir = running.config.lb.bpffs_dir.clone();
    Some(Box::pin(async move { crate::announce::drain::wait(&bpffs_dir, settings.drain_timeout, settings.drain_quiet).await }))
}

/// Re-reads the config and applies the difference in place; on any error
/// nothing has changed and the old config keeps running.
async fn reload(running: &mut Running) -> Result<String> {
    let result = try_reload(running).await;
    match &result {
        Ok(summary) => tracing::info!("reload of {}: {summary}", running.options.config_path.display()),
        Err(e) => tracing::error!("reload of {} refused, the running config is unchanged: {e:#}", running.options.config_path.display()),
    }
    result
}

async fn try_reload(running: &mut Running) -> Result<String> {
    let mut phases = Phases::start();
    let config = load_config(&running.options.config_path)?;
    phases.done("parse");
    // The MTU as it is now (a changed MTU needs a restart); the addresses as
    // they were at start, which the loaded tunnel sources came from.
    let mtu = nexthop::interface(&running.handle, &running.iface.name).await?.mtu;
    let iface = nexthop::Interface { mtu, ..running.iface.clone() };
    let problems = needs_restart(&running.config, &config, &running.loaded, &iface)?;
    if !problems.is_empty() {
        bail!(
            "these changes cannot be applied in place:\n  {}\nrestart with `lb-agent run --full-restart` to load them (established flows may move), or undo them",
            problems.join("\n  ")
        );
    }
    let previous = running.maps_match_plan.then_some(plan::Previous { config: &running.config, plan: &running.plan });
    let plan = plan::plan_reusing(&config, &running.live.kept()?, previous).map_err(anyhow::Error::msg)?;
    let opts = load_options(&config, &iface)?;
    phases.done("plan");
    // Everything that can fail without touching the kernel comes first.
    let resolved = resolve_backends(&running.handle, &running.iface, &plan, &opts).await?;
    phases.done("resolve next hops");
    // The supervisor is swapped under its lock, released before any await.
    let applied = {
        let mut guard = running.supervisor.lock().unwrap_or_else(|e| e.into_inner());
        for task in running.checkers.drain(..) {
            task.abort();
        }
        let replaced = running.maps_match_plan.then_some(&*guard);
        reconcile::apply(&mut running.live, &config, &plan, &resolved, replaced).map(|(supervisor, changes)| {
            *guard = observed(supervisor, &running.metrics);
            changes
        })
    };
    let changes = match applied {
        Ok(changes) => {
            running.maps_match_plan = true;
            changes
        }
        Err(e) => {
            // The maps may be partly updated: the old checkers go on with the old config.
            running.maps_match_plan = false;
            running.checkers = supervisor::spawn(&running.config, running.supervisor.clone());
            return Err(e.context("applying the new config failed part-way; fix the cause and reload again"));
        }
    };
    let mut plan = plan;
    plan.forget_rings();
    release_freed_memory();
    phases.done("apply to the maps");
    if let Some(m) = &running.metrics {
        m.programmed(config.clone(), plan.clone());
    }
    // Before the checks start: DSR-aware ones need their routes.
    let dsr = running.dsr.install(&config, &plan, &opts, &running.handle, &running.iface).await;
    running.checkers = supervisor::spawn(&config, running.supervisor.clone());
    let announcer = crate::announce::follow(running.announcer.take(), &config, &running.handle, &running.supervisor).await;
    phases.done("checks and routes");
    running.config = config;
    running.plan = plan;
    let changes = match announcer {
        Ok(a) => {
            running.announcer = a;
            changes.to_string()
        }
        Err(e) => format!("{changes}; but announcing failed: {e:#} (nothing is announced until the next reload)"),
    };
    match dsr {
        Ok(()) => Ok(changes),
        Err(e) => Ok(format!("{changes}; but the routes of DSR-aware health checks failed: {e:#} (those checks fail until the next reload)")),
    }
}

/// Hands the heap freed by a plan's ring builds (megabytes for a large
/// config) back to the kernel; glibc would otherwise keep it for reuse.
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };
}

/// Debug log of how long each step of a reload took (what a slow reload of
/// a large config spends its time on).
struct Phases(std::time::Instant);

impl Phases {
    fn start() -> Self {
        Self(std::time::Instant::now())
    }
    fn done(&mut self, phase: &str) {
        let now = std::time::Instant::now();
        tracing::debug!("reload: {phase} took {:.1} ms", (now - self.0).as_secs_f64() * 1e3);
        self.0 = now;
    }
}

/// `supervisor`, feeding the health check histogram if metrics are on.
fn observed(mut supervisor: Supervisor<LiveMaps>, metrics: &Option<Arc<Metrics>>) -> Supervisor<LiveMaps> {
    if let Some(m) = metrics {
        supervisor.observe_checks(m.check_observer());
    }
    supervisor
}

/// Whether a balancer is pinned under `dir` that this config may adopt.
/// A pinned balancer loaded with other settings is refused unless
/// `full_restart`, in which case it is removed first.
fn adoptable(dir: &Path, wanted: &LoadedState, full_restart: bool) -> Result<bool> {
    if !pins::has_link(dir) {
        return Ok(false);
    }
    let pinned = LiveMaps::pinned_loaded_state(dir)?;
    let mut differences = loaded_differences(&pinned, wanted);
    // Kernel events are for debugging: a restart without the flag (a
    // supervisor's) must not cost the flow table, so they change only with
    // --full-restart.
    let events_differ = pinned.kernel_events != wanted.kernel_events;
    if events_differ && full_restart {
        differences.push(format!("--kernel-events: {} -> {}", on_off(pinned.kernel_events), on_off(wanted.kernel_events)));
    }
    if differences.is_empty() {
        if events_differ {
            tracing::warn!(
                "the pinned balancer runs with kernel events {}; adopting it as it is (--full-restart would load it again, losing its flow table)",
                on_off(pinned.kernel_events)
            );
        }
        return Ok(true);
    }
    if !full_restart {
        bail!(
            "the balancer pinned in {} was loaded with other settings than this config:\n  {}\nthese cannot change in place; run with --full-restart to replace it (its flow table is lost, established flows may move), or undo the changes",
            dir.display(),
            differences.join("\n  ")
        );
    }
    tracing::warn!("--full-restart: replacing the pinned balancer ({})", differences.join("; "));
    pins::remove_all(dir)?;
    Ok(false)
}

fn on_off(level: u32) -> &'static str {
    if level == u32::from(lb_common::events::OFF) { "off" } else { "on" }
}

/// Forwards the balancer's kernel events when the running program has them
/// (asked for now, or left on by the agent that loaded it).
fn follow_kernel_events(live: &LiveMaps, dir: &Path, asked: bool) -> Result<Option<JoinHandle<()>>> {
    let running = live.loaded_state()?.kernel_events != u32::from(lb_common::events::OFF);
    if !running {
        return Ok(None);
    }
    if !asked {
        tracing::warn!("forwarding the kernel events of the pinned balancer, which was loaded with --kernel-events");
    }
    let task = crate::kernel_events::follow(&dir.join(pins::PROGRAM_PIN))?;
    tracing::info!("kernel events on: logged with target {}", crate::kernel_events::TARGET);
    Ok(Some(task))
}

/// Settings that size maps or are load-time constants, old -> new.
fn loaded_differences(old: &LoadedState, new: &LoadedState) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name}: {a} -> {b}"));
        }
    };
    field("object version", old.version.to_string(), new.version.to_string());
    field("lb.ring_size", old.ring_size.to_string(), new.ring_size.to_string());
    field("lb.hash_seed", old.hash_seed.to_string(), new.hash_seed.to_string());
    field("lb.max_vips", old.max_vips.to_string(), new.max_vips.to_string());
    field("lb.max_backends", old.max_backends.to_string(), new.max_backends.to_string());
    field("lb.flow_table_size", old.flow_table_size.to_string(), new.flow_table_size.to_string());
    field("interface MTU", old.mtu.to_string(), new.mtu.to_string());
    field("lb.icmp_echo/too_big/unknown_port (policy bits)", format!("{:#x}", old.policy), format!("{:#x}", new.policy));
    field("interface index", old.ifindex.to_string(), new.ifindex.to_string());
    field("lb.gue_port", old.gue_port.to_string(), new.gue_port.to_string());
    for (name, family, was, now) in [
        ("lb.tunnel_source_v4", lb_common::FAMILY_V4, &old.tunnel_source_v4, &new.tunnel_source_v4),
        ("lb.tunnel_source_v6", lb_common::FAMILY_V6, &old.tunnel_source_v6, &new.tunnel_source_v6),
    ] {
        let (was, now) = (tunnel_source(was, family), tunnel_source(now, family));
        if was == now {
            continue;
        }
        let mut line = format!("{name}: {} -> {}", was.map_or("none".into(), |a| a.to_string()), now.map_or("none".into(), |a| a.to_string()));
        if let (Some(was), None) = (was, now) {
            line += &format!(" (the interface has no such address now: restore {was} on it, or set {name} = \"{was}\")");
        }
        out.push(line);
    }
    out
}

/// A tunnel source as the pinned state records it; all-zero words mean none.
fn tunnel_source(words: &lb_common::AddrWords, family: u8) -> Option<IpAddr> {
    if words.iter().all(|w| *w == 0) {
        return None;
    }
    lb_common::words_addr(words, family)
}

/// What a reload cannot change: the load-time settings and where the agent lives.
fn needs_restart(old: &Config, new: &Config, loaded: &LoadedState, iface: &nexthop::Interface) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if old.lb.interface != new.lb.interface {
        out.push(format!("lb.interface: {:?} -> {:?}", old.lb.interface, new.lb.interface));
    }
    if old.lb.xdp_mode != new.lb.xdp_mode {
        out.push(format!("lb.xdp_mode: {} -> {}", old.lb.xdp_mode, new.lb.xdp_mode));
    }
    if old.lb.bpffs_dir != new.lb.bpffs_dir {
        out.push(format!("lb.bpffs_dir: {} -> {}", old.lb.bpffs_dir.display(), new.lb.bpffs_dir.display()));
    }
    if old.lb.run_dir != new.lb.run_dir {
        out.push(format!("lb.run_dir: {} -> {}", old.lb.run_dir.display(), new.lb.run_dir.display()));
    }
    // The endpoint is bound once, at start.
    if old.lb.metrics_listen != new.lb.metrics_listen {
        let show = |a: Option<std::net::SocketAddr>| a.map_or_else(|| config::METRICS_OFF.to_string(), |a| a.to_string());
        out.push(format!("lb.metrics_listen: {} -> {}", show(old.lb.metrics_listen), show(new.lb.metrics_listen)));
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let wanted = dataplane::loaded_state(&load_options(new, iface)?, iface.index);
    out.extend(loaded_differences(loaded, &wanted));
    Ok(out)
}

fn load_options(config: &Config, iface: &nexthop::Interface) -> Result<LoadOptions> {
    Ok(LoadOptions::from_config(config, iface.mtu, iface.ipv4.first().copied(), iface.ipv6.first().copied()))
}

/// `lb-agent detach`: removes the balancer pinned under the config's
/// bpffs_dir. Refused while an agent runs for the interface (it would
/// otherwise keep writing maps nobody forwards with).
pub fn detach(config: &Config) -> Result<bool> {
    let _claim = Claim::take(&config.lb.run_dir, &config.lb.interface).map_err(|e| {
        if e.is::<control::lock::Held>() {
            e.context("refusing to detach under a running agent: stop it (SIGTERM keeps forwarding), then detach, or run it with --unload-on-exit")
        } else {
            e
        }
    })?;
    let routes = crate::announce::remove_leftovers_now(config).context("removing the VIP routes a killed agent left")?;
    if routes > 0 {
        tracing::info!("withdrew {routes} VIP route(s) a killed agent left");
    }
    pins::remove_all(&config.lb.bpffs_dir)
}

/// Next-hop MACs for every backend: its static `mac` (the plan's) if it has
/// one, else netlink (one resolution pass for all of them).
async fn resolve_backends(
    handle: &rtnetlink::Handle,
    iface: &nexthop::Interface,
    plan: &Plan,
    opts: &LoadOptions,
) -> Result<HashMap<u32, ResolvedBackend>> {
    for b in &plan.backends {
        match b.address {
            IpAddr::V4(_) if opts.tunnel_source_v4.is_none() => bail!(
                "backend {} is IPv4 but {} has no IPv4 address and lb.tunnel_source_v4 is not set: \
                 give {} an IPv4 address or set lb.tunnel_source_v4",
                b.address,
                iface.name,
                iface.name
            ),
            IpAddr::V6(_) if opts.tunnel_source_v6.is_none() => bail!(
                "backend {} is IPv6 but {} has no global IPv6 address and lb.tunnel_source_v6 is not set: \
                 give {} a global IPv6 address or set lb.tunnel_source_v6",
                b.address,
                iface.name,
                iface.name
            ),
            _ => {}
        }
    }
    let to_resolve: Vec<IpAddr> = plan.backends.iter().filter(|b| b.mac.is_none()).map(|b| b.address).collect();
    let resolved = nexthop::resolve_all(handle, iface, &to_resolve).await.context("resolving the backends' next hops")?;
    let mut out = HashMap::new();
    for b in &plan.backends {
        let mac = b.mac.or_else(|| resolved.get(&b.address).copied()).context("backend without a next hop")?;
        tracing::info!("backend {} via next hop {mac}", b.address);
        out.insert(b.id, ResolvedBackend { address: b.address, next_hop_mac: mac });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(v4: Option<std::net::Ipv4Addr>, v6: Option<std::net::Ipv6Addr>) -> LoadedState {
        let opts = LoadOptions { tunnel_source_v4: v4, tunnel_source_v6: v6, ..LoadOptions::default() };
        dataplane::loaded_state(&opts, 7)
    }

    /// An LB host whose interface lost its IPv6 address after a link-down
    /// crash: the refusal names the addresses, not their words, and says
    /// what to do.
    #[test]
    fn a_lost_tunnel_source_is_named_as_an_address_with_a_hint() {
        let v4 = "198.51.100.2".parse().ok();
        let before = state(v4, "2001:db8::2".parse().ok());
        let after = state(v4, None);
        let lines = loaded_differences(&before, &after);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("lb.tunnel_source_v6: 2001:db8::2 -> none"), "{}", lines[0]);
        assert!(lines[0].contains("restore 2001:db8::2") && lines[0].contains("lb.tunnel_source_v6 = \"2001:db8::2\""), "{}", lines[0]);
        let moved = loaded_differences(&before, &state("198.51.100.3".parse().ok(), "2001:db8::2".parse().ok()));
        assert_eq!(moved, vec!["lb.tunnel_source_v4: 198.51.100.2 -> 198.51.100.3".to_string()]);
    }
}
