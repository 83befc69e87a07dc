//! The config turned into exactly what the dataplane writes: backend ids,
//! VIP rows, keys, flags and Maglev rings. Pure: no kernel, no I/O, so
//! `lb-agent check`, `lb-agent lookup` and the tests see what the kernel sees.
//!
//! Everything here is a function of the config's *content*, never of the
//! order of tables in the file: on a fresh start backend ids follow the
//! sorted backend addresses, VIP rows the sorted (address, port, protocol),
//! and Maglev hashes each backend by its address. Two LB hosts with
//! equivalent configs write identical maps. On a reload or a restart the ids
//! and rows in use are kept ([`plan_keeping`], see [`crate::ids`]): the flow
//! table stores ids.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use lb_common::hash::{flow_hash, source_hash};
use lb_common::{NO_BACKEND, VIP_FLAG_SOURCE_HASH, VipKey, VipMeta, addr_words};

use crate::config::{Config, Encap, FlowState, HashMode, MacAddr, VipConfig};
pub mod fnv;
pub mod previous;
pub mod changes;
pub mod ring_digest;
mod ring_summary;
pub mod select;

pub use ring_summary::RingSummary;
use select::Selection;
use crate::ids::{self, Kept, VipIdentity};

/// What the dataplane is to hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Slots per ring (`RING_SIZE` global).
    pub ring_size: u32,
    /// Flow hash seed (`HASH_SEED` global).
    pub hash_seed: u32,
    /// Every distinct backend address of the config, in address order (ids
    /// from 1; in address order too on a fresh start).
    pub backends: Vec<PlannedBackend>,
    /// Every VIP, by row (rows from 0).
    pub vips: Vec<PlannedVip>,
}

/// One `BACKENDS` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedBackend {
    /// Index in `BACKENDS`, from 1 (0 is [`NO_BACKEND`]).
    pub id: u32,
    pub address: IpAddr,
    /// The config's static next-hop MAC: the one owner of this fact, which
    /// `lb-agent check` prints and `run` programs. Validation makes every
    /// VIP that gives one give the same; one given under any VIP applies to
    /// the backend under all.
    pub mac: Option<MacAddr>,
}

/// One VIP: its `VIPS` entry and its row of `RINGS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedVip {
    pub name: String,
    /// Row in `RINGS` and row of `MEMBER_STATS`, from 0 (in (address, port,
    /// protocol) order on a fresh start).
    pub row: u32,
    pub key: VipKey,
    pub meta: VipMeta,
    /// The ring with every backend up (`ring_size` backend ids;
    /// [`NO_BACKEND`] only if no backend has weight) and its tier. `None`
    /// for an [`unchanged`](Self::unchanged) VIP, and once
    /// [`Plan::forget_rings`] dropped it: the agent keeps no copy of what the
    /// kernel's `RINGS` map holds.
    pub all_up: Option<Selection>,
    /// Unchanged since the plan a reload replaces ([`Previous`]): same
    /// config, row, members and ring size. The kernel holds its ring, members
    /// and health entries already, and the health supervisor carries the
    /// VIP's state over. The one place this is decided.
    pub unchanged: bool,
    /// [`crate::summary::RingSummary::digest`] of the all-up ring (kept
    /// when the ring is dropped: the config fingerprint includes it).
    pub ring_digest: u64,
    /// (backend id, weight) of every configured backend, drained ones
    /// included, sorted by id.
    pub members: Vec<(u32, u32)>,
    /// Slots of the all-up ring each of `members` owns (same order).
    pub slots: Vec<u32>,
}

impl PlannedVip {
    /// The all-up ring. Panics after [`Plan::forget_rings`].
    pub fn ring(&self) -> &[u32] {
        &self.all_up.as_ref().expect("the plan's rings were dropped (Plan::forget_rings)").ring
    }

    /// The VIP's address.
    pub fn address(&self) -> IpAddr {
        self.identity().address
    }

