//! Route announcement through a routing daemon (BIRD in `contrib/bird`).
//!
//! The agent does not speak BGP. It keeps one route per VIP address it can
//! serve in a dedicated kernel routing table, with a dedicated route
//! protocol number and a metric that encodes the host's role (see
//! [`routes`]); the daemon learns that table and exports exactly those
//! routes to the routers. So the daemon's config stays static, and a dead
//! agent or daemon is noticed by the routers through BGP itself.
//!
//! A VIP address is announced while (1) the balancer's XDP link is pinned
//! (the data path is attached), (2) at least one VIP on that address has a
//! healthy backend (primary or backup; `fail_open` serves blind, so it does
//! not count), and (3) the agent is neither stopping nor in maintenance.
//! The agent compares wanted and installed routes every
//! [`crate::config::announce::RECONCILE_INTERVAL`], so a health change reaches the daemon
//! within that time.
//!
//! Routes must not outlive the agent that health-checks them, except across
//! a restart ([`withdraw`] has the rule): a clean exit (SIGTERM) leaves them
//! with the balancer for the next agent to adopt; an unclean one (kill -9, a
//! crash, systemd's watchdog after `announce.liveness`) has them withdrawn by
//! `lb-agent withdraw` in the unit's `ExecStopPost`; a `run` that fails to
//! start withdraws what it or a predecessor left; `lb-agent detach` too.

pub mod drain;
pub mod guard;
pub mod maintenance;
pub mod routes;
pub mod withdraw;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use rtnetlink::{packet_route::route::RouteMessage, Handle};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub use crate::config::announce::AnnounceConfig;

/// The VIP addresses that have at least one healthy backend now.
pub type Serving = Box<dyn Fn() -> BTreeSet<IpAddr> + Send + Sync>;

struct State {
    config: AnnounceConfig,
    installed: BTreeMap<IpAddr, RouteMessage>,
    /// Maintenance or shutdown: announce nothing any more.
    withdrawn: bool,
}

/// Keeps the VIP routes in line with health and the data path.
pub struct Announcer {
    handle: Handle,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Announcer {
    /// Adopts the routes a predecessor left (so a restart does not flap
    /// them), brings them in line at once, and keeps them so.
    pub async fn start(handle: Handle, config: AnnounceConfig, bpffs_dir: PathBuf, serving: Serving) -> Result<Announcer> {
        let installed = routes::installed(&handle, &config).await?.into_iter().collect();
        tracing::info!(
            "announcing VIPs as {} through routes in table {} proto {} metric {}",
            config.role.as_str(),
            config.table,
            config.protocol,
            config.role.metric()
        );
        let state = Arc::new(Mutex::new(State { config, installed, withdrawn: false }));
        // What to announce, and why the rest is not.
        let wanted = move || {
            if crate::pins::has_link(&bpffs_dir) {
                (serving(), "no healthy backend")
            } else {
                (BTreeSet::new(), "the data path is detached")
            }
        };
        let (first, why) = wanted();
        reconcile(&handle, &mut *state.lock().await, &first, why).await;
        let task = {
            let (handle, state) = (handle.clone(), state.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::config::announce::RECONCILE_INTERVAL);
                loop {
                    tick.tick().await;
                    let mut state = state.lock().await;
                    let (wanted, why) = if state.withdrawn { (BTreeSet::new(), "withdrawn") } else { wanted() };
                    reconcile(&handle, &mut state, &wanted, why).await;
                }
            })
        };
        Ok(Announcer { handle, state, task })
    }

    /// Withdraws every route and announces nothing from now on.
    pub async fn withdraw_all(&self, why: &str) {
        let mut state = self.state.lock().await;
        state.withdrawn = true;
        if !state.installed.is_empty() {
            tracing::info!("{why}: withdrawing every VIP route");
        }
        reconcile(&self.handle, &mut state, &BTreeSet::new(), why).await;
    }

    /// Applies a reloaded `[announce]` table: routes under the old table or
    /// protocol go, the others are rewritten with the new role's metric.
    pub async fn reconfigure(&self, config: AnnounceConfig) {
        let mut state = self.state.lock().await;
        if state.config == config {
            return;
        }
        let keep: BTreeSet<IpAddr> = state.installed.keys().copied().collect();
        let same_routes = state.config.table == config.table && state.config.protocol == config.protocol;
        let role_changed = state.config.role != config.role;
        if !same_routes {
            reconcile(&self.handle, &mut state, &BTreeSet::new(), "[announce] table or protocol changed").await;
        }
        state.config = config;
        if same_routes && role_changed && !state.withdrawn {
            // A role change (the metric is part of a route's identity): the
            // new route first, then the old one goes, so nothing is withdrawn.
            for vip in &keep {
                if let Err(e) = routes::add(&self.handle, &state.config, *vip).await {
                    tracing::error!("VIP {vip}: {e:#}; retrying");
                    continue;
                }
                let new = routes::message(&state.config, *vip);
                if let Some(old) = state.installed.insert(*vip, new)
                    && let Err(e) = routes::remove(&self.handle, old).await
                {
                    tracing::error!("VIP {vip}: the route with the old role's metric stays: {e:#}");
                }
            }
        }
        if !state.withdrawn {
            reconcile(&self.handle, &mut state, &keep, "[announce] changed").await;
        }
    }

    /// Stops following health and withdraws everything (`--unload-on-exit`,
    /// or `[announce]` removed by a reload).
    pub async fn stop(self, why: &str) {
        self.task.abort();
        self.withdraw_all(why).await;
    }

    /// Stops following health and leaves the routes as they are: a clean
    /// exit, whose balancer keeps forwarding and whose successor adopts them.
    pub async fn leave(self, why: &str) {
        self.task.abort();
        let state = self.state.lock().await;
        if !state.installed.is_empty() {
            tracing::info!(
                "{why}: leaving {} VIP route(s) announced with the balancer for the next agent (`lb-agent withdraw` removes them)",
                state.installed.len()
            );
        }
    }
}

