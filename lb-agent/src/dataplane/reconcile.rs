//! Brings the kernel's maps from whatever they hold (nothing on a fresh
//! start, the previous config after a reload, a dead agent's state on
//! adoption) to a new plan, in an order that never sends a packet of an
//! existing flow elsewhere or to nothing:
//!
//! [`apply`] runs the three steps on any [`MapStore`]: the pinned maps of
//! the agent, a loaded object's maps in the packet fixtures and the bench,
//! or an in-memory store in the unit tests below.
//!
//! 1. [`before_rings`]: the VIP address filter gains the bits of new
//!    addresses (`lb_common::vip_filter`), keys of removed VIPs are deleted
//!    (their packets now pass, as for any non-VIP address), pairs that end
//!    stop being usable (their recorded flows re-hash), backends of the plan
//!    are written.
//! 2. The health supervisor ([`Supervisor::new`]) writes members, health
//!    entries and the ring slots that differ (rings are written in place,
//!    slot by slot; a slot always names a written backend).
//! 3. [`after_rings`]: VIP entries are inserted or updated (a new VIP only
//!    becomes visible with its ring complete), address entries follow,
//!    rows of removed VIPs are cleared, backends nobody uses are erased, and
//!    the filter loses the bits of removed addresses.
//!
//! A reload that fails part-way leaves a mix that the next reload repairs
//! once it plans without reusing the running plan (`maps_match_plan` in
//! runtime.rs); rows only the failed reload wrote may keep stale slots,
//! which no VIP points at and which are rewritten when a VIP takes the row.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context as _, Result};
use lb_common::{
    flows::{MEMBER_UNUSABLE, MEMBER_USABLE},
    health::{HealthEntry, HealthKey},
    packet_policy::PROTO_ADDRESS_ENTRY,
    second_chance::VIP_FLAG_SECOND_CHANCE,
    BackendEntry, NO_BACKEND,
};

use crate::{
    config::Config,
    dataplane::{backend_entry, store::MapStore, ResolvedBackend},
    health::supervisor::{HealthWriter, Supervisor},
    plan::Plan,
};

/// The supervisor writes rings, members and health entries into a store.
impl<S: MapStore> HealthWriter for S {
    fn write_ring(&mut self, row: u32, ring: &[u32]) -> Result<usize> {
        self.set_ring(row, ring)
    }
    fn write_health(&mut self, key: HealthKey, entry: HealthEntry) -> Result<()> {
        self.insert_health(key, entry)
    }
    fn write_member(&mut self, key: HealthKey, usable: bool) -> Result<()> {
        self.set_member(key, if usable { MEMBER_USABLE } else { MEMBER_UNUSABLE })
    }
}

