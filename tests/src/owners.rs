//! A VIP's ring as the running balancer has it: every slot's current owner
//! (`RINGS`) and previous owners (`PREVIOUS`, second chance), read from the
//! pinned maps, and the slot of a flow from the agent's own
//! [`lb_agent::plan::slot`] (the kernel's hash). What a test predicts from
//! this is what the kernel does now, health-check rebuilds included, not
//! what the config alone would give (`lb-agent lookup`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, HashMap as BpfHashMap, Map};
use lb_agent::dataplane::rings::MappedRings;
use lb_agent::{config, pins, plan};
use lb_common::{BackendEntry, NO_BACKEND, VipKey, VipMeta, maps, second_chance::PreviousOwners, words_addr};

use crate::agent::Proto;

/// The owners of a flow's slot: current, and previous ones newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owners {
    pub current: Option<IpAddr>,
    pub previous: Vec<IpAddr>,
}

/// One VIP's row of `RINGS` and `PREVIOUS`, copied at one moment.
pub struct RingSnapshot {
    plan: plan::Plan,
    vip_index: usize,
    dst_port: u16,
    current: Vec<u32>,
    previous: Vec<PreviousOwners>,
    /// Backend id -> address, from `BACKENDS` (entries in use only).
    addresses: BTreeMap<u32, IpAddr>,
}

impl RingSnapshot {
    /// Reads the ring of the VIP `target` (`protocol`) of the balancer
    /// pinned under `bpffs`, configured by the file `config_path`.
    pub fn read(bpffs: &Path, config_path: &Path, target: SocketAddr, protocol: Proto) -> Result<RingSnapshot> {
        let text = std::fs::read_to_string(config_path).with_context(|| format!("reading {}", config_path.display()))?;
        let config = config::parse(&text, &config_path.display().to_string()).map_err(|e| anyhow::anyhow!("{e}"))?;
        // Only the slot is needed here, not the rings: the kernel has those.
        let plan = plan::plan_summary(&config);
        let proto = match protocol {
            Proto::Tcp => lb_common::PROTO_TCP,
            Proto::Udp => lb_common::PROTO_UDP,
        };
        let planned = plan::find_vip(&plan, target.ip(), target.port(), proto)
            .with_context(|| format!("no VIP {target} {protocol} in {}", config_path.display()))?;
        let vip_index = plan.vips.iter().position(|v| v.key == planned.key).expect("found above");

        // The row the running agent gave the VIP (rows survive reloads, so
        // the config's order need not say it).
        let vips: BpfHashMap<_, VipKey, VipMeta> = BpfHashMap::try_from(Map::HashMap(pins::open_map(bpffs, maps::VIPS)?))?;
        let row = vips.get(&planned.key, 0).with_context(|| format!("VIP {target} is not in the pinned VIPS map"))?.row;
        let ring_size = plan.ring_size;
        let read_row = |name: &str| -> Result<Vec<u32>> {
            let data = pins::open_map(bpffs, name)?;
            let mapped = MappedRings::row(&data, row, ring_size).with_context(|| format!("mapping row {row} of {name}"))?;
            let base = row * ring_size;
            (0..ring_size).map(|s| mapped.get(base + s).with_context(|| format!("{name} slot {s} of row {row}"))).collect()
        };
        let current = read_row(maps::RINGS)?;
        let previous = {
            let data = pins::open_map(bpffs, maps::PREVIOUS)?;
            let mapped = MappedRings::row_of(&data, maps::PREVIOUS, row, ring_size).with_context(|| format!("mapping row {row} of PREVIOUS"))?;
            let base = row * ring_size;
            (0..ring_size).map(|s| mapped.get_owners(base + s).with_context(|| format!("PREVIOUS slot {s} of row {row}"))).collect::<Result<Vec<_>>>()?
        };

        let backends: Array<_, BackendEntry> = Array::try_from(Map::Array(pins::open_map(bpffs, maps::BACKENDS)?))?;
        let mut addresses = BTreeMap::new();
        for id in current.iter().chain(previous.iter().flatten()).copied().filter(|id| *id != NO_BACKEND) {
            if addresses.contains_key(&id) {
                continue;
            }
            let entry = backends.get(&id, 0).with_context(|| format!("reading BACKENDS[{id}]"))?;
            match words_addr(&entry.addr, entry.family) {
                Some(addr) => addresses.insert(id, addr),
                None => bail!("ring row {row} names backend {id}, whose BACKENDS entry is not in use"),
            };
        }
        Ok(RingSnapshot { plan, vip_index, dst_port: target.port(), current, previous, addresses })
    }

    fn slot(&self, src: SocketAddr) -> Result<usize> {
        let vip = &self.plan.vips[self.vip_index];
        plan::slot(&self.plan, vip, src.ip().to_canonical(), src.port(), self.dst_port)
            .map(|s| s as usize)
            .with_context(|| format!("{src} is not of the VIP's family"))
    }

    /// The owners of the slot of a flow from `src` (to the VIP's port).
    pub fn owners(&self, src: SocketAddr) -> Result<Owners> {
        let slot = self.slot(src)?;
        let addr = |id: u32| self.addresses.get(&id).copied();
        let previous = self.previous[slot].iter().take_while(|&&id| id != NO_BACKEND).filter_map(|&id| addr(id)).collect();
        Ok(Owners { current: addr(self.current[slot]), previous })
    }

    /// Slots whose current owner differs from `before`'s.
    pub fn changed_slots(&self, before: &RingSnapshot) -> usize {
        self.current.iter().zip(&before.current).filter(|(a, b)| a != b).count()
    }

    /// Slots that have a previous owner.
    pub fn slots_with_previous(&self) -> usize {
        self.previous.iter().filter(|o| o[0] != NO_BACKEND).count()
    }

    /// Slots that have two or more previous owners.
    pub fn slots_with_two_previous(&self) -> usize {
        self.previous.iter().filter(|o| o.len() > 1 && o[1] != NO_BACKEND).count()
    }

    pub fn ring_size(&self) -> usize {
        self.current.len()
    }
}
