//! `lb-agent run`: adopt the pinned balancer of an earlier agent or load a
//! new one, reconcile it with the config, keep it healthy, apply reloads in
//! place, and leave it forwarding on exit (unless told to unload).
//!
//! - [`run`]: start (adopt or load, reconcile, attach), then serve until a signal.
//! - [`serve`]: the main loop: signals, control-socket requests, a maintenance drain.
//! - [`reload`]: a new config applied in place, or refused with nothing changed.
//! - [`restart`]: what only a restart can change (load-time settings, where the agent lives).
//! - [`adopt`]: whether a pinned balancer may be adopted; `lb-agent detach`.
//! - [`dsr`]: routing and the tc object of DSR-aware health checks.
//! - [`next_hops`]: each backend's next-hop MAC.
//! - [`cluster`]: the cluster's document from etcd (`[source]`): start, follow, apply, publish.

mod adopt;
mod cluster;
mod dsr;
mod next_hops;
mod reload;
mod restart;
mod run;
mod serve;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use lb_common::flows::LoadedState;
use tokio::task::JoinHandle;

use crate::{
    config::{self, Config},
    control,
    dataplane::{live::LiveMaps, LoadOptions},
    health::supervisor::{SharedSupervisor, Supervisor},
    metrics::Metrics,
    nexthop,
    plan::Plan,
};

pub use adopt::detach;
pub use cluster::load_applied;
pub use run::run;

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
    /// Start the liveness guard (hosts without systemd; see
    /// [`crate::announce::guard`]).
    pub liveness_guard: bool,
}

/// Loads and validates a config; the error lists every problem (file, field,
/// value) and ends the program with [`ExitCode::InvalidConfig`](control::exit_code::ExitCode).
pub fn load_config(path: &Path) -> Result<Config> {
    config::load(path).map_err(|e| control::exit_code::coded(control::exit_code::ExitCode::InvalidConfig, anyhow::anyhow!("invalid config:\n{e}")))
}

/// [`load_config`], and the file's text, for [`record_running`].
fn load_config_text(path: &Path) -> Result<(Config, String)> {
    match std::fs::read_to_string(path) {
        Ok(text) => config::parse(&text, &path.display().to_string())
            .map(|c| (c, text))
            .map_err(|e| control::exit_code::coded(control::exit_code::ExitCode::InvalidConfig, anyhow::anyhow!("invalid config:\n{e}"))),
        // Unreadable or not UTF-8: the loader's own message.
        Err(_) => load_config(path).map(|c| (c, String::new())),
    }
}

/// Keeps the text of the config file now programmed in `lb.run_dir`
/// ([`control::running_config_path`]), which `lb-agent list` reads: the
/// file may have been edited since without a reload. A failure only costs
/// `list` that view (it falls back to the file, and says so).
fn record_running(config: &Config, text: &str) {
    let (dir, iface) = (&config.lb.run_dir, &config.lb.interface);
    let path = control::running_config_path(dir, iface);
    let tmp = dir.join(format!(".{iface}.running.toml.{}", std::process::id()));
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!("cannot keep a copy of the running config in {}: {e} (`lb-agent list` then shows the file's weights)", path.display());
    }
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
    dsr: dsr::Dsr,
    /// What the Prometheus endpoint and status page show (kept while the
    /// endpoint is off: a reload may turn it on).
    metrics: Option<Arc<Metrics>>,
    /// The endpoint at `lb.metrics_listen`, unless it is `"off"`.
    metrics_endpoint: Option<crate::metrics::endpoint::Endpoint>,
    /// Routes the routing daemon announces (`[announce]`), if configured.
    announcer: Option<crate::announce::Announcer>,
    /// systemd's watchdog: keep-alives from the main loop.
    watchdog: crate::notify::Watchdog,
    /// The liveness guard's heartbeats (`run --liveness-guard`), from the same loop.
    guard: Option<crate::announce::guard::Guard>,
    /// Whether the maps hold exactly what `plan` and the supervisor say. A
    /// reload that failed part-way leaves them mixed; the next reload then
    /// rewrites every VIP instead of keeping unchanged ones as they are.
    maps_match_plan: bool,
    /// The config source (`[source]`), if the local file names one.
    cluster: Option<cluster::Cluster>,
    /// Runtime drains (`lb-agent drain`), applied in `config`.
    drains: control::drains::Drains,
}

/// The file's config with the runtime drains recorded in `lb.run_dir`
/// that still hold (see [`control::drains`]); drains the file overrode are
/// logged and forgotten.
fn with_drains(file: &Config) -> Result<(Config, control::drains::Drains)> {
    let recorded = control::drains::Drains::read(&file.lb.run_dir, &file.lb.interface)?;
    let applied = recorded.apply(file);
    for d in &applied.dropped {
        tracing::info!("{d}");
    }
    if applied.kept != recorded {
        applied.kept.write(&file.lb.run_dir, &file.lb.interface)?;
    }
    for d in &applied.kept.drains {
        tracing::info!("{} of VIP {:?} stays drained (`lb-agent undrain` to undo)", d.backend, d.vip);
    }
    Ok((applied.config, applied.kept))
}

/// The watchdog bound the config sets (`announce.liveness`), if any.
fn liveness(config: &Config) -> Option<std::time::Duration> {
    config.announce.as_ref().map(|a| a.liveness)
}

/// Hands the heap freed by a plan's ring builds (megabytes for a large
/// config) back to the kernel; glibc would otherwise keep it for reuse.
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };
}

/// `supervisor`, feeding the health check histogram if metrics are on.
fn observed(mut supervisor: Supervisor<LiveMaps>, metrics: &Option<Arc<Metrics>>) -> Supervisor<LiveMaps> {
    if let Some(m) = metrics {
        supervisor.observe_checks(m.check_observer());
    }
    supervisor
}

fn load_options(config: &Config, iface: &nexthop::Interface) -> Result<LoadOptions> {
    Ok(LoadOptions::from_config(config, iface.mtu, iface.ipv4.first().copied(), iface.ipv6.first().copied()))
}
