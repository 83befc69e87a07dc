//! Backend ids and VIP rows that survive reloads and restarts.
//!
//! The kernel's flow table stores backend ids, and counters and rings are
//! indexed by ids and rows, so a backend that stays in the config must keep
//! its id, and a VIP its row, whatever else is added or removed. A fresh
//! start (nothing kept) numbers in sorted order, so LB hosts started from the
//! same config agree on ids and rows too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use lb_common::VipKey;

/// What identifies a VIP across reloads, restarts and LB hosts: its address,
/// port and protocol number, which are also its `VIPS` key. Its name is a
/// label only. Ordered as the fields are listed: a fresh start gives rows in
/// this order.
///
/// Built from a config VIP by `VipConfig::identity` and from a map key by
/// [`VipIdentity::of_key`]; nothing else assembles one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipIdentity {
    pub address: IpAddr,
    /// Host order; 0 = every port.
    pub port: u16,
    /// IP protocol number (`lb_common::PROTO_TCP`, `PROTO_UDP`).
    pub protocol: u8,
}

impl VipIdentity {
    /// The VIP's `VIPS` key.
    pub fn key(self) -> VipKey {
        VipKey::new(self.address, self.port, self.protocol)
    }

    /// The identity a `VIPS` key stands for (`None` for a key of no address
    /// family, which no VIP has).
    pub fn of_key(key: &VipKey) -> Option<VipIdentity> {
        let address = lb_common::words_addr(&key.addr, key.family)?;
        Some(VipIdentity { address, port: u16::from_be(key.port_be), protocol: key.proto })
    }
}

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
pub(crate) fn allocate<K: Ord + Clone>(
    wanted: &BTreeSet<K>,
    kept: &BTreeMap<K, u32>,
    range: std::ops::Range<u32>,
) -> Option<BTreeMap<K, u32>> {
    allocate_reserving(wanted, kept, range, &BTreeSet::new())
}

/// [`allocate`], never giving out a number of `reserved` except as an
/// item's kept one.
pub(crate) fn allocate_reserving<K: Ord + Clone>(
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
    fn a_vip_identity_is_its_key() {
        for (address, port, protocol) in [("192.0.2.10", 80, lb_common::PROTO_TCP), ("2001:db8::10", 0, lb_common::PROTO_UDP)] {
            let identity = VipIdentity { address: address.parse().unwrap(), port, protocol };
            let key = identity.key();
            assert_eq!(key, VipKey::new(identity.address, port, protocol));
            assert_eq!(VipIdentity::of_key(&key), Some(identity), "{address}");
        }
        assert_eq!(VipIdentity::of_key(&VipKey { family: 0, ..VipKey::new("192.0.2.10".parse().unwrap(), 80, 6) }), None);
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
