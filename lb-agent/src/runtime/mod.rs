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

mod adopt;
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
    dsr: dsr::Dsr,
    /// What the Prometheus endpoint and status page show (kept while the
    /// endpoint is off: a reload may turn it on).
    metrics: Option<Arc<Metrics>>,
    /// The endpoint at `lb.metrics_listen`, unless it is `"off"`.
    metrics_endpoint: Option<crate::metrics::endpoint::Endpoint>,
    /// Routes the routing daemon announces (`[announce]`), if configured.
    announcer: Option<crate::announce::Announcer>,
    /// Whether the maps hold exactly what `plan` and the supervisor say. A
    /// reload that failed part-way leaves them mixed; the next reload then
    /// rewrites every VIP instead of keeping unchanged ones as they are.
    maps_match_plan: bool,
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