/// Brings `store` to `plan` (the three steps of the module's documentation)
/// and returns the health supervisor that now owns rings and members, with
/// its own handle on the store. `previous` is the supervisor being replaced
/// on a reload whose maps matched the running plan.
pub fn apply<S: MapStore>(
    store: &mut S,
    config: &Config,
    plan: &Plan,
    resolved: &HashMap<u32, ResolvedBackend>,
    previous: Option<&Supervisor<S>>,
) -> Result<(Supervisor<S>, Changes)> {
    let mut step = std::time::Instant::now();
    let mut done = |what: &str| {
        tracing::debug!("reconcile: {what} took {:.1} ms", step.elapsed().as_secs_f64() * 1e3);
        step = std::time::Instant::now();
    };
    let prior = store.health_entries()?;
    let second_chance = plan.vips.iter().filter(|v| v.meta.flags & VIP_FLAG_SECOND_CHANCE != 0).map(|v| v.row).collect();
    store.configure_previous(second_chance, config.lb.previous_owner_window, plan.ring_size)?;
    store.set_new_flow_guard(config.lb.new_flow_guard)?;
    let changes = before_rings(store, plan, resolved)?;
    done("backends and members");
    let supervisor = Supervisor::new(config, plan, store.reopen()?, &prior, previous)?;
    done("rings");
    after_rings(store, plan, &changes)?;
    done("VIPs and health entries");
    Ok((supervisor, changes))
}

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
pub fn before_rings(store: &mut impl MapStore, plan: &Plan, resolved: &HashMap<u32, ResolvedBackend>) -> Result<Changes> {
    let mut changes = Changes::default();
    // New addresses pass the filter before their VIPs exist.
    crate::dataplane::vip_filter::write(store, &crate::dataplane::vip_filter::words(plan), crate::dataplane::vip_filter::Merge::Union)?;
    let planned_rows: BTreeSet<u32> = plan.vips.iter().map(|v| v.row).collect();
    let planned: BTreeSet<_> = plan.vips.iter().map(|v| v.identity()).collect();
    let old_vips = store.vip_entries()?;
    for (identity, (key, meta)) in &old_vips {
        if !planned.contains(identity) {
            store.remove_vip(key).with_context(|| format!("removing VIP {identity:?}"))?;
            changes.vips_removed += 1;
            if !planned_rows.contains(&meta.row) {
                changes.removed_rows.push(meta.row);
            }
        }
    }
    let old_backends = store.backend_entries()?;
    changes.known_ids = old_backends.keys().copied().chain(plan.backends.iter().map(|b| b.id)).collect();
    for vip in &plan.vips {
        if !old_vips.contains_key(&vip.identity()) {
            changes.vips_added.push(vip.name.clone());
        }
        let members: BTreeSet<u32> = vip.members.iter().map(|(id, _)| *id).collect();
        for &id in changes.known_ids.iter().filter(|id| !members.contains(id)) {
            clear_member(store, HealthKey { row: vip.row, backend_id: id })?;
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
                store.set_backend(b.id, entry).with_context(|| format!("writing backend {}", b.address))?;
            }
        }
    }
    let planned_ids: BTreeSet<u32> = plan.backends.iter().map(|b| b.id).collect();
    changes.removed_ids = old_backends.keys().copied().filter(|id| !planned_ids.contains(id)).collect();
    changes.backends_removed = changes.removed_ids.len();
    Ok(changes)
}

fn clear_member(store: &mut impl MapStore, key: HealthKey) -> Result<()> {
    if store.member(key)? != MEMBER_UNUSABLE {
        store.set_member(key, MEMBER_UNUSABLE)?;
    }
    Ok(())
}

