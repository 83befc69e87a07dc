//! A [`MapStore`] in memory, for unit tests of reconcile's ordering rules:
//! it holds what the kernel's maps would hold, records every write in order
//! (so a test can replay them and look at each state the kernel would have
//! seen) and can fail a chosen write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Result};
use lb_common::{
    flows::MEMBER_UNUSABLE,
    health::{HealthEntry, HealthKey},
    second_chance::PreviousOwners,
    vip_filter::{FilterEntry, WORDS},
    BackendEntry, VipKey, VipMeta, NO_BACKEND,
};

use super::{previous::SharedLedger, store::MapStore};

/// One write, as the kernel would receive it.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Backend(u32, BackendEntry),
    Vip(VipKey, Option<VipMeta>),
    /// The whole new ring of a row (written only where it differs).
    Ring(u32, Vec<u32>),
    /// The whole new row of `PREVIOUS` (written only where it differs).
    Previous(u32, Vec<PreviousOwners>),
    Member(HealthKey, u32),
    Health(HealthKey, Option<HealthEntry>),
    FilterWord(u32, FilterEntry),
    /// The new-flow guard's limit (`None`: off).
    FlowGuard(Option<u32>),
}

/// What the maps hold.
#[derive(Clone, Debug, PartialEq)]
pub struct Maps {
    /// Entries in use (`family != 0`).
    pub backends: BTreeMap<u32, BackendEntry>,
    pub vips: Vec<(VipKey, VipMeta)>,
    /// Rows ever written; others are all `NO_BACKEND`.
    pub rings: BTreeMap<u32, Vec<u32>>,
    /// Rows of `PREVIOUS` ever written; others are all `NO_BACKEND`.
    pub previous: BTreeMap<u32, Vec<PreviousOwners>>,
    /// Entries ever written; others are `MEMBER_UNUSABLE`.
    pub members: BTreeMap<HealthKey, u32>,
    pub health: BTreeMap<HealthKey, HealthEntry>,
    pub filter: Vec<FilterEntry>,
    /// The new-flow guard's limit; a fresh object's is off.
    pub flow_guard: Option<u32>,
}

impl Default for Maps {
    fn default() -> Self {
        Self {
            backends: BTreeMap::new(),
            vips: Vec::new(),
            rings: BTreeMap::new(),
            previous: BTreeMap::new(),
            members: BTreeMap::new(),
            health: BTreeMap::new(),
            filter: vec![FilterEntry::default(); WORDS as usize],
            flow_guard: None,
        }
    }
}

impl Maps {
    /// Applies one write.
    pub fn apply(&mut self, write: &Write) {
        match write {
            Write::Backend(id, e) if e.family == 0 => {
                self.backends.remove(id);
            }
            Write::Backend(id, e) => {
                self.backends.insert(*id, *e);
            }
            Write::Vip(key, meta) => {
                self.vips.retain(|(k, _)| k != key);
                if let Some(m) = meta {
                    self.vips.push((*key, *m));
                }
            }
            Write::Ring(row, ring) => {
                self.rings.insert(*row, ring.clone());
            }
            Write::Previous(row, previous) => {
                self.previous.insert(*row, previous.clone());
            }
            Write::Member(key, value) => {
                self.members.insert(*key, *value);
            }
            Write::Health(key, Some(e)) => {
                self.health.insert(*key, *e);
            }
            Write::Health(key, None) => {
                self.health.remove(key);
            }
            Write::FilterWord(index, word) => self.filter[*index as usize] = *word,
            Write::FlowGuard(limit) => self.flow_guard = *limit,
        }
    }

    pub fn vip(&self, key: &VipKey) -> Option<VipMeta> {
        self.vips.iter().find(|(k, _)| k == key).map(|(_, m)| *m)
    }

    /// Ring `row` of `ring_size` slots.
    pub fn ring(&self, row: u32, ring_size: u32) -> Vec<u32> {
        self.rings.get(&row).cloned().unwrap_or_else(|| vec![NO_BACKEND; ring_size as usize])
    }

    /// Row `row` of `PREVIOUS`, `ring_size` slots.
    pub fn previous(&self, row: u32, ring_size: u32) -> Vec<PreviousOwners> {
        self.previous.get(&row).cloned().unwrap_or_else(|| vec![crate::plan::previous::NONE; ring_size as usize])
    }

    pub fn member(&self, key: HealthKey) -> u32 {
        self.members.get(&key).copied().unwrap_or(MEMBER_UNUSABLE)
    }
}

#[derive(Default)]
struct Shared {
    maps: Maps,
    log: Vec<Write>,
    /// The write (index into `log`) that fails, if any.
    fail_at: Option<usize>,
}

/// Handles made by [`MapStore::reopen`] share the maps, the log and the
/// ledger of previous owners.
#[derive(Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Mutex<Shared>>,
    ledger: SharedLedger,
}

