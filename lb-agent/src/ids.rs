//! Backend ids and VIP rows that survive reloads and restarts.
//!
//! The kernel's flow table stores backend ids, and counters and rings are
//! indexed by ids and rows, so a backend that stays in the config must keep
//! its id, and a VIP its row, whatever else is added or removed. A fresh
//! start (nothing kept) numbers in sorted order, so LB hosts started from the
//! same config agree on ids and rows too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// A VIP's identity: (address, port, protocol number).
pub type VipIdentity = (IpAddr, u16, u8);

/// Ids and rows in use by the running dataplane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    pub backend_ids: BTreeMap<IpAddr, u32>,
    pub vip_rows: BTreeMap<VipIdentity, u32>,
    /// Backend ids named as a ring slot's previous owner (`PREVIOUS`): they
    /// keep their `BACKENDS` entry, even when the config removed their
    /// address, and no other address gets them until the slot drains; else
    /// "remove a backend" would break its connections.
    pub previous_owners: BTreeSet<u32>,
}

/// Gives every item of `wanted` (sorted) a number in `range`: its kept one if
/// it has one in range, else the smallest number nobody held before (so a
/// stale flow of a removed backend never lands on a new one), else the
/// smallest free one. `None` if `range` is too small.
pub fn allocate<K: Ord + Clone>(
    wanted: &BTreeSet<K>,
    kept: &BTreeMap<K, u32>,
    range: std::ops::Range<u32>,
) -> Option<BTreeMap<K, u32>> {
    allocate_reserving(wanted, kept, range, &BTreeSet::new())
}

/// [`allocate`], never giving out a number of `reserved` except as an
/// item's kept one.
pub fn allocate_reserving<K: Ord + Clone>(
    wanted: &BTreeSet<K>,
    kept: &BTreeMap<K, u32>,
    range: std::ops::Range<u32>,
    reserved: &BTreeSet<u32>,
) -> Option<BTreeMap<K, u32>> {
    let mut out = BTreeMap::new();
    let mut taken = reserved.clone();
    for k in wanted {
        if let Some(&n) = kept.get(k).filter(|n| range.contains(n)) {
            out.insert(k.clone(), n);
            taken.insert(n);
        }
    }
    let held_before: BTreeSet<u32> = kept.values().copied().collect();
    let mut fresh = range.clone().filter(|n| !taken.contains(n) && !held_before.contains(n));
    let mut reused = range.clone().filter(|n| !taken.contains(n) && held_before.contains(n));
    for k in wanted {
        if !out.contains_key(k) {
            let n = fresh.next().or_else(|| reused.next())?;
            out.insert(k.clone(), n);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn fresh_numbers_follow_the_order() {
        let got = allocate(&set(&[30, 10, 20]), &BTreeMap::new(), 1..10).unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), [(10, 1), (20, 2), (30, 3)]);
    }

    #[test]
    fn kept_numbers_stay_and_removed_ones_are_not_reused_first() {
        let kept: BTreeMap<u32, u32> = [(10, 1), (20, 2), (30, 3)].into();
        // 20 removed, 5 and 40 added.
        let got = allocate(&set(&[5, 10, 30, 40]), &kept, 1..10).unwrap();
        assert_eq!(got[&10], 1);
        assert_eq!(got[&30], 3);
        assert_eq!((got[&5], got[&40]), (4, 5), "never-held numbers first");
        // When only the removed one is left, it is reused.
        let got = allocate(&set(&[5, 10, 30]), &kept, 1..4).unwrap();
        assert_eq!(got[&5], 2);
        assert!(allocate(&set(&[5, 6, 10, 30]), &kept, 1..4).is_none());
    }

    #[test]
    fn reserved_numbers_go_only_to_their_own_item() {
        let kept: BTreeMap<u32, u32> = [(10, 1), (20, 2)].into();
        // 20 removed but reserved (a previous owner): 5 cannot have its 2.
        assert!(allocate_reserving(&set(&[5, 10]), &kept, 1..3, &set(&[2])).is_none());
        assert_eq!(allocate_reserving(&set(&[5, 10]), &kept, 1..4, &set(&[2])).unwrap()[&5], 3);
        // 20 back in the config: it gets its own number again.
        assert_eq!(allocate_reserving(&set(&[10, 20]), &kept, 1..3, &set(&[2])).unwrap()[&20], 2);
    }
}
