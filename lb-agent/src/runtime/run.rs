//! Start: adopt or load the balancer, reconcile it with the config, attach,
//! start the services; then serve until a signal, and leave it forwarding.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use lb_common::programs;
use tokio::task::JoinHandle;

use super::{adopt::adoptable, cluster, dsr::Dsr, load_options, next_hops::resolve_backends, observed, ready, release_freed_memory, serve::serve, RunOptions, Running};
use crate::{
    control::{self, Claim},
    dataplane::{self, live::LiveMaps, reconcile, store::MapStore as _, LoadOptions},
    health::supervisor,
    metrics::{self, endpoint::Endpoint, Metrics},
    nexthop, pins, plan,
};

pub async fn run(options: RunOptions) -> Result<()> {
    let (file, text, cluster_doc) = cluster::initial(&options.config_path).await?;
    let claim = Claim::take(&file.lb.run_dir, &file.lb.interface)?;
    let announce = file.announce.clone();
    let mut started = false;
    let result = run_claimed(options, Loaded { file, text, cluster_doc }, &claim, &mut started).await;
    if let (Err(e), false, Some(announce)) = (&result, started, &announce) {
        withdraw_after_failed_start(announce, e).await;
    }
    drop(claim);
    result
}

/// The config `run` starts with: the file's (composed with the cluster's
/// document, if it names a `[source]`), its text, and that document.
struct Loaded {
    file: crate::config::Config,
    text: String,
    cluster_doc: Option<crate::config::compose::ClusterDoc>,
}

/// A start that failed leaves no agent to health-check the routes it or a
/// predecessor installed: routers must stop sending here.
async fn withdraw_after_failed_start(announce: &crate::announce::AnnounceConfig, error: &anyhow::Error) {
    let removed = match nexthop::connect() {
        Ok(handle) => crate::announce::remove_leftovers(&handle, announce).await,
        Err(e) => Err(e),
    };
    match removed {
        Ok(0) => {}
        Ok(n) => tracing::warn!("the start failed ({error:#}): withdrew {n} VIP route(s) from table {}, as no agent checks their backends", announce.table),
        Err(e) => tracing::error!(
            "the start failed, and withdrawing the VIP routes failed too: {e:#}; remove them with `lb-agent withdraw` or `ip route flush table {} proto {}`",
            announce.table,
            announce.protocol
        ),
    }
}

/// [`run`] once the interface is ours; `started` turns true once the
/// balancer serves (later errors happen on the way out, not at start).
async fn run_claimed(options: RunOptions, loaded_config: Loaded, claim: &Claim, started: &mut bool) -> Result<()> {
    let Loaded { file, text, cluster_doc } = loaded_config;
    let (config, drains) = super::with_drains(&file)?;
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
    // Kept even with the endpoint off: a reload may turn it on.
    let mode = crate::xdp_attach::mode(&handle, iface.index).await.unwrap_or_else(|e| {
        tracing::warn!("cannot tell the XDP mode of {}: {e:#}", iface.name);
        "unknown"
    });
    let m = Metrics::new(config.clone(), plan.clone(), metrics::Attachment { interface: iface.name.clone(), mode });
    let metrics_endpoint = metrics_listener.map(|listener| Endpoint::serve(listener, m.clone())).transpose()?;
    let metrics = Some(m);
    let previous_drain = crate::previous_owners::spawn(live.reopen()?);
    let supervisor = Arc::new(Mutex::new(observed(supervisor, &metrics)));
    let checkers = supervisor::spawn(&config, supervisor.clone());
    let (control_server, requests) = control::server::start(claim.listen()?);
    let announcer = crate::announce::follow(None, &config, &handle, &supervisor).await?;
    ready(&what);
    *started = true;
    let watchdog = crate::notify::Watchdog::ready(&what, super::liveness(&config));
    let guard = start_guard(&options, &config);
    let mut running = Running {
        options,
        config,
        plan,
        iface,
        handle,
        loaded,
        live,
        supervisor,
        checkers,
        dsr,
        metrics,
        metrics_endpoint,
        announcer,
        watchdog,
        guard,
        maps_match_plan: true,
        cluster: None,
        drains,
    };
    super::record_running(&file, &text);
    running.cluster = cluster_doc.and_then(|doc| cluster::start(&running, doc));
    if let (Some(c), Some(m)) = (&running.cluster, &running.metrics) {
        m.follow_source(cluster::status(c));
    }

    let signal = serve(&mut running, requests).await;
    crate::notify::stopping(signal);
    control_server.stop().await;
    // The routes follow the balancer: withdrawn first (routers stop sending
    // here before anything else changes) when it is unloaded, else left for
    // the next agent, which adopts both.
    if let Some(announcer) = running.announcer.take() {
        if running.options.unload_on_exit {
            announcer.stop(signal).await;
        } else {
            announcer.leave(signal).await;
        }
    }
    for task in running.checkers.iter().chain(&kernel_events).chain([&previous_drain]) {
        task.abort();
    }
    if let Some(endpoint) = running.metrics_endpoint.take() {
        endpoint.stop().await;
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
    if let Some(guard) = running.guard.take() {
        guard.clean();
    }
    // Stops the follower; this host's state expires with its lease.
    drop(running.cluster.take());
    Ok(())
}

/// The liveness guard, if asked for and there are routes to guard. A guard
/// that cannot start is logged, not fatal: the balancer serves already.
fn start_guard(options: &RunOptions, config: &crate::config::Config) -> Option<crate::announce::guard::Guard> {
    if !options.liveness_guard {
        return None;
    }
    let Some(announce) = &config.announce else {
        tracing::warn!("--liveness-guard without an [announce] table: no routes to guard");
        return None;
    };
    crate::announce::guard::Guard::spawn(announce)
        .inspect_err(|e| tracing::error!("{e:#}; a crash or hang of this agent will leave its routes: restart it to retry"))
        .ok()
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
