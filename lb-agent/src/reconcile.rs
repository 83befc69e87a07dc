//! Brings the kernel's maps from whatever they hold (nothing on a fresh
//! start, the previous config after a reload, a dead agent's state on
//! adoption) to a new plan, in an order that never sends a packet of an
//! existing flow elsewhere or to nothing:
//!
//! 1. [`before_rings`]: the VIP address filter gains the bits of new
//!    addresses (`lb_common::vip_filter`), keys of removed VIPs are deleted (their packets now
//!    pass, as for any non-VIP address), pairs that end stop being usable
//!    (their recorded flows re-hash), backends of the plan are written.
//! 2. The health supervisor writes members, health entries and the ring
//!    slots that differ (rings are written in place, slot by slot; a slot
//!    always names a written backend).
//! 3. [`after_rings`]: VIP entries are inserted or updated (a new VIP only
//!    becomes visible with its ring complete), address entries follow,
//!    rows of removed VIPs are cleared, backends nobody uses are erased, and
//!    the filter loses the bits of removed addresses.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context as _, Result};
use lb_common::{
    flows::{member_index, MEMBER_UNUSABLE},
    health::HealthKey,
    packet_policy::PROTO_ADDRESS_ENTRY,
    BackendEntry, NO_BACKEND,
};

use crate::{
    dataplane::{backend_entry, ResolvedBackend},
    live::LiveMaps,
    plan::Plan,
};

/// What a reconciliation changed, for logs and `lb-agent reload`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub vips_added: Vec<String>,
    pub vips_removed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    /// Rows of removed VIPs, cleared in [`after_rings`].
    removed_rows: Vec<u32>,
    /// Ids no VIP uses any more, erased in [`after_rings`].
    removed_ids: Vec<u32>,
    /// Every id the kernel or the plan knows (for clearing member rows).
    known_ids: BTreeSet<u32>,
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} VIP(s) added{}, {} removed; {} backend(s) added, {} removed",
            self.vips_added.len(),
            if self.vips_added.is_empty() { String::new() } else { format!(" ({})", self.vips_added.join(", ")) },
            self.vips_removed,
            self.backends_added,
            self.backends_removed
        )
    }
}

/// Step 1 (see the module's documentation).
pub fn before_rings(
    live: &mut LiveMaps,
    plan: &Plan,
    resolved: &HashMap<u32, ResolvedBackend>,
    max_backends: u32,
) -> Result<Changes> {
    let mut changes = Changes::default();
    // New addresses pass the filter before their VIPs exist.
    crate::vip_filter::write(&mut live.vip_filter, &crate::vip_filter::words(plan), crate::vip_filter::Merge::Union)?;
    let planned_rows: BTreeSet<u32> = plan.vips.iter().map(|v| v.row).collect();
    let planned: BTreeSet<_> = plan.vips.iter().map(|v| v.identity()).collect();
    let old_vips = live.vip_entries()?;
    for (identity, (key, meta)) in &old_vips {
        if !planned.contains(identity) {
            live.vips.remove(key).with_context(|| format!("removing VIP {identity:?}"))?;
            changes.vips_removed += 1;
            if !planned_rows.contains(&meta.row) {
                changes.removed_rows.push(meta.row);
            }
        }
    }
    let old_backends = live.backend_entries()?;
    changes.known_ids = old_backends.keys().copied().chain(plan.backends.iter().map(|b| b.id)).collect();
    for vip in &plan.vips {
        if !old_vips.contains_key(&vip.identity()) {
            changes.vips_added.push(vip.name.clone());
        }
        let members: BTreeSet<u32> = vip.members.iter().map(|(id, _)| *id).collect();
        for &id in changes.known_ids.iter().filter(|id| !members.contains(id)) {
            clear_member(live, vip.row, id, max_backends)?;
        }
    }
    for b in &plan.backends {
        let r = resolved.get(&b.id).with_context(|| format!("backend {} has no resolved next hop", b.address))?;
        let entry = backend_entry(r);
        match old_backends.get(&b.id) {
            Some(old) if *old == entry => {}
            old => {
                if old.is_none() {
                    changes.backends_added += 1;
                }
                live.backends.set(b.id, entry, 0).with_context(|| format!("writing backend {}", b.address))?;
            }
        }
    }
    let planned_ids: BTreeSet<u32> = plan.backends.iter().map(|b| b.id).collect();
    changes.removed_ids = old_backends.keys().copied().filter(|id| !planned_ids.contains(id)).collect();
    changes.backends_removed = changes.removed_ids.len();
    Ok(changes)
}

fn clear_member(live: &mut LiveMaps, row: u32, id: u32, max_backends: u32) -> Result<()> {
    let index = member_index(row, id, max_backends);
    if live.members.get(&index, 0).context("reading MEMBERS")? != MEMBER_UNUSABLE {
        live.members.set(index, MEMBER_UNUSABLE, 0).context("writing MEMBERS")?;
    }
    Ok(())
}

/// Step 3 (see the module's documentation).
pub fn after_rings(live: &mut LiveMaps, plan: &Plan, changes: &Changes, max_backends: u32) -> Result<()> {
    for vip in &plan.vips {
        if live.vips.get(&vip.key, 0).ok() != Some(vip.meta) {
            live.vips.insert(vip.key, vip.meta, 0).with_context(|| format!("writing VIP {}", vip.name))?;
        }
    }
    // Address entries after the VIPs (an address entry without its VIPs
    // would only make the kernel drop fragments it would otherwise pass).
    let wanted: BTreeMap<_, _> = crate::packet_policy::address_entries(plan)
        .into_iter()
        .map(|(k, m)| ((k.family, k.addr), (k, m)))
        .collect();
    for key in live.all_vip_keys()? {
        if key.proto == PROTO_ADDRESS_ENTRY && !wanted.contains_key(&(key.family, key.addr)) {
            live.vips.remove(&key).context("removing a VIP address entry")?;
        }
    }
    for (key, meta) in wanted.values() {
        if live.vips.get(key, 0).ok() != Some(*meta) {
            live.vips.insert(*key, *meta, 0).context("writing VIP address entries")?;
        }
    }

    let ring_size = plan.ring_size;
    for &row in &changes.removed_rows {
        let mapped = crate::rings::MappedRings::row(&live.rings, row, ring_size)?;
        let base = row * ring_size;
        for slot in base..base + ring_size {
            if mapped.get(slot) != Some(NO_BACKEND) {
                mapped.set(slot, NO_BACKEND)?;
            }
        }
        for &id in &changes.known_ids {
            clear_member(live, row, id, max_backends)?;
        }
    }
    let pairs: BTreeSet<HealthKey> = plan
        .vips
        .iter()
        .flat_map(|v| v.members.iter().map(|(id, _)| HealthKey { row: v.row, backend_id: *id }))
        .collect();
    for key in live.health_entries()?.into_keys().filter(|k| !pairs.contains(k)) {
        live.health.remove(&key).context("removing a HEALTH entry")?;
    }
    // Last: no ring slot names these any more.
    for &id in &changes.removed_ids {
        let unused = BackendEntry { addr: [0; 4], next_hop_mac: [0; 6], family: 0, _pad: 0 };
        live.backends.set(id, unused, 0).with_context(|| format!("erasing backend id {id}"))?;
    }
    // The VIP table now holds the plan's VIPs only: bits of removed addresses can go.
    crate::vip_filter::write(&mut live.vip_filter, &crate::vip_filter::words(plan), crate::vip_filter::Merge::Exact)?;
    Ok(())
}
