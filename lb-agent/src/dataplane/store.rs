//! The maps a plan is written into, as reconciling sees them: what it reads
//! (to tell what changed) and the writes it makes, one entry at a time.
//! Implemented by the kernel's maps ([`super::live::LiveMaps`], opened from
//! their pins or from a loaded object) and, for unit tests of reconcile's
//! ordering rules, by an in-memory store that records every write.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use lb_common::{
    health::{HealthEntry, HealthKey},
    packet_policy::PROTO_ADDRESS_ENTRY,
    second_chance::PreviousOwners,
    BackendEntry, VipKey, VipMeta, NO_BACKEND,
};

use super::previous::{lock, SharedLedger};
use crate::ids::{Kept, VipIdentity};
use crate::plan::previous;

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

    /// Ring `row` of `size` slots.
    fn ring_row(&self, row: u32, size: u32) -> Result<Vec<u32>>;
    /// Makes ring `row` equal `ring` (one entry per slot), writing only the
    /// slots that differ; returns how many it wrote. Only [`Self::set_ring`]
    /// calls it (previous owners first).
    fn write_ring_row(&mut self, row: u32, ring: &[u32]) -> Result<usize>;

    /// Row `row` of `PREVIOUS` (`size` slots; all [`NO_BACKEND`] in an
    /// object without the map).
    fn previous_row(&self, row: u32, size: u32) -> Result<Vec<PreviousOwners>>;
    /// Makes row `row` of `PREVIOUS` equal `previous`, writing only the
    /// slots that differ. Callers hold the ledger.
    fn write_previous_row(&mut self, row: u32, previous: &[PreviousOwners]) -> Result<()>;
    /// Rows of `PREVIOUS` with any previous owner, and how deep (read once after a start).
    fn rows_with_previous(&self) -> Result<Vec<(u32, usize)>>;
    /// Writes the new-flow guard's limit (`None`: off) to every CPU's
    /// `FLOW_GUARD` entry, which also restarts each CPU's window.
    fn set_new_flow_guard(&mut self, per_cpu_per_second: Option<u32>) -> Result<()>;
    /// Slots per ring of the loaded object (before any config says so).
    fn ring_size(&self) -> Result<u32>;
    /// The ledger every handle on these maps shares (see [`super::previous`]).
    fn ledger(&self) -> &SharedLedger;

    /// Makes ring `row` equal `ring`, the one way rings are written
    /// (reconcile and the health supervisor alike): first the previous
    /// owners the change gives ([`previous::advance`]), then the slots, so
    /// the kernel never sees a moved slot without its previous owner.
    /// Returns how many slots of the ring it wrote.
    fn set_ring(&mut self, row: u32, ring: &[u32]) -> Result<usize> {
        let ledger = self.scanned_ledger()?;
        let mut ledger = lock(&ledger);
        let size = ring.len() as u32;
        if !ledger.is_second_chance(row) && !ledger.has_previous(row) {
            // Nothing to remember or to clear (most rows: "lb" and "none" VIPs).
            return self.write_ring_row(row, ring);
        }
        let old = self.ring_row(row, size)?;
        let mut owners = self.previous_row(row, size)?;
        if previous::advance(&old, ring, &mut owners, ledger.is_second_chance(row)) {
            self.write_previous_row(row, &owners)?;
            ledger.wrote(row, previous::depth(&owners), Instant::now());
        }
        self.write_ring_row(row, ring)
    }

    /// The ledger, with the rows the map held at start recorded.
    fn scanned_ledger(&self) -> Result<SharedLedger> {
        let ledger = self.ledger().clone();
        if !lock(&ledger).scanned() {
            let rows = self.rows_with_previous()?;
            lock(&ledger).record_scan(rows, Instant::now());
        }
        Ok(ledger)
    }

    /// Tells the ledger the running config's second-chance rows, window and
    /// ring size (before any ring of the config is written).
    fn configure_previous(&self, second_chance: BTreeSet<u32>, window: Duration, ring_size: u32) -> Result<()> {
        lock(&self.scanned_ledger()?).configure(second_chance, window, ring_size);
        Ok(())
    }

    /// Backend ids some slot names as its previous owner: they keep their
    /// `BACKENDS` entry and are not given to another address until drained.
    fn previous_ids(&self) -> Result<BTreeSet<u32>> {
        let ledger = self.scanned_ledger()?;
        let ledger = lock(&ledger);
        let size = self.ring_size()?;
        let mut ids = BTreeSet::new();
        for row in ledger.rows() {
            ids.extend(self.previous_row(row, size)?.into_iter().flatten().filter(|&id| id != NO_BACKEND));
        }
        Ok(ids)
    }

    /// Forgets the previous owners whose drain window has passed at `now`
    /// (each depth its own, see [`super::previous`]); returns the rows changed.
    fn drain_previous(&mut self, now: Instant) -> Result<Vec<u32>> {
        let ledger = self.scanned_ledger()?;
        let mut ledger = lock(&ledger);
        let expired = ledger.expired(now);
        let size = self.ring_size()?;
        for &(row, keep) in &expired {
            let mut owners = self.previous_row(row, size)?;
            if previous::truncate(&mut owners, keep) {
                self.write_previous_row(row, &owners)?;
            }
            ledger.drained(row, keep);
        }
        Ok(expired.into_iter().map(|(row, _)| row).collect())
    }

    /// The `MEMBERS` entry of a (row, backend) pair.
    fn member(&self, key: HealthKey) -> Result<u32>;
    fn set_member(&mut self, key: HealthKey, value: u32) -> Result<()>;

    fn health_entries(&self) -> Result<BTreeMap<HealthKey, HealthEntry>>;
    fn insert_health(&mut self, key: HealthKey, entry: HealthEntry) -> Result<()>;
    fn remove_health(&mut self, key: &HealthKey) -> Result<()>;

    /// The words of `VIP_FILTER`.
    fn filter_words(&self) -> Result<Vec<lb_common::vip_filter::FilterEntry>>;
    fn set_filter_word(&mut self, index: u32, word: lb_common::vip_filter::FilterEntry) -> Result<()>;

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
        Ok(Kept { backend_ids, vip_rows, previous_owners: self.previous_ids()? })
    }
}
