//! Ring shares as the kernel has them: how many slots of each VIP's row in
//! the pinned `RINGS` map each backend id owns. Counting 65,537 slots per
//! VIP costs far less than building the Maglev rings again (a scrape at
//! 10,000 members: milliseconds instead of most of a second), and it shows
//! what forwards, whoever wrote it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::MapData;
use lb_common::maps;

use lb_common::second_chance::VIP_FLAG_SECOND_CHANCE;

use crate::plan::{previous, Plan};
use crate::dataplane::rings::MappedRings;

/// Slots owned per backend id, per VIP row; and slots with a previous owner.
#[derive(Clone, Debug, Default)]
pub struct RingShares {
    ring_size: u32,
    /// Row -> slots owned, indexed by backend id.
    owned: HashMap<u32, Vec<u32>>,
    /// Row -> slots with a previous owner (second-chance rows only).
    previous: HashMap<u32, u32>,
}

impl RingShares {
    /// Counts the rows of `plan`'s VIPs in the `RINGS` map pinned under `dir`
    /// (one row mapped at a time, as the agent writes them).
    pub fn read_pinned(dir: &Path, plan: &Plan) -> Result<RingShares> {
        let path = dir.join(maps::RINGS);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening {} (is `lb-agent run` running with this config's bpffs_dir?)", path.display()))?;
        // Absent from an object without second chance: no previous owners.
        let previous = dir.join(maps::PREVIOUS);
        let previous = previous.exists().then(|| MapData::from_pin(&previous)).transpose().context("opening the pinned PREVIOUS map")?;
        let mut shares = RingShares { ring_size: plan.ring_size, ..RingShares::default() };
        for vip in &plan.vips {
            let base = vip.row * plan.ring_size;
            let ring = MappedRings::row(&data, vip.row, plan.ring_size)?;
            shares.count(vip.row, (0..plan.ring_size).filter_map(|slot| ring.get(base + slot)));
            drop(ring);
            if let Some(data) = previous.as_ref().filter(|_| vip.meta.flags & VIP_FLAG_SECOND_CHANCE != 0) {
                let row = MappedRings::row_of(data, maps::PREVIOUS, vip.row, plan.ring_size)?;
                let owners: Vec<_> = (0..plan.ring_size).filter_map(|slot| row.get_owners(base + slot)).collect();
                shares.previous.insert(vip.row, previous::with_previous_owner(&owners));
            }
        }
        Ok(shares)
    }

    /// Slots of VIP `row`'s ring that have at least one previous owner
    /// (however many they name).
    pub fn with_previous_owner(&self, row: u32) -> u32 {
        self.previous.get(&row).copied().unwrap_or(0)
    }

    /// Records `previous` as row `row` of `PREVIOUS` (tests and fixtures).
    pub fn set_previous(&mut self, row: u32, previous: &[lb_common::second_chance::PreviousOwners]) {
        self.previous.insert(row, previous::with_previous_owner(previous));
    }

    /// Shares of rings given slot by slot (`rings`: row -> backend id per slot).
    pub fn from_rings<'a>(ring_size: u32, rings: impl IntoIterator<Item = (u32, &'a [u32])>) -> RingShares {
        let mut shares = RingShares { ring_size, ..RingShares::default() };
        for (row, ring) in rings {
            shares.count(row, ring.iter().copied());
        }
        shares
    }

    fn count(&mut self, row: u32, ids: impl Iterator<Item = u32>) {
        let owned = self.owned.entry(row).or_default();
        for id in ids {
            let id = id as usize;
            if id >= owned.len() {
                owned.resize(id + 1, 0);
            }
            owned[id] += 1;
        }
    }

    /// Fraction of VIP `row`'s ring that backend `id` owns (0..=1).
    pub fn share(&self, row: u32, id: u32) -> f64 {
        let owned = self.owned.get(&row).and_then(|o| o.get(id as usize)).copied().unwrap_or(0);
        f64::from(owned) / f64::from(self.ring_size.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_count_the_slots_of_each_row() {
        let (a, b): (Vec<u32>, Vec<u32>) = (vec![1, 2, 2, 0], vec![3, 3, 3, 3]);
        let shares = RingShares::from_rings(4, [(0, &a[..]), (5, &b[..])]);
        assert_eq!((shares.share(0, 1), shares.share(0, 2), shares.share(0, 3)), (0.25, 0.5, 0.0));
        assert_eq!((shares.share(5, 3), shares.share(1, 3)), (1.0, 0.0), "other rows are their own");
    }
}