/// Adds the routes of `wanted` that are missing and removes the others.
/// Failures are logged and retried on the next round.
/// `why` says why a VIP that is not wanted is withdrawn.
async fn reconcile(handle: &Handle, state: &mut State, wanted: &BTreeSet<IpAddr>, why: &str) {
    let stale: Vec<IpAddr> = state.installed.keys().filter(|a| !wanted.contains(a)).copied().collect();
    for vip in stale {
        let Some(route) = state.installed.remove(&vip) else { continue };
        match routes::remove(handle, route.clone()).await {
            Ok(()) => tracing::warn!("VIP {vip}: withdrawn ({why})"),
            Err(e) => {
                tracing::error!("VIP {vip}: {e:#}; retrying");
                state.installed.insert(vip, route);
            }
        }
    }
    let missing: Vec<IpAddr> = wanted.iter().filter(|a| !state.installed.contains_key(a)).copied().collect();
    for vip in missing {
        match routes::add(handle, &state.config, vip).await {
            Ok(()) => {
                tracing::info!("VIP {vip}: announced ({})", state.config.role.as_str());
                state.installed.insert(vip, routes::message(&state.config, vip));
            }
            Err(e) => tracing::error!("VIP {vip}: {e:#}; retrying (does the kernel allow table {}?)", state.config.table),
        }
    }
}

/// Removes routes a killed agent left behind (`lb-agent detach`).
pub async fn remove_leftovers(handle: &Handle, config: &AnnounceConfig) -> Result<usize> {
    let left = routes::installed(handle, config).await?;
    let n = left.len();
    for (_, route) in left {
        routes::remove(handle, route).await?;
    }
    Ok(n)
}

/// Starts, reconfigures or stops the announcer so that it matches `config`
/// (at start, with `current` None, and after every reload).
pub async fn follow(
    current: Option<Announcer>,
    config: &crate::config::Config,
    handle: &Handle,
    supervisor: &crate::health::supervisor::SharedSupervisor<impl crate::health::supervisor::HealthWriter + Send + 'static>,
) -> Result<Option<Announcer>> {
    match (current, &config.announce) {
        (None, None) => Ok(None),
        (Some(a), None) => {
            a.stop("the [announce] table was removed").await;
            Ok(None)
        }
        (Some(a), Some(wanted)) => {
            a.reconfigure(wanted.clone()).await;
            Ok(Some(a))
        }
        (None, Some(wanted)) => {
            let supervisor = supervisor.clone();
            let serving: Serving = Box::new(move || supervisor.lock().unwrap_or_else(|e| e.into_inner()).serving_addresses());
            Ok(Some(Announcer::start(handle.clone(), wanted.clone(), config.lb.bpffs_dir.clone(), serving).await?))
        }
    }
}

/// `lb-agent detach`: removes the routes a killed agent left (none if the
/// config has no `[announce]` table).
pub fn remove_leftovers_now(config: &crate::config::Config) -> Result<usize> {
    let Some(announce) = &config.announce else { return Ok(0) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let handle = crate::nexthop::connect()?;
        remove_leftovers(&handle, announce).await
    })
}
