//! The maps a plan is written into, as reconciling sees them: what it reads
//! (to tell what changed) and the writes it makes, one entry at a time.
//! Implemented by the kernel's maps ([`super::live::LiveMaps`], opened from
//! their pins or from a loaded object) and, for unit tests of reconcile's
//! ordering rules, by an in-memory store that records every write.

use std::collections::BTreeMap;

use anyhow::Result;
use lb_common::{
    health::{HealthEntry, HealthKey},
    packet_policy::PROTO_ADDRESS_ENTRY,
    BackendEntry, VipKey, VipMeta,
};

use crate::ids::{Kept, VipIdentity};

/// The kernel's VIP entries by identity.
pub type VipEntries = BTreeMap<VipIdentity, (VipKey, VipMeta)>;

/// The balancer's maps, seen by the agent.
pub trait MapStore {
    /// A second handle on the same maps: the health supervisor keeps one to
    /// go on writing rings, members and health entries after reconciling.
    fn reopen(&self) -> Result<Self>
    where
        Self: Sized;

    /// Backend entries in use (`family != 0`), by id.
    fn backend_entries(&self) -> Result<BTreeMap<u32, BackendEntry>>;
    /// Writes backend `id` (an all-zero entry erases it).
    fn set_backend(&mut self, id: u32, entry: BackendEntry) -> Result<()>;

    /// Every entry of `VIPS`, address entries included.
    fn all_vips(&self) -> Result<Vec<(VipKey, VipMeta)>>;
    fn vip(&self, key: &VipKey) -> Option<VipMeta>;
    fn insert_vip(&mut self, key: VipKey, meta: VipMeta) -> Result<()>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<()>;

    /// Makes ring `row` equal `ring` (one entry per slot), writing only the
    /// slots that differ; returns how many it wrote.
    fn set_ring(&mut self, row: u32, ring: &[u32]) -> Result<usize>;

    /// The `MEMBERS` entry of a (row, backend) pair.
    fn member(&self, key: HealthKey) -> Result<u32>;
    fn set_member(&mut self, key: HealthKey, value: u32) -> Result<()>;

    fn health_entries(&self) -> Result<BTreeMap<HealthKey, HealthEntry>>;
    fn insert_health(&mut self, key: HealthKey, entry: HealthEntry) -> Result<()>;
    fn remove_health(&mut self, key: &HealthKey) -> Result<()>;

    /// The words of `VIP_FILTER`.
    fn filter_words(&self) -> Result<Vec<u64>>;
    fn set_filter_word(&mut self, index: u32, word: u64) -> Result<()>;

    /// The VIP entries (address entries left out), by identity.
    fn vip_entries(&self) -> Result<VipEntries> {
        let mut out = BTreeMap::new();
        for (k, m) in self.all_vips()? {
            if k.proto == PROTO_ADDRESS_ENTRY {
                continue;
            }
            if let Some(identity) = VipIdentity::of_key(&k) {
                out.insert(identity, (k, m));
            }
        }
        Ok(out)
    }

    /// The ids and rows the kernel uses now, for the next plan to keep.
    fn kept(&self) -> Result<Kept> {
        let backend_ids = self
            .backend_entries()?
            .into_iter()
            .filter_map(|(id, e)| lb_common::words_addr(&e.addr, e.family).map(|a| (a, id)))
            .collect();
        let vip_rows = self.vip_entries()?.into_iter().map(|(identity, (_, meta))| (identity, meta.row)).collect();
        Ok(Kept { backend_ids, vip_rows })
    }
}
