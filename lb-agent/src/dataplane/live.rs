//! The maps of a balancer, opened from their pins (the agent: reconciling,
//! reloading, adopting) or from a loaded object (the packet fixtures and the
//! bench): the kernel's [`MapStore`].

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues};
use aya::Ebpf;
use lb_common::{
    flow_guard::FlowGuard,
    flows::{member_index, LoadedState},
    health::{HealthEntry, HealthKey},
    maps,
    second_chance::PreviousOwners,
    BackendEntry, VipKey, VipMeta,
};

use super::{previous::SharedLedger, rings::MappedRings, store::MapStore};
use crate::pins;
use crate::plan::previous;

/// Where the maps are opened from (again, for [`MapStore::reopen`]).
enum Source {
    Pins(PathBuf),
    /// Duplicates of a loaded object's map fds, by map name.
    Fds(Vec<(&'static str, OwnedFd)>),
}

impl Source {
    fn open(&self, name: &str) -> Result<MapData> {
        match self {
            Source::Pins(dir) => pins::open_map(dir, name),
            Source::Fds(fds) => {
                let (_, fd) = fds.iter().find(|(n, _)| *n == name).with_context(|| format!("map {name} not opened"))?;
                let fd = fd.try_clone().with_context(|| format!("duplicating the fd of map {name}"))?;
                MapData::from_fd(fd).with_context(|| format!("opening map {name} from its fd"))
            }
        }
    }

    /// A map the object may lack ([`OPTIONAL`]): `None` when it does.
    fn open_optional(&self, name: &str) -> Result<Option<MapData>> {
        let present = match self {
            Source::Pins(dir) => dir.join(name).exists(),
            Source::Fds(fds) => fds.iter().any(|(n, _)| *n == name),
        };
        present.then(|| self.open(name)).transpose()
    }

    fn again(&self) -> Result<Self> {
        Ok(match self {
            Source::Pins(dir) => Source::Pins(dir.clone()),
            Source::Fds(fds) => Source::Fds(
                fds.iter().map(|(n, fd)| Ok((*n, fd.try_clone()?))).collect::<std::io::Result<_>>().context("duplicating map fds")?,
            ),
        })
    }
}

/// The maps reconciling reads and writes.
const NAMES: [&str; 9] = [
    maps::VIPS,
    maps::BACKENDS,
    maps::MEMBERS,
    maps::HEALTH,
    maps::LOADED,
    maps::VIP_FILTER,
    maps::RINGS,
    maps::PREVIOUS,
    maps::FLOW_GUARD,
];

/// Maps of [`NAMES`] an object may lack: `PREVIOUS` is missing from
/// objects built before second chance (pinned by an older agent, which
/// `stats` may still read); without it no slot has a previous owner, and
/// writing one is an error that asks for `--full-restart`. `FLOW_GUARD`
/// likewise (objects built before the new-flow guard).
const OPTIONAL: [&str; 2] = [maps::PREVIOUS, maps::FLOW_GUARD];

pub struct LiveMaps {
    source: Source,
    vips: BpfHashMap<MapData, VipKey, VipMeta>,
    backends: Array<MapData, BackendEntry>,
    members: Array<MapData, u32>,
    health: BpfHashMap<MapData, HealthKey, HealthEntry>,
    loaded: Array<MapData, LoadedState>,
    vip_filter: Array<MapData, lb_common::vip_filter::FilterEntry>,
    /// `RINGS`, mapped a row at a time when written (`MappedRings::row`).
    rings: MapData,
    /// `PREVIOUS`, the same way (see [`OPTIONAL`]).
    previous: Option<MapData>,
    /// `FLOW_GUARD` (see [`OPTIONAL`]).
    flow_guard: Option<PerCpuArray<MapData, FlowGuard>>,
    /// Shared with every handle [`MapStore::reopen`] makes.
    ledger: SharedLedger,
}

impl LiveMaps {
    /// The maps pinned under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::from_source(Source::Pins(dir.to_path_buf()))
    }

    /// The maps of a loaded object (which keeps its own handles on them).
    pub fn from_object(ebpf: &Ebpf) -> Result<Self> {
        let fds = NAMES
            .iter()
            .filter(|&&name| ebpf.map(name).is_some() || !OPTIONAL.contains(&name))
            .map(|&name| {
                let map = ebpf.map(name).with_context(|| format!("map {name} missing from the BPF object"))?;
                let data = match map {
                    Map::Array(d) | Map::HashMap(d) | Map::PerCpuArray(d) => d,
                    _ => anyhow::bail!("map {name} is neither an array nor a hash map"),
                };
                Ok((name, data.fd().as_fd().try_clone_to_owned().with_context(|| format!("duplicating the fd of map {name}"))?))
            })
            .collect::<Result<_>>()?;
        Self::from_source(Source::Fds(fds))
    }

    fn from_source(source: Source) -> Result<Self> {
        let open = |name: &str| source.open(name);
        Ok(LiveMaps {
            vips: BpfHashMap::try_from(Map::HashMap(open(maps::VIPS)?))?,
            backends: Array::try_from(Map::Array(open(maps::BACKENDS)?))?,
            members: Array::try_from(Map::Array(open(maps::MEMBERS)?))?,
            health: BpfHashMap::try_from(Map::HashMap(open(maps::HEALTH)?))?,
            loaded: Array::try_from(Map::Array(open(maps::LOADED)?))?,
            vip_filter: Array::try_from(Map::Array(open(maps::VIP_FILTER)?))?,
            rings: open(maps::RINGS)?,
            previous: source.open_optional(maps::PREVIOUS)?,
            flow_guard: source.open_optional(maps::FLOW_GUARD)?.map(|d| PerCpuArray::try_from(Map::PerCpuArray(d))).transpose()?,
            source,
            ledger: SharedLedger::default(),
        })
    }

    /// What the object pinned under `dir` was loaded with, read on its own:
    /// an object of an older agent may lack maps that [`LiveMaps::open`]
    /// needs, and its version is what tells the operator so.
    pub fn pinned_loaded_state(dir: &Path) -> Result<LoadedState> {
        let loaded: Array<MapData, LoadedState> = Array::try_from(Map::Array(pins::open_map(dir, maps::LOADED)?))
            .context("the pinned LOADED map has another layout: it was pinned by an incompatible agent; run `lb-agent detach` (or `run --full-restart`)")?;
        loaded.get(&0, 0).context("reading the LOADED map")
    }

    /// What the pinned object was loaded with.
    pub fn loaded_state(&self) -> Result<LoadedState> {
        self.loaded.get(&0, 0).context("reading the LOADED map")
    }

    pub fn set_loaded_state(&mut self, state: LoadedState) -> Result<()> {
        self.loaded.set(0, state, 0).context("writing the LOADED map")
    }

    /// The `MEMBERS` index of a pair (`BACKENDS` has `max_backends` entries).
    fn member_index(&self, key: HealthKey) -> u32 {
        member_index(key.row, key.backend_id, self.backends.len())
    }
}

impl MapStore for LiveMaps {
    fn reopen(&self) -> Result<Self> {
        let mut again = Self::from_source(self.source.again()?)?;
        again.ledger = self.ledger.clone();
        Ok(again)
    }

