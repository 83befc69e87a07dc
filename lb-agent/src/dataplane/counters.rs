//! The per-CPU counters, summed over CPUs: from a loaded object (fixtures,
//! bench) or from a running agent's pins (`lb-agent stats`, metrics).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Map, MapData, PerCpuArray},
    Ebpf,
};
use lb_common::{maps, Counter, DecapReason, Reason};

/// Counters of a running agent, read from its pinned maps and summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Indexed by VIP row.
    pub vips: Vec<Counter>,
    /// Indexed by backend id.
    pub backends: Vec<Counter>,
    /// Indexed by [`Reason`].
    pub reasons: Vec<Counter>,
    /// Indexed by [`DecapReason`].
    pub decap: Vec<Counter>,
    /// Indexed by [`lb_common::flows::FlowEvent`].
    pub flows: Vec<Counter>,
}

impl Counters {
    pub fn reason(&self, r: Reason) -> Counter {
        self.reasons.get(r as usize).copied().unwrap_or_default()
    }
    pub fn decap_reason(&self, r: DecapReason) -> Counter {
        self.decap.get(r as usize).copied().unwrap_or_default()
    }
    pub fn flow_event(&self, e: lb_common::flows::FlowEvent) -> Counter {
        self.flows.get(e as usize).copied().unwrap_or_default()
    }
}

/// Reads every counter map of a loaded object (used by fixtures and tests).
pub fn read_counters(ebpf: &Ebpf) -> Result<Counters> {
    Counters::read_each(|name| {
        let map = ebpf.map(name).with_context(|| format!("map {name} missing"))?;
        sum_per_cpu(&PerCpuArray::try_from(map)?)
    })
}

/// Reads the counters pinned under `dir` by a running agent.
pub fn read_pinned_counters(dir: &Path) -> Result<Counters> {
    Counters::read_each(|name| {
        let path: PathBuf = dir.join(name);
        let data = MapData::from_pin(&path).with_context(|| {
            format!("opening {} (is `lb-agent run` running with this config's bpffs_dir?)", path.display())
        })?;
        sum_per_cpu(&PerCpuArray::try_from(Map::PerCpuArray(data))?)
    })
}

impl Counters {
    /// Every counter map, each read (and summed over the CPUs) by `read`.
    fn read_each(read: impl Fn(&str) -> Result<Vec<Counter>>) -> Result<Counters> {
        Ok(Counters {
            vips: read(maps::VIP_STATS)?,
            backends: read(maps::BACKEND_STATS)?,
            reasons: read(maps::REASON_STATS)?,
            decap: read(maps::DECAP_STATS)?,
            flows: read(maps::FLOW_STATS)?,
        })
    }
}

fn sum_per_cpu<T: std::borrow::Borrow<MapData>>(map: &PerCpuArray<T, Counter>) -> Result<Vec<Counter>> {
    let mut out = Vec::with_capacity(map.len() as usize);
    for i in 0..map.len() {
        let mut total = Counter::default();
        for c in map.get(&i, 0)?.iter() {
            total.add(c);
        }
        out.push(total);
    }
    Ok(out)
}