    /// The VIP's port (host order; 0 = every port).
    pub fn port(&self) -> u16 {
        self.identity().port
    }
}

impl Plan {
    /// Drops the rings (what a running agent keeps would otherwise include a
    /// copy of every ring; the kernel's `RINGS` map is the one that counts).
    pub fn forget_rings(&mut self) {
        for v in &mut self.vips {
            v.all_up = None;
        }
    }

    /// The backend with this id.
    pub fn backend(&self, id: u32) -> Option<&PlannedBackend> {
        self.backends.iter().find(|b| b.id == id)
    }

    /// The id of the backend with this address.
    pub fn backend_id(&self, address: IpAddr) -> Option<u32> {
        self.backends.binary_search_by(|b| b.address.cmp(&address)).ok().map(|i| self.backends[i].id)
    }

    /// The VIP with this name.
    pub fn vip(&self, name: &str) -> Option<&PlannedVip> {
        self.vips.iter().find(|v| v.name == name)
    }

    /// The ids and rows of this plan, for the next one to keep.
    pub fn kept(&self) -> Kept {
        Kept {
            backend_ids: self.backends.iter().map(|b| (b.address, b.id)).collect(),
            vip_rows: self.vips.iter().map(|v| (v.identity(), v.row)).collect(),
            // The maps know them, not the plan (`MapStore::kept`).
            previous_owners: BTreeSet::new(),
        }
    }
}

impl PlannedVip {
    /// The ring of VIP `v` (this one's config) when backend `i` is up iff
    /// `up[i]`: the plan's all-up ring when every backend is up and the plan
    /// kept it (it is [`select::ring`] with every backend up), else a new one.
    pub fn ring_for(&self, v: &VipConfig, ring_size: u32, id_of: &dyn Fn(IpAddr) -> u32, up: &[bool]) -> Cow<'_, Selection> {
        match self.all_up.as_ref().filter(|_| up.iter().all(|u| *u)) {
            Some(selection) => Cow::Borrowed(selection),
            None => Cow::Owned(select::ring(v, ring_size, id_of, &|i| up[i])),
        }
    }

    /// What identifies the VIP across reloads: the identity its key was built from.
    pub fn identity(&self) -> VipIdentity {
        VipIdentity::of_key(&self.key).expect("VipKey built from an IpAddr")
    }
}

/// Builds the plan of a validated config on a fresh start.
pub fn plan(config: &Config) -> Plan {
    build(config, &Kept::default(), None, Rings::Keep).expect("a validated config fits its own max_vips and max_backends")
}

/// [`plan`] without rings (every `all_up` is `None`): each VIP's ring is
/// dropped as soon as its digest and slot counts are taken, so at most one
/// ring per worker thread is alive at a time. What `lb-agent check` needs,
/// in a few MiB whatever the number of VIPs (keeping every ring took 1.1 GB
/// at 4,096 VIPs).
pub fn plan_summary(config: &Config) -> Plan {
    build(config, &Kept::default(), None, Rings::Summarize).expect("a validated config fits its own max_vips and max_backends")
}

/// Whether a plan keeps the rings it builds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rings {
    /// Kept, for the dataplane to write.
    Keep,
    /// Only summarized ([`crate::summary::RingSummary`]), on as many
    /// threads as [`summary_threads`] allows.
    Summarize,
}

/// Ring bytes [`plan_summary`] may have in flight over all its threads
/// (each thread holds one ring, and about as much scratch, at a time): four
/// rings of the default size; a single ring when rings are bigger than that.
const SUMMARY_RING_BUDGET: u64 = 4 * 4 * lb_common::limits::DEFAULT_RING_SIZE as u64;

/// Threads [`plan_summary`] builds rings on: its memory then stays within
/// [`SUMMARY_RING_BUDGET`] (or one ring) whatever the machine's CPU count.
fn summary_threads(ring_size: u32) -> usize {
    (SUMMARY_RING_BUDGET / (u64::from(ring_size) * 4)).max(1) as usize
}

