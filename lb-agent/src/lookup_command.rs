//! `lb-agent lookup`: the backend a flow gets, computed from the config as
//! the kernel computes it; for a `flow_state = "backend"` VIP also the slot's
//! previous owner, which only the running balancer's `PREVIOUS` map knows.
//!
//! Output: the backend's address on the first line; for such a VIP a second
//! line `previous ADDRESS` (`previous none`; `previous unknown`, with the
//! reason on stderr, when no balancer runs with this config).

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use lb_common::{second_chance::VIP_FLAG_SECOND_CHANCE, NO_BACKEND};

use crate::config::{Config, Protocol};
use crate::dataplane::{live::LiveMaps, store::MapStore};
use crate::plan;

/// One flow, as the packet carries it.
pub struct Flow {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub src: IpAddr,
    pub src_port: u16,
}

pub fn run(config: &Config, flow: &Flow) -> Result<String> {
    let fresh = plan::plan(config);
    let planned = plan::find_vip(&fresh, flow.vip, flow.port, flow.protocol.number())
        .with_context(|| format!("no VIP {} port {} in the config", flow.vip, flow.port))?;
    let id = plan::lookup(&fresh, planned, flow.src, flow.src_port, flow.port);
    let backend = fresh.backend(id).context("the VIP's ring is empty")?;
    let mut out = format!("{}\n", backend.address);
    if planned.meta.flags & VIP_FLAG_SECOND_CHANCE != 0 {
        // The current owner needs only the config; the previous one the kernel.
        let previous = match previous_owner(config, flow) {
            Ok(p) => p.map_or("none".to_string(), |a| a.to_string()),
            Err(e) => {
                eprintln!("cannot read the previous owner (is `lb-agent run` running with this config's bpffs_dir?): {e:#}");
                "unknown".to_string()
            }
        };
        out += &format!("previous {previous}\n");
    }
    Ok(out)
}

/// The previous owner of the flow's slot in the running balancer (its rows
/// and ids are the ones its reloads kept, so the plan is made keeping them).
fn previous_owner(config: &Config, flow: &Flow) -> Result<Option<IpAddr>> {
    let live = LiveMaps::open(&config.lb.bpffs_dir)?;
    let running = plan::plan_keeping(config, &live.kept()?).map_err(anyhow::Error::msg)?;
    let vip = plan::find_vip(&running, flow.vip, flow.port, flow.protocol.number()).context("the VIP is not in the running plan")?;
    let Some(slot) = plan::slot(&running, vip, flow.src, flow.src_port, flow.port) else { return Ok(None) };
    let id = live.previous_row(vip.row, running.ring_size)?.get(slot as usize).copied().unwrap_or(NO_BACKEND);
    if id == NO_BACKEND {
        return Ok(None);
    }
    // A previous owner the config removed is in BACKENDS, not in the plan.
    let entry = live.backend_entries()?.get(&id).copied().with_context(|| format!("previous owner id {id} has no BACKENDS entry"))?;
    Ok(lb_common::words_addr(&entry.addr, entry.family))
}
