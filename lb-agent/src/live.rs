//! The maps of a balancer that is (or is about to be) running, opened from
//! their pins: what reconciling, reloading and adopting read and write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use lb_common::{
    flows::LoadedState,
    health::{HealthEntry, HealthKey},
    maps,
    packet_policy::PROTO_ADDRESS_ENTRY,
    BackendEntry, VipKey, VipMeta,
};

use crate::{ids::Kept, pins};

pub struct LiveMaps {
    pub dir: PathBuf,
    pub vips: BpfHashMap<MapData, VipKey, VipMeta>,
    pub backends: Array<MapData, BackendEntry>,
    pub members: Array<MapData, u32>,
    pub health: BpfHashMap<MapData, HealthKey, HealthEntry>,
    pub loaded: Array<MapData, LoadedState>,
    pub vip_filter: Array<MapData, u64>,
    /// `RINGS`, mapped a row at a time when written (`MappedRings::row`).
    pub rings: MapData,
}

impl LiveMaps {
    pub fn open(dir: &Path) -> Result<Self> {
        let open = |name: &str| pins::open_map(dir, name);
        Ok(LiveMaps {
            dir: dir.to_path_buf(),
            vips: BpfHashMap::try_from(Map::HashMap(open(maps::VIPS)?))?,
            backends: Array::try_from(Map::Array(open(maps::BACKENDS)?))?,
            members: Array::try_from(Map::Array(open(maps::MEMBERS)?))?,
            health: BpfHashMap::try_from(Map::HashMap(open(maps::HEALTH)?))?,
            loaded: Array::try_from(Map::Array(open(maps::LOADED)?))?,
            vip_filter: Array::try_from(Map::Array(open(maps::VIP_FILTER)?))?,
            rings: open(maps::RINGS)?,
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

    /// Backend ids per id slot in use (`family != 0`).
    pub fn backend_entries(&self) -> Result<BTreeMap<u32, BackendEntry>> {
        let mut out = BTreeMap::new();
        for id in 1..self.backends.len() {
            let e = self.backends.get(&id, 0).with_context(|| format!("reading backend {id}"))?;
            if e.family != 0 {
                out.insert(id, e);
            }
        }
        Ok(out)
    }

    /// The VIP entries (address entries left out).
    pub fn vip_entries(&self) -> Result<VipEntries> {
        let mut out = BTreeMap::new();
        for item in self.vips.iter() {
            let (k, m) = item.context("reading the VIPS map")?;
            if k.proto == PROTO_ADDRESS_ENTRY {
                continue;
            }
            if let Some(addr) = lb_common::words_addr(&k.addr, k.family) {
                out.insert((addr, u16::from_be(k.port_be), k.proto), (k, m));
            }
        }
        Ok(out)
    }

    /// Every key of `VIPS`, address entries included.
    pub fn all_vip_keys(&self) -> Result<Vec<VipKey>> {
        self.vips.keys().map(|k| k.context("reading the VIPS map")).collect()
    }

    /// The ids and rows the kernel uses now, for the next plan to keep.
    pub fn kept(&self) -> Result<Kept> {
        let backend_ids = self
            .backend_entries()?
            .into_iter()
            .filter_map(|(id, e)| lb_common::words_addr(&e.addr, e.family).map(|a| (a, id)))
            .collect();
        let vip_rows = self.vip_entries()?.into_iter().map(|(identity, (_, meta))| (identity, meta.row)).collect();
        Ok(Kept { backend_ids, vip_rows })
    }

    pub fn health_entries(&self) -> Result<BTreeMap<HealthKey, HealthEntry>> {
        let mut out = BTreeMap::new();
        for item in self.health.iter() {
            let (k, v) = item.context("reading the HEALTH map")?;
            out.insert(k, v);
        }
        Ok(out)
    }
}

/// The kernel's VIP entries by (address, port, protocol).
pub type VipEntries = BTreeMap<(IpAddrKey, u16, u8), (VipKey, VipMeta)>;

/// An address as a VIP identity's first field.
pub type IpAddrKey = std::net::IpAddr;