    fn backend_entries(&self) -> Result<BTreeMap<u32, BackendEntry>> {
        let mut out = BTreeMap::new();
        for id in 1..self.backends.len() {
            let e = self.backends.get(&id, 0).with_context(|| format!("reading backend {id}"))?;
            if e.family != 0 {
                out.insert(id, e);
            }
        }
        Ok(out)
    }

    fn set_backend(&mut self, id: u32, entry: BackendEntry) -> Result<()> {
        self.backends.set(id, entry, 0).with_context(|| format!("writing backend id {id}"))
    }

    fn all_vips(&self) -> Result<Vec<(VipKey, VipMeta)>> {
        self.vips.iter().map(|item| item.context("reading the VIPS map")).collect()
    }

    fn vip(&self, key: &VipKey) -> Option<VipMeta> {
        self.vips.get(key, 0).ok()
    }

    fn insert_vip(&mut self, key: VipKey, meta: VipMeta) -> Result<()> {
        self.vips.insert(key, meta, 0).context("writing the VIPS map")
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.vips.remove(key).context("removing from the VIPS map")
    }

    fn ring_row(&self, row: u32, size: u32) -> Result<Vec<u32>> {
        read_row(&self.rings, maps::RINGS, row, size)
    }

    fn previous_row(&self, row: u32, size: u32) -> Result<Vec<PreviousOwners>> {
        match &self.previous {
            Some(data) => read_previous_row(data, row, size),
            None => Ok(vec![previous::NONE; size as usize]),
        }
    }

    fn write_previous_row(&mut self, row: u32, owners: &[PreviousOwners]) -> Result<()> {
        let Some(data) = &self.previous else {
            if owners.iter().any(previous::has_any) {
                anyhow::bail!(
                    "the loaded BPF object has no {} map, so a flow_state = \"backend\" VIP cannot work; \
                     restart with `lb-agent run --full-restart` to load this agent's object",
                    maps::PREVIOUS
                );
            }
            return Ok(());
        };
        let size = owners.len() as u32;
        let mapped = MappedRings::row_of(data, maps::PREVIOUS, row, size)?;
        for (slot, wanted) in (row * size..).zip(owners) {
            if mapped.get_owners(slot).as_ref() != Some(wanted) {
                mapped.set_owners(slot, wanted)?;
            }
        }
        Ok(())
    }

