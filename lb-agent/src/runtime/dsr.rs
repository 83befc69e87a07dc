//! DSR-aware health checks' routing and the object of their tc program.

use anyhow::Result;

use crate::{config::Config, dataplane::{self, LoadOptions}, health, nexthop, plan::Plan};


/// DSR-aware health checks: their routing and the object of their tc
/// program (loaded only when a check needs it). Not pinned: they matter
/// only while an agent runs checks.
#[derive(Default)]
pub(super) struct Dsr {
    object: Option<aya::Ebpf>,
    routing: Option<health::dsr::DsrRouting>,
    pairs: Vec<health::dsr::DsrPair>,
}

impl Dsr {
    /// Installs the routing for `config`'s DSR-aware checks (replacing what
    /// an earlier config installed, if the pairs differ).
    pub(super) async fn install(&mut self, config: &Config, plan: &Plan, opts: &LoadOptions, handle: &rtnetlink::Handle, iface: &nexthop::Interface) -> Result<()> {
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

    pub(super) async fn remove(&mut self) {
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
