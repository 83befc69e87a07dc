//! `lb-agent lookup`: the backend a flow gets, computed from the config as
//! the kernel computes it; for a `flow_state = "backend"` VIP also the slot's
//! previous owners, which only the running balancer's `PREVIOUS` map knows.
//!
//! Output: the backend's address on the first line; for such a VIP a second
//! line `previous ADDRESS [ADDRESS]` (newest first: where a backend without
//! the connection sends the packet on, in order; `previous none`;
//! `previous unknown`, with the reason on stderr, when no balancer runs with
//! this config).

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
        let previous = match previous_owners(config, flow) {
            Ok(p) if p.is_empty() => "none".to_string(),
            Ok(p) => p.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(" "),
            Err(e) => {
                eprintln!("cannot read the previous owners (is `lb-agent run` running with this config's bpffs_dir?): {e:#}");
                "unknown".to_string()
            }
        };
        out += &format!("previous {previous}\n");
    }
    Ok(out)
}

/// The previous owners of the flow's slot in the running balancer, newest
/// first (its rows and ids are the ones its reloads kept, so the plan is
/// made keeping them).
fn previous_owners(config: &Config, flow: &Flow) -> Result<Vec<IpAddr>> {
    let live = LiveMaps::open(&config.lb.bpffs_dir)?;
    let running = plan::plan_keeping(config, &live.kept()?).map_err(anyhow::Error::msg)?;
    let vip = plan::find_vip(&running, flow.vip, flow.port, flow.protocol.number()).context("the VIP is not in the running plan")?;
    let Some(slot) = plan::slot(&running, vip, flow.src, flow.src_port, flow.port) else { return Ok(Vec::new()) };
    let Some(owners) = live.previous_row(vip.row, running.ring_size)?.get(slot as usize).copied() else { return Ok(Vec::new()) };
    // A previous owner the config removed is in BACKENDS, not in the plan.
    let entries = live.backend_entries()?;
    owners
        .into_iter()
        .take_while(|&id| id != NO_BACKEND)
        .map(|id| {
            let entry = entries.get(&id).with_context(|| format!("previous owner id {id} has no BACKENDS entry"))?;
            lb_common::words_addr(&entry.addr, entry.family).with_context(|| format!("previous owner id {id} has no address family"))
        })
        .collect()
}