/// The config and plan a reload replaces: a VIP whose config, row and
/// backend ids are unchanged needs no new ring (most of a reload's cost),
/// so a reload costs what it changes.
#[derive(Clone, Copy)]
pub struct Previous<'a> {
    pub config: &'a Config,
    pub plan: &'a Plan,
}

/// Builds the plan of a validated config keeping the ids and rows of `kept`
/// (the running dataplane's). Fails only if the new ids or rows do not fit
/// `max_backends` / `max_vips`.
pub fn plan_keeping(config: &Config, kept: &Kept) -> Result<Plan, String> {
    build(config, kept, None, Rings::Keep)
}

/// [`plan_keeping`] for a reload: VIPs unchanged since `previous` get no
/// ring (`all_up` is `None`) and keep their ring digest.
pub fn plan_reusing(config: &Config, kept: &Kept, previous: Option<Previous<'_>>) -> Result<Plan, String> {
    build(config, kept, previous, Rings::Keep)
}

fn build(config: &Config, kept: &Kept, previous: Option<Previous<'_>>, rings: Rings) -> Result<Plan, String> {
    let ring_size = config.lb.ring_size;

    let identities: BTreeSet<VipIdentity> = config.vips.iter().map(VipConfig::identity).collect();
    let rows = ids::allocate(&identities, &kept.vip_rows, 0..config.lb.max_vips)
        .ok_or_else(|| format!("{} VIPs do not fit lb.max_vips = {}", identities.len(), config.lb.max_vips))?;
    let row_of = |v: &VipConfig| rows[&v.identity()];
    let mut vips: Vec<_> = config.vips.iter().collect();
    vips.sort_by_key(|v| row_of(v));

    // Ids in address order; the MAC any VIP gives (validation made them agree).
    let mut macs: BTreeMap<IpAddr, Option<MacAddr>> = BTreeMap::new();
    for v in &vips {
        for b in &v.backends {
            let e = macs.entry(b.address).or_insert(None);
            *e = e.or(b.mac);
        }
    }
    let addresses: BTreeSet<IpAddr> = macs.keys().copied().collect();
    // A previous owner's id stays its own until its slots drain.
    let backend_ids = ids::allocate_reserving(&addresses, &kept.backend_ids, 1..config.lb.max_backends, &kept.previous_owners).ok_or_else(|| {
        let draining = kept.previous_owners.iter().filter(|id| !kept.backend_ids.iter().any(|(a, i)| i == *id && addresses.contains(a))).count();
        format!(
            "{} backends and {draining} previous owners still draining do not fit lb.max_backends = {} (id 0 is reserved); \
             raise max_backends (a full restart) or reload once the previous_owner_window has passed",
            addresses.len(),
            config.lb.max_backends
        )
    })?;
    let backends: Vec<PlannedBackend> =
        macs.into_iter().map(|(address, mac)| PlannedBackend { id: backend_ids[&address], address, mac }).collect();
    let id_of = |a: IpAddr| backends[backends.binary_search_by(|b| b.address.cmp(&a)).expect("every backend has an id")].id;

    // The previous ring's summary of a VIP unchanged since `previous`.
    let unchanged = |v: &VipConfig, members: &[(u32, u32)]| -> Option<RingSummary> {
        let p = previous?;
        let old = p.plan.vip(&v.name)?;
        let same = p.plan.ring_size == ring_size
            && old.row == row_of(v)
            && old.members == members
            && p.config.vips.iter().any(|o| o.name == v.name && o == v);
        same.then(|| RingSummary { digest: old.ring_digest, slots: old.slots.clone() })
    };
    // Every backend up: the primaries' ring (backups serve only without
    // them). The Maglev builds are most of a plan's cost, so they run on
    // every CPU.
    let threads = if rings == Rings::Summarize { summary_threads(ring_size) } else { usize::MAX };
    let built = parallel_map(&vips, threads, |v| {
        let mut members: Vec<(u32, u32)> = v.backends.iter().map(|b| (id_of(b.address), b.weight)).collect();
        members.sort_unstable();
        if let Some(summary) = unchanged(v, &members) {
            return (members, None, summary, true);
        }
        let all_up = select::ring(v, ring_size, &id_of, &|_| true);
        let summary = RingSummary::of(&all_up.ring, &members);
        let kept = (rings == Rings::Keep).then_some(all_up);
        (members, kept, summary, false)
    });
    let planned = vips
        .iter()
        .zip(built)
        .map(|(v, (members, all_up, RingSummary { digest: ring_digest, slots }, unchanged))| {
            let row = row_of(v);
            let flags = match v.hash {
                HashMode::Flow => 0,
                HashMode::Source => VIP_FLAG_SOURCE_HASH,
            } | crate::config::packets::fragment_flags(v.fragments)
                | flow_flags(v.flow_state, v.encap);
            PlannedVip {
                name: v.name.clone(),
                row,
                key: v.identity().key(),
                meta: VipMeta { row, flags },
                all_up,
                unchanged,
                ring_digest,
                members,
                slots,
            }
        })
        .collect();

    Ok(Plan { ring_size, hash_seed: config.lb.hash_seed, backends, vips: planned })
}

