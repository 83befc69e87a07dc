//! A reload: the new config applied to the running balancer in place, or
//! refused with nothing changed. Also what applies runtime drains (a config
//! that differs from the running one by one weight), and the dry run that
//! only reports what a reload would change.

use anyhow::{bail, Context as _, Result};

use super::{cluster, load_options, record_running, next_hops::resolve_backends, observed, release_freed_memory, restart::needs_restart, Running};
use crate::config::compose::ClusterDoc;
use crate::config::Config;
use crate::control::{drains::Drains, Request};
use crate::plan::changes::{self, ChangeReport};
use crate::{dataplane::reconcile, dataplane::store::MapStore as _, health::supervisor, metrics::endpoint, nexthop, plan};

/// Re-reads the config and applies the difference in place; on any error
/// nothing has changed and the old config keeps running. With a config
/// source, the local file is composed with `doc` (a new revision) or with
/// the document running now.
pub(super) async fn reload(running: &mut Running, doc: Option<ClusterDoc>) -> Result<String> {
    running.watchdog.reloading();
    let result = reload_file(running, doc).await;
    let status = match &result {
        Ok(summary) => {
            tracing::info!("reload of {}: {summary}", running.options.config_path.display());
            format!("reloaded: {summary}")
        }
        Err(e) => {
            tracing::error!("reload of {} refused, the running config is unchanged: {e:#}", running.options.config_path.display());
            "reload refused; the running config is unchanged (see the log)".to_string()
        }
    };
    running.watchdog.reloaded(&status, super::liveness(&running.config));
    result
}

/// `lb-agent drain` / `undrain`: the running config with one weight
/// changed, applied like a reload (the file is not re-read), then recorded.
pub(super) async fn drain(running: &mut Running, request: &Request) -> Result<String> {
    let (drains, config, what) = match request {
        Request::Drain { vip, backend } => {
            let (d, c) = running.drains.drain(&running.config, vip, *backend).map_err(anyhow::Error::msg)?;
            (d, c, format!("drained {backend} of VIP {vip:?}"))
        }
        Request::Undrain { vip, backend } => {
            let (d, c) = running.drains.undrain(&running.config, vip, *backend).map_err(anyhow::Error::msg)?;
            (d, c, format!("undrained {backend} of VIP {vip:?}"))
        }
        other => bail!("{} is no drain request", other.word()),
    };
    let result = apply(running, config, drains, vec![]).await.map(|summary| format!("{what}: {summary}"));
    match &result {
        Ok(summary) => tracing::info!("{summary}"),
        Err(e) => tracing::error!("{} refused, nothing changed: {e:#}", request.word()),
    }
    result
}

/// `lb-agent reload --dry-run`: what a reload of the file would change
/// against the running state (VIPs, backends, settings, slots moved per
/// VIP), and the changes it would refuse. Touches nothing.
pub(super) async fn dry_run(running: &Running) -> Result<String> {
    let file = cluster::load(&running.options.config_path, running.cluster.as_ref().map(|c| &c.doc))?;
    let applied = running.drains.apply(&file);
    let mtu = nexthop::interface(&running.handle, &running.iface.name).await?.mtu;
    let iface = nexthop::Interface { mtu, ..running.iface.clone() };
    let problems = needs_restart(&running.config, &applied.config, &running.loaded, &iface)?;
    let mut report = changes::report(&running.config, &applied.config);
    if problems.is_empty() {
        let new_plan = plan::plan_keeping(&applied.config, &running.live.kept()?).map_err(anyhow::Error::msg)?;
        changes::add_slots_moved(&mut report, &running.config, &running.plan, &new_plan);
    }
    let text = dry_run_text(&report, &applied.dropped, running.plan.ring_size);
    if !problems.is_empty() {
        bail!(
            "dry run of {}: nothing applied; a reload would be refused, these changes cannot be applied in place:\n  {}\n(restart with `lb-agent run --full-restart` to load them, or undo them)\nthe other changes:\n{text}",
            running.options.config_path.display(),
            problems.join("\n  ")
        );
    }
    Ok(format!("dry run of {}: nothing applied\n{text}", running.options.config_path.display()))
}

/// The dry run's report, one change a line.
fn dry_run_text(report: &ChangeReport, dropped: &[String], ring_size: u32) -> String {
    let mut out = String::new();
    if report.is_empty() && dropped.is_empty() {
        return "  no change\n".into();
    }
    for s in &report.settings {
        out += &format!("  setting {s}\n");
    }
    for v in &report.vips_added {
        out += &format!("  VIP {v} added\n");
    }
    for v in &report.vips_removed {
        out += &format!("  VIP {v} removed\n");
    }
    for v in &report.vips_changed {
        let moved = v.slots_moved.map_or(String::new(), |n| format!(" ({n} of {ring_size} slots move)"));
        out += &format!("  VIP {}{moved}:\n", v.vip);
        for c in &v.changes {
            out += &format!("    {c}\n");
        }
    }
    for d in dropped {
        out += &format!("  {d}\n");
    }
    out
}

async fn reload_file(running: &mut Running, doc: Option<ClusterDoc>) -> Result<String> {
    let doc = doc.as_ref().or(running.cluster.as_ref().map(|c| &c.doc));
    let (file, text) = cluster::load_text(&running.options.config_path, doc)?;
    let applied = running.drains.apply(&file);
    let summary = apply(running, applied.config, applied.kept, applied.dropped).await?;
    record_running(&file, &text);
    Ok(summary)
}

/// Applies `config` (drains applied) in place, then records `drains`;
/// `notes` go into the answer.
async fn apply(running: &mut Running, config: Config, drains: Drains, notes: Vec<String>) -> Result<String> {
    let report = changes::report(&running.config, &config);
    let mut summary = try_apply(running, config).await?;
    summary += &format!("; {report}");
    for n in notes {
        summary += &format!("; {n}");
    }
    if drains != running.drains {
        running.drains = drains;
        let lb = &running.config.lb;
        running.drains.write(&lb.run_dir, &lb.interface).context("applied, but recording the runtime drains failed (a restart would not keep them)")?;
    }
    Ok(summary)
}

async fn try_apply(running: &mut Running, config: Config) -> Result<String> {
    let mut phases = Phases::start();
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