    fn rows_with_previous(&self) -> Result<Vec<(u32, usize)>> {
        let Some(data) = &self.previous else { return Ok(Vec::new()) };
        let size = self.ring_size()?;
        let slots = data.info().context("reading PREVIOUS map info")?.max_entries();
        let mut rows = Vec::new();
        for row in 0..slots.checked_div(size).unwrap_or(0) {
            let depth = previous::depth(&read_previous_row(data, row, size)?);
            if depth > 0 {
                rows.push((row, depth));
            }
        }
        Ok(rows)
    }

    fn ring_size(&self) -> Result<u32> {
        Ok(self.loaded_state()?.ring_size)
    }

    fn ledger(&self) -> &SharedLedger {
        &self.ledger
    }

    fn write_ring_row(&mut self, row: u32, ring: &[u32]) -> Result<usize> {
        let size = ring.len() as u32;
        let mapped = MappedRings::row(&self.rings, row, size)?;
        let base = row * size;
        let mut written = 0;
        for (slot, &id) in (base..).zip(ring) {
            if mapped.get(slot) != Some(id) {
                mapped.set(slot, id).with_context(|| format!("writing slot {} of ring row {row}", slot - base))?;
                written += 1;
            }
        }
        Ok(written)
    }

    fn member(&self, key: HealthKey) -> Result<u32> {
        self.members.get(&self.member_index(key), 0).with_context(|| format!("reading member {key:?}"))
    }

    fn set_member(&mut self, key: HealthKey, value: u32) -> Result<()> {
        let index = self.member_index(key);
        self.members.set(index, value, 0).with_context(|| format!("writing member {key:?}"))
    }

    fn health_entries(&self) -> Result<BTreeMap<HealthKey, HealthEntry>> {
        self.health.iter().map(|item| item.context("reading the HEALTH map")).collect()
    }

    fn insert_health(&mut self, key: HealthKey, entry: HealthEntry) -> Result<()> {
        self.health.insert(key, entry, 0).with_context(|| format!("writing health of {key:?}"))
    }

    fn remove_health(&mut self, key: &HealthKey) -> Result<()> {
        self.health.remove(key).with_context(|| format!("removing health of {key:?}"))
    }

    fn filter_words(&self) -> Result<Vec<lb_common::vip_filter::FilterEntry>> {
        self.vip_filter.iter().map(|w| w.context("reading the VIP filter")).collect()
    }

    fn set_filter_word(&mut self, index: u32, word: lb_common::vip_filter::FilterEntry) -> Result<()> {
        self.vip_filter.set(index, word, 0).with_context(|| format!("writing word {index} of the VIP filter"))
    }

    fn set_new_flow_guard(&mut self, per_cpu_per_second: Option<u32>) -> Result<()> {
        let Some(map) = self.flow_guard.as_mut() else {
            if per_cpu_per_second.is_none() {
                return Ok(()); // an object without the guard has it off already
            }
            anyhow::bail!(
                "the running balancer was built before the new-flow guard: set lb.new_flow_guard = \"off\", or load a new one with `lb-agent run --full-restart`"
            );
        };
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let values = PerCpuValues::try_from(vec![FlowGuard::with_limit(per_cpu_per_second); cpus])?;
        map.set(0, values, 0).context("writing the FLOW_GUARD map")
    }
}

/// Row `row` of a map shaped like `RINGS`, mapped only while it is read.
/// Row `row` of `PREVIOUS`, `size` slots.
fn read_previous_row(data: &MapData, row: u32, size: u32) -> Result<Vec<PreviousOwners>> {
    let mapped = MappedRings::row_of(data, maps::PREVIOUS, row, size)?;
    (row * size..(row + 1) * size)
        .map(|slot| mapped.get_owners(slot).with_context(|| format!("slot {slot} of {} not mapped", maps::PREVIOUS)))
        .collect()
}

fn read_row(data: &MapData, name: &'static str, row: u32, size: u32) -> Result<Vec<u32>> {
    let mapped = MappedRings::row_of(data, name, row, size)?;
    (row * size..(row + 1) * size)
        .map(|slot| mapped.get(slot).with_context(|| format!("slot {slot} of {name} not mapped")))
        .collect()
}
