//! Whether a balancer pinned by an earlier agent may be adopted, and
//! `lb-agent detach`, which removes it.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use lb_common::flows::LoadedState;

use super::restart::loaded_differences;
use crate::{
    config::Config,
    control::{self, Claim},
    dataplane::live::LiveMaps,
    pins,
};

/// Whether a balancer is pinned under `dir` that this config may adopt.
/// A pinned balancer loaded with other settings is refused unless
/// `full_restart`, in which case it is removed first.
pub(super) fn adoptable(dir: &Path, wanted: &LoadedState, full_restart: bool) -> Result<bool> {
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

pub(super) fn on_off(level: u32) -> &'static str {
    if level == u32::from(lb_common::events::OFF) { "off" } else { "on" }
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