/// The VIP flag bits of where its flow state lives and how it is encapsulated.
fn flow_flags(state: FlowState, encap: Encap) -> u32 {
    use lb_common::second_chance::{VIP_FLAG_GUE, VIP_FLAG_SECOND_CHANCE};
    let state = match state {
        FlowState::Lb => 0,
        FlowState::None => lb_common::flows::VIP_FLAG_STATELESS,
        FlowState::Backend => VIP_FLAG_SECOND_CHANCE,
    };
    state | if encap == Encap::Gue { VIP_FLAG_GUE } else { 0 }
}

/// `f` over `items` on up to one thread per CPU (at most `max_threads`),
/// results in `items`' order.
fn parallel_map<T: Sync, R: Send>(items: &[T], max_threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(max_threads).min(items.len().max(1));
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = items.chunks(chunk).map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("a ring build panicked")).collect()
    })
}

/// The VIP the kernel matches for a packet to (`addr`, `port`, `proto`): the
/// exact port first, then the VIP with port 0.
pub fn find_vip(plan: &Plan, addr: IpAddr, port: u16, proto: u8) -> Option<&PlannedVip> {
    let exact = VipKey::new(addr, port, proto);
    let any = VipKey::new(addr, 0, proto);
    plan.vips.iter().find(|v| v.key == exact).or_else(|| plan.vips.iter().find(|v| v.key == any))
}

/// The slot of `vip`'s ring the kernel reads for a packet from `src`:`src_port`
/// to the VIP's address, port `dst_port` (the packet's port, which for a
/// port-0 VIP is not the VIP's).
pub fn slot(plan: &Plan, vip: &PlannedVip, src: IpAddr, src_port: u16, dst_port: u16) -> Option<u32> {
    let (src_words, family) = addr_words(src);
    if family != vip.key.family || plan.ring_size == 0 {
        // The kernel never sees such a packet: a VIP matches its own family only.
        return None;
    }
    let hash = if vip.meta.flags & VIP_FLAG_SOURCE_HASH != 0 {
        source_hash(plan.hash_seed, family, &src_words)
    } else {
        flow_hash(plan.hash_seed, family, &src_words, &vip.key.addr, src_port.to_be(), dst_port.to_be(), vip.key.proto)
    };
    Some(hash % plan.ring_size)
}

