//! A reload: the new config applied to the running balancer in place, or
//! refused with nothing changed.

use anyhow::{bail, Result};

use super::{load_config, load_options, next_hops::resolve_backends, observed, release_freed_memory, restart::needs_restart, Running};
use crate::{dataplane::reconcile, dataplane::store::MapStore as _, health::supervisor, metrics::endpoint, nexthop, plan};

/// Re-reads the config and applies the difference in place; on any error
/// nothing has changed and the old config keeps running.
pub(super) async fn reload(running: &mut Running) -> Result<String> {
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
    // Bound now, before anything changes: a taken port refuses the reload.
    let rebind = endpoint::prepare(running.metrics_endpoint.as_ref(), config.lb.metrics_listen).await?;
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
    let mut endpoint_warning = None;
    if let Some(m) = &running.metrics {
        m.programmed(config.clone(), plan.clone());
        let (serving, warning) = endpoint::commit(running.metrics_endpoint.take(), rebind, m.clone()).await;
        running.metrics_endpoint = serving;
        endpoint_warning = warning;
    }
    // Before the checks start: DSR-aware ones need their routes.
    let dsr = running.dsr.install(&config, &plan, &opts, &running.handle, &running.iface).await;
    running.checkers = supervisor::spawn(&config, running.supervisor.clone());
    let announcer = crate::announce::follow(running.announcer.take(), &config, &running.handle, &running.supervisor).await;
    phases.done("checks and routes");
    let listen_change = (running.config.lb.metrics_listen != config.lb.metrics_listen).then(|| {
        let show = |a: Option<std::net::SocketAddr>| a.map_or_else(|| crate::config::METRICS_OFF.to_string(), |a| a.to_string());
        format!("lb.metrics_listen: {} -> {}", show(running.config.lb.metrics_listen), show(config.lb.metrics_listen))
    });
    running.config = config;
    running.plan = plan;
    let mut changes = match announcer {
        Ok(a) => {
            running.announcer = a;
            changes.to_string()
        }
        Err(e) => format!("{changes}; but announcing failed: {e:#} (nothing is announced until the next reload)"),
    };
    if let Some(moved) = listen_change {
        changes += &format!("; {moved}");
    }
    if let Some(warning) = endpoint_warning {
        changes += &format!("; but {warning}");
    }
    match dsr {
        Ok(()) => Ok(changes),
        Err(e) => Ok(format!("{changes}; but the routes of DSR-aware health checks failed: {e:#} (those checks fail until the next reload)")),
    }
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