impl MemoryStore {
    pub fn new(maps: Maps) -> Self {
        Self { shared: Arc::new(Mutex::new(Shared { maps, ..Shared::default() })), ledger: SharedLedger::default() }
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn maps(&self) -> Maps {
        self.shared().maps.clone()
    }

    /// The writes since the store was made (or since [`Self::take_log`]).
    pub fn log(&self) -> Vec<Write> {
        self.shared().log.clone()
    }

    pub fn take_log(&self) -> Vec<Write> {
        std::mem::take(&mut self.shared().log)
    }

    /// The `n`th write from now fails (and changes nothing); `None`: none.
    pub fn fail_write(&self, n: Option<usize>) {
        let mut s = self.shared();
        s.fail_at = n.map(|n| n + s.log.len());
    }

    fn write(&self, write: Write) -> Result<()> {
        let mut s = self.shared();
        if s.fail_at == Some(s.log.len()) {
            s.fail_at = None;
            bail!("injected failure of {write:?}");
        }
        s.maps.apply(&write);
        s.log.push(write);
        Ok(())
    }
}

impl MapStore for MemoryStore {
    fn reopen(&self) -> Result<Self> {
        Ok(self.clone())
    }

    fn backend_entries(&self) -> Result<BTreeMap<u32, BackendEntry>> {
        Ok(self.shared().maps.backends.clone())
    }

    fn set_backend(&mut self, id: u32, entry: BackendEntry) -> Result<()> {
        self.write(Write::Backend(id, entry))
    }

    fn all_vips(&self) -> Result<Vec<(VipKey, VipMeta)>> {
        Ok(self.shared().maps.vips.clone())
    }

    fn vip(&self, key: &VipKey) -> Option<VipMeta> {
        self.shared().maps.vip(key)
    }

    fn insert_vip(&mut self, key: VipKey, meta: VipMeta) -> Result<()> {
        self.write(Write::Vip(key, Some(meta)))
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.write(Write::Vip(*key, None))
    }

    fn ring_row(&self, row: u32, size: u32) -> Result<Vec<u32>> {
        Ok(self.shared().maps.ring(row, size))
    }

    fn write_ring_row(&mut self, row: u32, ring: &[u32]) -> Result<usize> {
        let current = self.shared().maps.ring(row, ring.len() as u32);
        let differ = current.iter().zip(ring).filter(|(a, b)| a != b).count();
        if differ > 0 {
            self.write(Write::Ring(row, ring.to_vec()))?;
        }
        Ok(differ)
    }

    fn previous_row(&self, row: u32, size: u32) -> Result<Vec<PreviousOwners>> {
        Ok(self.shared().maps.previous(row, size))
    }

    fn write_previous_row(&mut self, row: u32, previous: &[PreviousOwners]) -> Result<()> {
        if self.shared().maps.previous(row, previous.len() as u32) != previous {
            self.write(Write::Previous(row, previous.to_vec()))?;
        }
        Ok(())
    }

    fn rows_with_previous(&self) -> Result<Vec<(u32, usize)>> {
        let maps = &self.shared().maps;
        Ok(maps.previous.iter().map(|(&row, p)| (row, crate::plan::previous::depth(p))).filter(|&(_, depth)| depth > 0).collect())
    }

    fn ring_size(&self) -> Result<u32> {
        // The rows written so far tell (every row has the ring's size).
        let maps = &self.shared().maps;
        Ok(maps.rings.values().map(Vec::len).chain(maps.previous.values().map(Vec::len)).next().map_or(0, |len| len as u32))
    }

    fn ledger(&self) -> &SharedLedger {
        &self.ledger
    }

    fn member(&self, key: HealthKey) -> Result<u32> {
        Ok(self.shared().maps.member(key))
    }

    fn set_member(&mut self, key: HealthKey, value: u32) -> Result<()> {
        self.write(Write::Member(key, value))
    }

    fn health_entries(&self) -> Result<BTreeMap<HealthKey, HealthEntry>> {
        Ok(self.shared().maps.health.clone())
    }

    fn insert_health(&mut self, key: HealthKey, entry: HealthEntry) -> Result<()> {
        self.write(Write::Health(key, Some(entry)))
    }

    fn remove_health(&mut self, key: &HealthKey) -> Result<()> {
        self.write(Write::Health(*key, None))
    }

    fn filter_words(&self) -> Result<Vec<FilterEntry>> {
        Ok(self.shared().maps.filter.clone())
    }

    fn set_filter_word(&mut self, index: u32, word: FilterEntry) -> Result<()> {
        self.write(Write::FilterWord(index, word))
    }

    fn set_new_flow_guard(&mut self, per_cpu_per_second: Option<u32>) -> Result<()> {
        self.write(Write::FlowGuard(per_cpu_per_second))
    }
}