/// The backend id the kernel picks for a new flow (before its flow table
/// remembers it); [`NO_BACKEND`] if the ring slot is empty or `src` is not of
/// the VIP's family.
pub fn lookup(plan: &Plan, vip: &PlannedVip, src: IpAddr, src_port: u16, dst_port: u16) -> u32 {
    slot(plan, vip, src, src_port, dst_port).and_then(|s| vip.ring().get(s as usize).copied()).unwrap_or(NO_BACKEND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::test_config::{TestBackend, TestConfig, TestVip};
    use std::net::Ipv4Addr;

    /// Three VIPs on four backends (an IPv6 one with a static MAC, a drained
    /// one); `reordered` lists the VIPs, and each VIP's backends, backwards.
    fn a_config(reordered: bool) -> TestConfig {
        let vip = |vip: TestVip, mut backends: Vec<TestBackend>| {
            if reordered {
                backends.reverse();
            }
            backends.into_iter().fold(vip, TestVip::backend)
        };
        let b = TestBackend::new;
        let mut vips = vec![
            vip(TestVip::new("web", "192.0.2.10:80"), vec![b("198.51.100.11"), b("198.51.100.12").weight(2), b("2001:db8::13").mac("02:00:00:00:00:13")]),
            vip(TestVip::new("dns", "192.0.2.10:53/udp").set("hash", "source"), vec![b("198.51.100.12"), b("198.51.100.14").weight(0), b("198.51.100.11")]),
            vip(TestVip::new("any6", "[2001:db8:f::10]:0"), vec![b("2001:db8::13")]),
        ];
        if reordered {
            vips.reverse();
        }
        vips.into_iter().fold(TestConfig::new().ring_size(4099).hash_seed(7), TestConfig::vip)
    }

    /// [`a_config`] as text, for the tests that edit it.
    fn a_text() -> String {
        a_config(false).to_toml()
    }

    fn rings_as_addresses(p: &Plan) -> Vec<(String, u32, Vec<Option<IpAddr>>)> {
        p.vips.iter().map(|v| (v.name.clone(), v.row, v.ring().iter().map(|&id| p.backend(id).map(|b| b.address)).collect())).collect()
    }

    #[test]
    fn stable_under_reordering() {
        let a = plan(&a_config(false).parse());
        let b = plan(&a_config(true).parse());
        assert_eq!(rings_as_addresses(&a), rings_as_addresses(&b));
        // In fact the whole plan is identical: ids and rows too.
        assert_eq!(a, b);
    }

    #[test]
    fn a_summary_plan_keeps_no_ring_and_says_the_same() {
        let c = a_config(false).parse();
        let full = plan(&c);
        for v in &full.vips {
            let counted: Vec<u32> =
                v.members.iter().map(|&(id, _)| v.ring().iter().filter(|&&slot| slot == id).count() as u32).collect();
            assert_eq!(v.slots, counted, "{}: slots are the ring's", v.name);
        }
        let summary = plan_summary(&c);
        assert!(summary.vips.iter().all(|v| v.all_up.is_none()), "no ring kept");
        let mut without_rings = full.clone();
        without_rings.forget_rings();
        assert_eq!(summary, without_rings, "the same ids, rows, digests and slots");
        assert_eq!(crate::summary::fingerprint(&c, &summary), crate::summary::fingerprint(&c, &full));
        // Its rings in flight stay within the budget whatever the CPU count.
        use lb_common::limits::{DEFAULT_RING_SIZE, MAX_RING_SIZE};
        assert_eq!((summary_threads(DEFAULT_RING_SIZE), summary_threads(MAX_RING_SIZE)), (4, 1));
        assert!(summary_threads(1009) > 100, "small rings: every CPU");
    }

    #[test]
    fn a_reload_builds_rings_only_for_changed_vips() {
        let old_config = a_config(false).parse();
        let mut old = plan(&old_config);
        old.forget_rings(); // as the running agent keeps it
        let text = a_text().replace("  address = \"198.51.100.12\"\n  weight = 2", "  address = \"198.51.100.12\"\n  weight = 3");
        let new_config = parse(&text, "a.toml").unwrap();
        let previous = Previous { config: &old_config, plan: &old };
        let reused = plan_reusing(&new_config, &old.kept(), Some(previous)).unwrap();
        let fresh = plan(&new_config);
        for v in &reused.vips {
            let changed = v.name == "web";
            assert_eq!(v.all_up.is_some(), changed, "{}: a ring only if changed", v.name);
            let f = fresh.vip(&v.name).unwrap();
            assert_eq!((v.row, v.ring_digest, &v.members), (f.row, f.ring_digest, &f.members), "{}", v.name);
        }
        assert_eq!(crate::summary::fingerprint(&new_config, &reused), crate::summary::fingerprint(&new_config, &fresh));
        // A VIP that moved to another row (here: every row, after a VIP is
        // inserted before them) is not reused: its ring must be written there.
        let first = a_config(false).vip(TestVip::new("first", "192.0.2.1:1").backends(["198.51.100.11"]));
        let shifted = plan_reusing(&first.parse(), &Kept::default(), Some(previous)).unwrap();
        assert!(shifted.vips.iter().all(|v| v.all_up.is_some()), "new rows: every ring built");
    }

    #[test]
    fn a_vip_changed_only_in_a_health_field_is_not_unchanged() {
        let old_config = a_config(false).parse();
        let mut old = plan(&old_config);
        old.forget_rings();
        let previous = Previous { config: &old_config, plan: &old };
        let same = plan_reusing(&old_config, &old.kept(), Some(previous)).unwrap();
        assert!(same.vips.iter().all(|v| v.unchanged && v.all_up.is_none()), "the same config: every VIP unchanged");
        // A health table on "any6" only: same row, members and ring, another config.
        let text = a_text().replace("port = 0\n", "port = 0\n  [vip.health]\n  interval = \"2s\"\n  port = 8080\n");
        let new_config = parse(&text, "a.toml").unwrap();
        assert_ne!(new_config.vips[2].backends[0].check, old_config.vips[2].backends[0].check);
        let reused = plan_reusing(&new_config, &old.kept(), Some(previous)).unwrap();
        for v in &reused.vips {
            let changed = v.name == "any6";
            assert_eq!((v.unchanged, v.all_up.is_some()), (!changed, changed), "{}", v.name);
        }
        assert_eq!(reused.vip("any6").unwrap().members, old.vip("any6").unwrap().members, "only the health field differs");
        // Without a previous plan nothing is unchanged.
        assert!(plan_reusing(&old_config, &old.kept(), None).unwrap().vips.iter().all(|v| !v.unchanged));
    }

    #[test]
    fn a_vip_is_identified_alike_by_its_config_its_plan_and_its_key() {
        let (a, b) = (a_config(false).parse(), a_config(true).parse());
        let p = plan(&a);
        for v in &a.vips {
            let planned = p.vip(&v.name).unwrap();
            assert_eq!(planned.identity(), v.identity(), "{}", v.name);
            assert_eq!(planned.key, v.identity().key(), "{}", v.name);
            let reordered = b.vips.iter().find(|o| o.name == v.name).unwrap();
            assert_eq!(reordered.identity(), v.identity(), "{}: the order of fields and tables does not matter", v.name);
        }
        let identities: Vec<VipIdentity> = p.vips.iter().map(PlannedVip::identity).collect();
        assert!(identities.is_sorted(), "fresh rows follow the identities: {identities:?}");
        assert_eq!(p.kept().vip_rows.keys().copied().collect::<Vec<_>>(), identities);
    }

    #[test]
    fn ring_for_reuses_the_all_up_ring_only_when_every_backend_is_up() {
        let c = a_config(false).parse();
        let p = plan(&c);
        let id_of = |a| p.backend_id(a).unwrap_or(NO_BACKEND);
        let (v, planned) = (&c.vips[0], p.vip("web").unwrap());
        let all_up = planned.ring_for(v, p.ring_size, &id_of, &[true, true, true]);
        assert!(matches!(all_up, Cow::Borrowed(_)), "the plan's ring, not a new build");
        assert_eq!(*all_up, select::ring(v, p.ring_size, &id_of, &|_| true));
        let one_down = planned.ring_for(v, p.ring_size, &id_of, &[true, false, true]);
        assert_eq!(*one_down, select::ring(v, p.ring_size, &id_of, &|i| i != 1));
        assert!(!one_down.ring.contains(&2), "198.51.100.12 (id 2) is down");
        let mut forgotten = p.clone();
        forgotten.forget_rings();
        let rebuilt = forgotten.vip("web").unwrap().ring_for(v, p.ring_size, &id_of, &[true, true, true]);
        assert_eq!((matches!(rebuilt, Cow::Owned(_)), &*rebuilt), (true, &*all_up), "without the plan's ring: the same, built");
    }

    #[test]
    fn ids_rows_keys_and_flags() {
        let p = plan(&a_config(false).parse());
        let addrs: Vec<String> = p.backends.iter().map(|b| b.address.to_string()).collect();
        assert_eq!(addrs, ["198.51.100.11", "198.51.100.12", "198.51.100.14", "2001:db8::13"]);
        assert_eq!(p.backends.iter().map(|b| b.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(p.backends[3].mac.unwrap().to_string(), "02:00:00:00:00:13");
        // Rows: (192.0.2.10, 53), (192.0.2.10, 80), (2001:db8:f::10, 0).
        let names: Vec<&str> = p.vips.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["dns", "web", "any6"]);
        for (i, v) in p.vips.iter().enumerate() {
            assert_eq!((v.row, v.meta.row), (i as u32, i as u32));
            assert_eq!(v.ring().len(), 4099);
            assert!(v.ring().iter().all(|&id| id != NO_BACKEND));
        }
        let dns = p.vip("dns").unwrap();
        assert_eq!(dns.meta.flags, VIP_FLAG_SOURCE_HASH);
        assert_eq!(dns.key, VipKey::new("192.0.2.10".parse().unwrap(), 53, lb_common::PROTO_UDP));
        assert_eq!(dns.members, [(1, 1), (2, 1), (3, 0)]);
        assert!(!dns.ring().contains(&3), "drained backend owns no slot");
        assert_eq!(p.vip("web").unwrap().meta.flags, 0);
        assert_eq!(p.vip("any6").unwrap().port(), 0);
        assert_eq!(p.backend_id("2001:db8::13".parse().unwrap()), Some(4));
    }

    #[test]
    fn reloads_keep_ids_and_rows() {
        let before = plan(&a_config(false).parse());
        // 198.51.100.11 leaves, 198.51.100.10 (sorting first) arrives, VIP dns leaves, a VIP arrives.
        let text = a_text().replace("198.51.100.11", "198.51.100.10").replace("name = \"dns\"", "name = \"dns2\"").replace("port = 53", "port = 54");
        let after = plan_keeping(&parse(&text, "a.toml").unwrap(), &before.kept()).unwrap();
        for address in ["198.51.100.12", "198.51.100.14", "2001:db8::13"] {
            let a: IpAddr = address.parse().unwrap();
            assert_eq!(after.backend_id(a), before.backend_id(a), "{address} keeps its id");
        }
        assert_eq!(after.backend_id("198.51.100.10".parse().unwrap()), Some(5), "a new backend takes an id never used");
        for name in ["web", "any6"] {
            assert_eq!(after.vip(name).unwrap().row, before.vip(name).unwrap().row, "{name} keeps its row");
        }
        assert_eq!(after.vip("dns2").unwrap().row, 3, "a new VIP takes a row never used");
        // The rings, as addresses, are what a fresh start would build.
        let fresh = plan(&parse(&text, "a.toml").unwrap());
        let by_name = |p: &Plan| {
            let mut v = rings_as_addresses(p).into_iter().map(|(n, _, r)| (n, r)).collect::<Vec<_>>();
            v.sort();
            v
        };
        assert_eq!(by_name(&after), by_name(&fresh));
    }

    #[test]
    fn stateless_vips_are_flagged() {
        let text = a_text().replace("hash = \"source\"", "hash = \"source\"\nflow_table = false");
        let p = plan(&parse(&text, "a.toml").unwrap());
        assert_eq!(p.vip("dns").unwrap().meta.flags, VIP_FLAG_SOURCE_HASH | lb_common::flows::VIP_FLAG_STATELESS);
        assert_eq!(p.vip("web").unwrap().meta.flags, 0);
    }

    #[test]
    fn backend_state_vips_are_flagged_second_chance_and_gue() {
        use lb_common::second_chance::{VIP_FLAG_GUE, VIP_FLAG_SECOND_CHANCE};
        let text = a_text().replace("hash = \"source\"", "hash = \"source\"\nflow_state = \"backend\"");
        let p = plan(&parse(&text, "a.toml").unwrap());
        assert_eq!(p.vip("dns").unwrap().meta.flags, VIP_FLAG_SOURCE_HASH | VIP_FLAG_SECOND_CHANCE | VIP_FLAG_GUE);
        let gue = a_text().replace("interface = \"eth0\"", "interface = \"eth0\"\nencap = \"gue\"");
        let p = plan(&parse(&gue, "a.toml").unwrap());
        assert_eq!(p.vip("web").unwrap().meta.flags, VIP_FLAG_GUE, "GUE alone: the flow table stays");
    }

    #[test]
    fn find_vip_prefers_exact_port() {
        let p = plan(&a_config(false).parse());
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        let v6: IpAddr = "2001:db8:f::10".parse().unwrap();
        assert_eq!(find_vip(&p, v4, 80, lb_common::PROTO_TCP).unwrap().name, "web");
        assert_eq!(find_vip(&p, v4, 53, lb_common::PROTO_UDP).unwrap().name, "dns");
        assert!(find_vip(&p, v4, 53, lb_common::PROTO_TCP).is_none());
        assert!(find_vip(&p, v4, 443, lb_common::PROTO_TCP).is_none());
        assert_eq!(find_vip(&p, v6, 443, lb_common::PROTO_TCP).unwrap().name, "any6");
        assert!(find_vip(&p, v6, 443, lb_common::PROTO_UDP).is_none());
    }

    #[test]
    fn lookup_matches_the_kernel_formula_and_spreads() {
        let p = plan(&a_config(false).parse());
        let web = p.vip("web").unwrap();
        let mut counts = BTreeMap::new();
        for i in 0..10_000u32 {
            let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7));
            let sport = 1024 + (i % 50_000) as u16;
            let id = lookup(&p, web, src, sport, 80);
            assert_eq!(id, lookup(&p, web, src, sport, 80), "deterministic");
            // The kernel's computation, restated.
            let (s, f) = addr_words(src);
            let h = flow_hash(7, f, &s, &web.key.addr, sport.to_be(), 80u16.to_be(), lb_common::PROTO_TCP);
            assert_eq!(id, web.ring()[(h % 4099) as usize]);
            *counts.entry(id).or_insert(0u32) += 1;
        }
        // Weights 1:2:1 over ids 1, 2, 4.
        assert_eq!(counts.keys().copied().collect::<Vec<_>>(), [1, 2, 4]);
        for (id, share) in [(1, 0.25), (2, 0.5), (4, 0.25)] {
            let got = f64::from(counts[&id]) / 10_000.0;
            assert!((got - share).abs() < 0.03, "backend {id}: {got} vs {share}; {counts:?}");
        }
        // A v6 source cannot reach a v4 VIP.
        assert_eq!(lookup(&p, web, "2001:db8::1".parse().unwrap(), 1, 80), NO_BACKEND);
    }

    #[test]
    fn source_hash_ignores_ports() {
        let p = plan(&a_config(false).parse());
        let dns = p.vip("dns").unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1000u32 {
            let src = IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i));
            let id = lookup(&p, dns, src, 1000, 53);
            for port in [1, 2, 40_000, 65_535] {
                assert_eq!(lookup(&p, dns, src, port, 53), id);
            }
            seen.insert(id);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 2]);
    }
}
