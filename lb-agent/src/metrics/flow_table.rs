//! Flow-table occupancy: how many flows the pinned `FLOWS` LRU holds now.
//! The kernel keeps no element count for an LRU hash map, so the keys are
//! walked: one `BPF_MAP_GET_NEXT_KEY` syscall per entry, so a full
//! 1,048,576-entry table costs a million syscalls; hence [`Occupancy`]
//! shares one count between scrapes and pages for [`COUNT_MAX_AGE`].

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::flows::{FlowEntry, FlowKey};
use lb_common::maps;

/// How long a count is shown again instead of walking the table anew: an
/// open status page (every few seconds) and a scrape (every 15 s) together
/// then walk a full table at most once per this.
pub const COUNT_MAX_AGE: Duration = Duration::from_secs(5);

/// The last count and when it was taken.
#[derive(Debug, Default)]
pub struct Occupancy(Mutex<Option<(Instant, u64)>>);

impl Occupancy {
    /// [`entries`], or the count taken less than [`COUNT_MAX_AGE`] ago.
    pub fn entries(&self, dir: &Path, limit: u32) -> Result<u64> {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, count)) = *last
            && at.elapsed() < COUNT_MAX_AGE
        {
            return Ok(count);
        }
        let count = entries(dir, limit)?;
        *last = Some((Instant::now(), count));
        Ok(count)
    }
}

/// Entries of the `FLOWS` map pinned under `dir`, counted up to `limit`
/// (its size: a walk that races with evictions can revisit keys).
pub fn entries(dir: &Path, limit: u32) -> Result<u64> {
    let path = dir.join(maps::FLOWS);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening {} (is `lb-agent run` running with this config's bpffs_dir?)", path.display()))?;
    let map: BpfHashMap<_, FlowKey, FlowEntry> = BpfHashMap::try_from(Map::LruHashMap(data)).context("the pinned FLOWS map")?;
    // The kernel restarts a walk whose current key was evicted meanwhile: a
    // snapshot, bounded by the table's size, not an exact count.
    Ok(map.keys().take(limit as usize).filter(Result::is_ok).count() as u64)
}
