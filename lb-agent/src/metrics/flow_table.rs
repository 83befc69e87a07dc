//! Flow-table occupancy: how many flows the pinned `FLOWS` LRU holds now.
//! The kernel keeps no element count for an LRU hash map, so the keys are
//! walked (one `BPF_MAP_GET_NEXT_KEY` each: about a microsecond per entry,
//! so a full 1,048,576-entry table costs about a second of one scrape).

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::flows::{FlowEntry, FlowKey};
use lb_common::maps;

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