/// Step 3 (see the module's documentation).
pub fn after_rings(store: &mut impl MapStore, plan: &Plan, changes: &Changes) -> Result<()> {
    for vip in &plan.vips {
        if store.vip(&vip.key) != Some(vip.meta) {
            store.insert_vip(vip.key, vip.meta).with_context(|| format!("writing VIP {}", vip.name))?;
        }
    }
    // Address entries after the VIPs (an address entry without its VIPs
    // would only make the kernel drop fragments it would otherwise pass).
    let wanted: BTreeMap<_, _> = crate::packet_policy::address_entries(plan)
        .into_iter()
        .map(|(k, m)| ((k.family, k.addr), (k, m)))
        .collect();
    for (key, _) in store.all_vips()? {
        if key.proto == PROTO_ADDRESS_ENTRY && !wanted.contains_key(&(key.family, key.addr)) {
            store.remove_vip(&key).context("removing a VIP address entry")?;
        }
    }
    for (key, meta) in wanted.values() {
        if store.vip(key) != Some(*meta) {
            store.insert_vip(*key, *meta).context("writing VIP address entries")?;
        }
    }

    let empty_ring = vec![NO_BACKEND; plan.ring_size as usize];
    for &row in &changes.removed_rows {
        store.set_ring(row, &empty_ring).with_context(|| format!("clearing ring row {row}"))?;
        for &id in &changes.known_ids {
            clear_member(store, HealthKey { row, backend_id: id })?;
        }
    }
    let pairs: BTreeSet<HealthKey> = plan
        .vips
        .iter()
        .flat_map(|v| v.members.iter().map(|(id, _)| HealthKey { row: v.row, backend_id: *id }))
        .collect();
    for key in store.health_entries()?.into_keys().filter(|k| !pairs.contains(k)) {
        store.remove_health(&key).context("removing a HEALTH entry")?;
    }
    // Last: no ring slot names these any more. A previous owner keeps its
    // entry (the balancer only names previous owners that have one) until
    // its slots drain; a later reconcile erases it.
    let previous_owners = store.previous_ids()?;
    for &id in changes.removed_ids.iter().filter(|id| !previous_owners.contains(id)) {
        let unused = BackendEntry { addr: [0; 4], next_hop_mac: [0; 6], family: 0, _pad: 0 };
        store.set_backend(id, unused).with_context(|| format!("erasing backend id {id}"))?;
    }
    // The VIP table now holds the plan's VIPs only: bits of removed addresses can go.
    crate::dataplane::vip_filter::write(store, &crate::dataplane::vip_filter::words(plan), crate::dataplane::vip_filter::Merge::Exact)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, MacAddr};
    use crate::test_config::{TestBackend, TestConfig, TestVip};
    use crate::dataplane::memory::{Maps, MemoryStore, Write};
    use crate::plan::{plan_reusing, Previous};
    use lb_common::{second_chance::PreviousOwners, VipKey, VipMeta};
    use std::time::{Duration, Instant};

    /// web (192.0.2.10:80, checked) on .11, .12 (down at start when
    /// `down12`) and `extra`.
    fn web(down12: bool, extra: &[&str]) -> TestVip {
        let twelve = TestBackend::new("198.51.100.12");
        let twelve = if down12 { twelve.health("initial", "down") } else { twelve };
        let web = TestVip::new("web", "192.0.2.10:80").set("fragments", "forward").health("interval", "1s").health("timeout", "500ms");
        web.backends(["198.51.100.11"]).backend(twelve).backends(extra.iter().copied())
    }

    /// web and dns (192.0.2.20:53, the only user of .13 and of its
    /// address); `down12`: web's .12 starts down.
    fn config_before(down12: bool) -> Config {
        let dns = TestVip::new("dns", "192.0.2.20:53/udp").backends(["198.51.100.12", "198.51.100.13"]);
        TestConfig::new().ring_size(13).vip(web(down12, &[])).vip(dns).parse()
    }

    /// dns (and with it .13 and 192.0.2.20) removed; api added on a new
    /// address with a new backend; web gains that backend too.
    fn config_after(down12: bool) -> Config {
        let api = TestVip::new("api", "192.0.2.30:443").backends(["198.51.100.11", "198.51.100.14"]);
        TestConfig::new().ring_size(13).vip(web(down12, &["198.51.100.14"])).vip(api).parse()
    }

    /// Static next hops, one MAC per backend id.
    fn resolved(plan: &Plan) -> HashMap<u32, ResolvedBackend> {
        plan.backends
            .iter()
            .map(|b| (b.id, ResolvedBackend { address: b.address, next_hop_mac: MacAddr([2, 0, 0, 0, 0, b.id as u8]) }))
            .collect()
    }

    /// Whether the filter lets the kernel see `key`'s address as maybe a VIP
    /// address: its bit set and, for IPv4, listed (or its word overflowing).
    fn filter_has(maps: &Maps, key: &VipKey) -> bool {
        use lb_common::vip_filter::{bit, word_and_mask, Listed};
        let (word, mask) = word_and_mask(bit(&key.addr, key.family));
        let entry = &maps.filter[word as usize];
        entry.bits & mask != 0 && (key.family != lb_common::FAMILY_V4 || entry.lists_v4(key.addr[0]) != Listed::No)
    }

    fn vip_entries(maps: &Maps) -> impl Iterator<Item = &(VipKey, VipMeta)> {
        maps.vips.iter().filter(|(k, _)| k.proto != PROTO_ADDRESS_ENTRY)
    }

    /// What must hold in every state the kernel can see, whatever the
    /// order of writes: a VIP passes the filter, its ring is complete (no
    /// unwritten slot next to written ones) and names written backends
    /// only, and its usable members are written backends.
    fn check_visible(maps: &Maps, ring_size: u32) -> Result<(), String> {
        for (key, meta) in vip_entries(maps) {
            if !filter_has(maps, key) {
                return Err(format!("VIP {key:?} is in the table but its filter bit is clear"));
            }
            let ring = maps.ring(meta.row, ring_size);
            let unwritten = ring.iter().filter(|id| **id == NO_BACKEND).count();
            if unwritten != 0 && unwritten != ring.len() {
                return Err(format!("VIP {key:?} sees ring row {} with {unwritten} unwritten slots", meta.row));
            }
            if let Some(id) = ring.iter().find(|id| **id != NO_BACKEND && !maps.backends.contains_key(id)) {
                return Err(format!("the ring of VIP {key:?} names backend {id}, which has no entry"));
            }
            for (k, _) in maps.members.iter().filter(|(k, v)| k.row == meta.row && **v == MEMBER_USABLE) {
                if !maps.backends.contains_key(&k.backend_id) {
                    return Err(format!("VIP {key:?} has a usable member {k:?} without a backend entry"));
                }
            }
        }
        Ok(())
    }

    /// Replays `log` from `start`, checking every state on the way, that
    /// each VIP appears only with the ring it has at the end and each
    /// address entry only after a VIP of its address.
    fn replay(start: &Maps, log: &[Write], end: &Maps, ring_size: u32) {
        let mut maps = start.clone();
        for (i, write) in log.iter().enumerate() {
            match write {
                Write::Vip(key, Some(meta)) if key.proto != PROTO_ADDRESS_ENTRY && maps.vip(key).is_none() => assert_eq!(
                    maps.ring(meta.row, ring_size),
                    end.ring(meta.row, ring_size),
                    "write {i}: VIP {key:?} appears before its ring is complete"
                ),
                // (One may outlive its VIPs until the end of a reload: fragments
                // of a removed address are dropped a moment longer.)
                Write::Vip(key, Some(_)) => assert!(
                    vip_entries(&maps).any(|(k, _)| (k.family, k.addr) == (key.family, key.addr)),
                    "write {i}: address entry {key:?} appears before its VIPs"
                ),
                _ => {}
            }
            maps.apply(write);
            if let Err(e) = check_visible(&maps, ring_size) {
                panic!("after write {i} ({write:?}): {e}\nwrites: {log:#?}");
            }
        }
        assert_eq!(&maps, end, "the log replays to the store's state");
    }

    /// Whether `maps` hold what `plan` says (every backend up: the plan's
    /// all-up rings), as `maps_match_plan` in runtime.rs assumes after a
    /// successful apply.
    fn assert_matches(maps: &Maps, plan: &Plan) {
        let vips: BTreeSet<_> = vip_entries(maps).map(|(k, m)| (format!("{k:?}"), format!("{m:?}"))).collect();
        let planned: BTreeSet<_> = plan.vips.iter().map(|v| (format!("{:?}", v.key), format!("{:?}", v.meta))).collect();
        assert_eq!(vips, planned, "VIP entries");
        let addresses: BTreeSet<_> =
            maps.vips.iter().filter(|(k, _)| k.proto == PROTO_ADDRESS_ENTRY).map(|e| format!("{e:?}")).collect();
        let wanted: BTreeSet<_> = crate::packet_policy::address_entries(plan).iter().map(|e| format!("{e:?}")).collect();
        assert_eq!(addresses, wanted, "address entries");
        let r = resolved(plan);
        let backends: BTreeMap<u32, BackendEntry> = plan.backends.iter().map(|b| (b.id, backend_entry(&r[&b.id]))).collect();
        assert_eq!(maps.backends, backends, "backend entries");
        assert_eq!(maps.filter, crate::dataplane::vip_filter::words(plan), "VIP filter");
        let pairs: BTreeSet<HealthKey> =
            plan.vips.iter().flat_map(|v| v.members.iter().map(|(id, _)| HealthKey { row: v.row, backend_id: *id })).collect();
        for v in &plan.vips {
            assert_eq!(maps.ring(v.row, plan.ring_size), v.ring(), "ring of {}", v.name);
            for (key, value) in maps.members.iter().filter(|(k, _)| k.row == v.row) {
                assert_eq!(*value == MEMBER_USABLE, pairs.contains(key), "member {key:?} of {}", v.name);
            }
        }
        for key in &pairs {
            assert_eq!(maps.member(*key), MEMBER_USABLE, "member {key:?}");
        }
        assert_eq!(maps.health.keys().copied().collect::<BTreeSet<_>>(), pairs, "health entries");
    }

    /// The store after a first start with `config`, its plan (rings
    /// forgotten, as the runtime keeps it) and supervisor.
    fn started(config: Config) -> (Config, Plan, MemoryStore, Supervisor<MemoryStore>) {
        let mut store = MemoryStore::default();
        let plan = crate::plan::plan_keeping(&config, &store.kept().unwrap()).unwrap();
        let (supervisor, _) = apply(&mut store, &config, &plan, &resolved(&plan), None).unwrap();
        let mut running = plan;
        running.forget_rings();
        (config, running, store, supervisor)
    }

    #[test]
    fn start_and_reload_write_the_new_flow_guard() {
        let text = |guard: toml::Value| {
            let web = TestVip::new("web", "192.0.2.10:80").backends(["198.51.100.11"]);
            TestConfig::new().ring_size(13).lb("new_flow_guard", guard).vip(web).to_toml()
        };
        let (before, running, mut store, first) = started(parse(&text(5000.into()), "t.toml").unwrap());
        assert_eq!(store.maps().flow_guard, Some(5000), "a start writes the config's limit");
        let (after, running, second) = reload(&mut store, &before, &running, &first, &text("off".into()));
        assert_eq!(store.maps().flow_guard, None, "a reload turns it off");
        reload(&mut store, &after, &running, &second, &text(7.into()));
        assert_eq!(store.maps().flow_guard, Some(7), "and on again, with another limit");
    }

    #[test]
    fn a_first_start_writes_backends_rings_and_bits_before_vips() {
        let config = config_before(true);
        let mut store = MemoryStore::default();
        let plan = crate::plan::plan_keeping(&config, &store.kept().unwrap()).unwrap();
        let (_, changes) = apply(&mut store, &config, &plan, &resolved(&plan), None).unwrap();
        assert_eq!((changes.vips_added.len(), changes.backends_added), (2, 3));
        let end = store.maps();
        replay(&Maps::default(), &store.log(), &end, plan.ring_size);
        // .12 starts down: web's ring is the supervisor's, not the all-up one.
        let web = plan.vip("web").unwrap();
        let down = plan.backend_id("198.51.100.12".parse().unwrap()).unwrap();
        assert!(!end.ring(web.row, plan.ring_size).contains(&down));
        assert_eq!(end.member(HealthKey { row: web.row, backend_id: down }), MEMBER_UNUSABLE);
        let dns = plan.vip("dns").unwrap();
        assert_eq!(end.ring(dns.row, plan.ring_size), dns.ring());
        assert_eq!(vip_entries(&end).count(), 2);
        assert_eq!(end.filter, crate::dataplane::vip_filter::words(&plan));
    }

    #[test]
    fn a_reload_clears_bits_rows_and_backends_only_after_the_vips_are_gone() {
        let (before, running, mut store, first) = started(config_before(true));
        let start = store.maps();
        store.take_log();
        let config = config_after(true);
        let previous = Previous { config: &before, plan: &running };
        let plan = plan_reusing(&config, &store.kept().unwrap(), Some(previous)).unwrap();
        let (_, changes) = apply(&mut store, &config, &plan, &resolved(&plan), Some(&first)).unwrap();
        assert_eq!((changes.vips_added, changes.vips_removed), (vec!["api".to_string()], 1));
        assert_eq!((changes.backends_added, changes.backends_removed), (1, 1));
        let log = store.log();
        let end = store.maps();
        replay(&start, &log, &end, plan.ring_size);

        // The removed VIP, its ring row, its only backend and its address.
        let dns = running.vip("dns").unwrap();
        let gone = running.backend_id("198.51.100.13".parse().unwrap()).unwrap();
        let at = |what: &dyn Fn(&Write) -> bool| log.iter().position(what).unwrap_or_else(|| panic!("no such write in {log:#?}"));
        let vip_removed = at(&|w| matches!(w, Write::Vip(k, None) if *k == dns.key));
        let row_cleared = at(&|w| matches!(w, Write::Ring(row, ring) if *row == dns.row && ring.iter().all(|id| *id == NO_BACKEND)));
        let backend_erased = at(&|w| matches!(w, Write::Backend(id, e) if *id == gone && e.family == 0));
        let (word, mask) = lb_common::vip_filter::word_and_mask(lb_common::vip_filter::bit(&dns.key.addr, dns.key.family));
        let bit_cleared = at(&|w| matches!(w, Write::FilterWord(i, v) if *i == word && v.bits & mask == 0));
        assert!(vip_removed < row_cleared && row_cleared < backend_erased, "VIP, then its ring, then its backend");
        assert!(vip_removed < bit_cleared, "the filter bit goes after the VIP");
        assert!(!filter_has(&end, &dns.key));
        assert!(!end.backends.contains_key(&gone));
        assert!(end.health.keys().all(|k| k.row != dns.row), "the removed VIP's health entries are gone");
        // The new backend is written before any ring names it.
        let added = plan.backend_id("198.51.100.14".parse().unwrap()).unwrap();
        let written = at(&|w| matches!(w, Write::Backend(id, e) if *id == added && e.family != 0));
        let named = at(&|w| matches!(w, Write::Ring(_, ring) if ring.contains(&added)));
        assert!(written < named);
    }

    #[test]
    fn a_reload_that_fails_at_any_write_is_repaired_by_the_next() {
        // Every backend up: the maps must end with the plan's all-up rings.
        let (before, running, store, first) = started(config_before(false));
        let start = store.maps();
        let config = config_after(false);
        let previous = || Some(Previous { config: &before, plan: &running });
        // How many writes a successful reload makes.
        let clean = {
            let mut store = MemoryStore::new(start.clone());
            let plan = plan_reusing(&config, &store.kept().unwrap(), previous()).unwrap();
            apply(&mut store, &config, &plan, &resolved(&plan), Some(&first)).unwrap();
            assert_matches(&store.maps(), &plan);
            store.log().len()
        };
        assert!(clean > 10, "{clean} writes");
        for n in 0..clean {
            let mut store = MemoryStore::new(start.clone());
            let plan = plan_reusing(&config, &store.kept().unwrap(), previous()).unwrap();
            store.fail_write(Some(n));
            assert!(apply(&mut store, &config, &plan, &resolved(&plan), Some(&first)).is_err(), "write {n} should fail");
            // As runtime.rs does after a failed apply: maps_match_plan = false.
            let plan = plan_reusing(&config, &store.kept().unwrap(), None).unwrap();
            apply(&mut store, &config, &plan, &resolved(&plan), None).unwrap_or_else(|e| panic!("repair after failing write {n}: {e:#}"));
            let log = store.log();
            replay(&start, &log, &store.maps(), plan.ring_size);
            assert_matches(&store.maps(), &plan);
        }
    }

    /// "web" keeps flow state on the backends; "plain" (same backends) on the LB.
    fn second_chance(backends: &[&str]) -> TestConfig {
        let web = TestVip::new("web", "192.0.2.10:80").set("flow_state", "backend").health("interval", "1s").health("timeout", "500ms");
        let plain = TestVip::new("plain", "192.0.2.20:80");
        TestConfig::new()
            .ring_size(13)
            .lb("previous_owner_window", "10s")
            .vip(web.backends(backends.iter().copied()))
            .vip(plain.backends(backends.iter().copied()))
    }

    const ALL_THREE: [&str; 3] = ["198.51.100.11", "198.51.100.12", "198.51.100.13"];
    const WITHOUT_13: [&str; 2] = ["198.51.100.11", "198.51.100.12"];

    /// Reloads `store` (running `before` / `running`) to `text`.
    fn reload(store: &mut MemoryStore, before: &Config, running: &Plan, first: &Supervisor<MemoryStore>, text: &str) -> (Config, Plan, Supervisor<MemoryStore>) {
        let config = parse(text, "t.toml").unwrap();
        let previous = Previous { config: before, plan: running };
        let plan = plan_reusing(&config, &store.kept().unwrap(), Some(previous)).unwrap();
        let (supervisor, _) = apply(store, &config, &plan, &resolved(&plan), Some(first)).unwrap();
        let mut kept = plan;
        kept.forget_rings();
        (config, kept, supervisor)
    }

    /// Every slot that changed from `old` to `new` names its old owner (and
    /// only it: one change from none); the others none.
    #[track_caller]
    fn assert_previous_follows(old: &[u32], new: &[u32], previous: &[PreviousOwners]) {
        let wanted: Vec<PreviousOwners> =
            old.iter().zip(new).map(|(&o, &n)| if o != n { [o, NO_BACKEND] } else { [NO_BACKEND; 2] }).collect();
        assert_eq!(previous, wanted, "old {old:?}, new {new:?}");
        assert!(old != new, "the change must move some slot");
    }

    #[test]
    fn removing_a_backend_makes_it_the_previous_owner_of_its_slots_and_keeps_its_entry() {
        let (before, running, mut store, first) = started(second_chance(&ALL_THREE).parse());
        let (web, plain) = (running.vip("web").unwrap().row, running.vip("plain").unwrap().row);
        let size = running.ring_size;
        let start = store.maps();
        assert!(start.previous.values().flatten().flatten().all(|&id| id == NO_BACKEND), "a first start has no previous owners");
        let gone = running.backend_id("198.51.100.13".parse().unwrap()).unwrap();

        let without = second_chance(&WITHOUT_13).to_toml();
        let (config, plan, second) = reload(&mut store, &before, &running, &first, &without);
        let end = store.maps();
        assert_previous_follows(&start.ring(web, size), &end.ring(web, size), &end.previous(web, size));
        assert!(end.previous(web, size).iter().any(|o| o.contains(&gone)));
        assert!(end.previous(plain, size).iter().flatten().all(|&id| id == NO_BACKEND), "an \"lb\" VIP has none");
        assert!(end.backends.contains_key(&gone), "a previous owner keeps its BACKENDS entry");
        assert!(store.kept().unwrap().previous_owners.contains(&gone));
        // PREVIOUS is written before the ring that moves the slots.
        let log = store.log();
        let named = log.iter().position(|w| matches!(w, Write::Previous(row, p) if *row == web && p.iter().any(|o| o.contains(&gone)))).unwrap();
        let moved = log.iter().position(|w| matches!(w, Write::Ring(row, r) if *row == web && !r.contains(&gone))).unwrap();
        assert!(named < moved, "previous owners before the ring");

        // A backend added meanwhile does not get the draining id.
        let with_14 = ["198.51.100.11", "198.51.100.12", "198.51.100.14"];
        let added = second_chance(&with_14).to_toml();
        // Ids 1..=3 only: .11, .12 and the draining one; .14 would need the latter.
        let tight = second_chance(&with_14).max_backends(4).parse();
        let refused = plan_reusing(&tight, &store.kept().unwrap(), None).unwrap_err();
        assert!(refused.contains("1 previous owners still draining"), "{refused}");
        let (config2, plan2, third) = reload(&mut store, &config, &plan, &second, &added);
        let new_id = plan2.backend_id("198.51.100.14".parse().unwrap()).unwrap();
        assert_ne!(new_id, gone, "ids 1..=4 exist; the draining one is not reused");
        assert!(store.maps().backends.contains_key(&gone));

        // The window passes: the rows clear, and the next reload erases the entry.
        assert!(store.drain_previous(Instant::now()).unwrap().is_empty(), "not yet");
        let drained = store.drain_previous(Instant::now() + Duration::from_secs(10)).unwrap();
        assert_eq!(drained, [web]);
        assert!(store.maps().previous(web, size).iter().flatten().all(|&id| id == NO_BACKEND));
        assert!(store.kept().unwrap().previous_owners.is_empty());
        reload(&mut store, &config2, &plan2, &third, &added);
        assert!(!store.maps().backends.contains_key(&gone), "drained: the entry goes");
    }

    #[test]
    fn a_backend_marked_down_becomes_the_previous_owner_of_its_slots() {
        use crate::health::{checker::{MemberRef, Report}, probe::Outcome};
        let (config, running, store, mut supervisor) = started(second_chance(&ALL_THREE).parse());
        let size = running.ring_size;
        let before = store.maps();
        let vi = config.vips.iter().position(|v| v.name == "web").unwrap();
        let web = running.vip("web").unwrap().row;
        let down = running.backend_id("198.51.100.12".parse().unwrap()).unwrap();
        // One failed check takes it down (fails = 1 by default).
        let report = Report { member: MemberRef { vip: vi, backend: 1 }, outcome: Outcome::Timeout, latency: Duration::from_millis(1) };
        supervisor.apply(&report).unwrap();
        let after = store.maps();
        assert_previous_follows(&before.ring(web, size), &after.ring(web, size), &after.previous(web, size));
        assert!(after.previous(web, size).iter().flatten().all(|&id| id == NO_BACKEND || id == down), "only .12 moved");
        assert!(after.previous(web, size).iter().any(|o| o.contains(&down)));
    }

    #[test]
    fn a_restart_adopting_the_maps_keeps_previous_owners_and_starts_their_window_again() {
        let (before, running, mut store, first) = started(second_chance(&ALL_THREE).parse());
        let without = second_chance(&WITHOUT_13).to_toml();
        reload(&mut store, &before, &running, &first, &without);
        let gone = running.backend_id("198.51.100.13".parse().unwrap()).unwrap();
        let web = running.vip("web").unwrap().row;
        let pinned = store.maps();

        // A new agent: the same maps, a new ledger (nothing known of the times).
        let mut adopted = MemoryStore::new(pinned.clone());
        let restarted = Instant::now();
        assert!(adopted.kept().unwrap().previous_owners.contains(&gone), "read from PREVIOUS");
        let config = parse(&without, "t.toml").unwrap();
        let plan = crate::plan::plan_keeping(&config, &adopted.kept().unwrap()).unwrap();
        apply(&mut adopted, &config, &plan, &resolved(&plan), None).unwrap();
        let end = adopted.maps();
        assert_eq!(end.previous(web, plan.ring_size), pinned.previous(web, plan.ring_size), "kept as pinned");
        assert!(end.backends.contains_key(&gone), "its entry too");
        // The 10 s window counts from the restart.
        assert!(adopted.drain_previous(restarted + Duration::from_secs(9)).unwrap().is_empty());
        assert_eq!(adopted.drain_previous(restarted + Duration::from_secs(11)).unwrap(), [web]);
    }

    #[test]
    fn a_slot_that_changes_twice_names_both_old_owners_newest_first() {
        let (before, running, mut store, first) = started(second_chance(&ALL_THREE).parse());
        let web = running.vip("web").unwrap().row;
        let size = running.ring_size;
        let id = |a: &str| running.backend_id(a.parse().unwrap()).unwrap();
        let (b12, b13) = (id("198.51.100.12"), id("198.51.100.13"));
        let start = store.maps().ring(web, size);
        // .13 goes (its slots move to .11 and .12), then .12 goes.
        let (config, plan, second) = reload(&mut store, &before, &running, &first, &second_chance(&WITHOUT_13).to_toml());
        let middle = store.maps().ring(web, size);
        reload(&mut store, &config, &plan, &second, &second_chance(&["198.51.100.11"]).to_toml());
        let end = store.maps();
        let twice: Vec<usize> = (0..size as usize).filter(|&s| start[s] == b13 && middle[s] == b12).collect();
        assert!(!twice.is_empty(), "some slot went .13 -> .12 -> .11");
        for &s in &twice {
            assert_eq!(end.previous(web, size)[s], [b12, b13], "slot {s}: newest first");
        }
        for (s, owners) in end.previous(web, size).iter().enumerate() {
            assert!(!owners.contains(&end.ring(web, size)[s]), "slot {s}: the owner is never its own previous");
        }
        assert!(store.kept().unwrap().previous_owners.is_superset(&[b12, b13].into()), "both keep their ids");
        let drained = store.drain_previous(Instant::now() + Duration::from_secs(10)).unwrap();
        assert_eq!(drained, [web]);
        assert!(store.maps().previous(web, size).iter().flatten().all(|&id| id == NO_BACKEND), "both depths drained");
    }
}
