//! The health part of `lb-agent stats`: the `HEALTH` map of a running agent
//! (read from its pin), shown per VIP and backend.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::health::{HEALTH_DOWN, HEALTH_UNCHECKED, HEALTH_UP, HealthEntry, HealthKey, HealthReason};
use lb_common::maps;

use crate::config::Config;
use crate::plan::select;
use crate::plan::Plan;

pub(crate) type HealthTable = BTreeMap<HealthKey, HealthEntry>;

/// Reads the `HEALTH` map pinned under `dir` by a running agent.
pub(crate) fn read_pinned(dir: &Path) -> Result<HealthTable> {
    let path = dir.join(maps::HEALTH);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening {} (is `lb-agent run` running with this config's bpffs_dir?)", path.display()))?;
    let map: BpfHashMap<_, HealthKey, HealthEntry> = BpfHashMap::try_from(Map::HashMap(data))?;
    let mut out = HealthTable::new();
    for item in map.iter() {
        let (k, v) = item.context("reading the HEALTH map")?;
        out.insert(k, v);
    }
    Ok(out)
}

pub(crate) fn state_label(state: u8) -> &'static str {
    match state {
        HEALTH_UNCHECKED => "unchecked",
        HEALTH_UP => "up",
        HEALTH_DOWN => "down",
        _ => "unknown",
    }
}

/// The last check's reason; with its status for an unexpected HTTP answer.
pub(crate) fn reason_label(e: &HealthEntry) -> String {
    match HealthReason::from_u8(e.reason) {
        Some(HealthReason::HttpStatus) => format!("http_status {}", e.http_status),
        Some(r) => r.label().to_string(),
        None => format!("unknown ({})", e.reason),
    }
}

/// One VIP (config order): its name, health label and backends. A pair
/// without an entry counts as up.
pub struct VipHealth<'a> {
    pub name: &'a str,
    /// `up`, `degraded`, `backup`, `down`, `down_fail_open`.
    pub health: &'static str,
    pub members: Vec<MemberHealth>,
}

/// A backend as a member of one VIP.
pub struct MemberHealth {
    pub address: std::net::IpAddr,
    pub backup: bool,
    pub entry: Option<HealthEntry>,
    /// Fraction of the VIP's ring slots it owns with the current health
    /// (the supervisor writes exactly this ring: same `select::ring`).
    pub ring_share: f64,
}

impl MemberHealth {
    /// Serving as far as health goes: up, or not checked.
    pub fn is_up(&self) -> bool {
        self.entry.is_none_or(|e| e.state != HEALTH_DOWN)
    }
}

/// What a VIP's ring is for one health state: its tier and how many slots
/// each backend id owns.
#[derive(Debug)]
struct RingShares {
    tier: select::Tier,
    owned: HashMap<u32, u32>,
    slots: u32,
}

impl RingShares {
    fn of(selection: &select::Selection) -> RingShares {
        let mut owned = HashMap::new();
        for &id in &selection.ring {
            *owned.entry(id).or_insert(0) += 1;
        }
        RingShares { tier: selection.tier, owned, slots: selection.ring.len() as u32 }
    }
}

/// Ring shares already computed for one programmed config, by VIP (index in
/// the config) and health state: a metrics scrape then builds no Maglev ring
/// unless health changed since the last one.
#[derive(Debug, Default)]
pub(crate) struct ShareCache(Mutex<HashMap<ShareKey, Arc<RingShares>>>);

/// A VIP's index in the config and which of its backends are up.
type ShareKey = (usize, Vec<bool>);

/// Health states remembered per config at most (flapping makes new ones).
const SHARE_CACHE_ENTRIES: usize = 4096;

impl ShareCache {
    fn get_or_build(&self, vip: usize, up: Vec<bool>, build: impl FnOnce() -> RingShares) -> Arc<RingShares> {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shares) = cache.get(&(vip, up.clone())) {
            return shares.clone();
        }
        if cache.len() >= SHARE_CACHE_ENTRIES {
            cache.clear();
        }
        let shares = Arc::new(build());
        cache.insert((vip, up), shares.clone());
        shares
    }
}

/// The health of every VIP of `config` from a `HEALTH` table. `cache` must
/// belong to this very `config` and `plan` (ring shares are kept in it).
pub(crate) fn vip_health<'a>(config: &'a Config, plan: &Plan, table: &HealthTable, cache: Option<&ShareCache>) -> Vec<VipHealth<'a>> {
    config
        .vips
        .iter()
        .enumerate()
        .filter_map(|(index, v)| {
            let planned = plan.vip(&v.name)?;
            let id_of = |a| plan.backend_id(a).unwrap_or(lb_common::NO_BACKEND);
            let mut members: Vec<MemberHealth> = v
                .backends
                .iter()
                .map(|b| MemberHealth {
                    address: b.address,
                    backup: b.backup,
                    entry: table.get(&HealthKey { row: planned.row, backend_id: id_of(b.address) }).copied(),
                    ring_share: 0.0,
                })
                .collect();
            let up: Vec<bool> = members.iter().map(MemberHealth::is_up).collect();
            let all_up = up.iter().all(|u| *u);
            let build = || RingShares::of(&planned.ring_for(v, plan.ring_size, &id_of, &up));
            let shares = match cache {
                Some(c) => c.get_or_build(index, up.clone(), build),
                None => Arc::new(build()),
            };
            for m in &mut members {
                let owned = shares.owned.get(&id_of(m.address)).copied().unwrap_or(0);
                m.ring_share = f64::from(owned) / f64::from(shares.slots.max(1));
            }
            let selection = &shares;
            let health = match selection.tier {
                select::Tier::Primary if all_up => "up",
                select::Tier::Primary => "degraded",
                select::Tier::Backup => "backup",
                select::Tier::Down => "down",
                select::Tier::FailOpen => "down_fail_open",
            };
            Some(VipHealth { name: &v.name, health, members })
        })
        .collect()
}

/// A text section: one line per VIP, one per backend.
pub(crate) fn to_text(config: &Config, plan: &Plan, table: &HealthTable) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<24} {:<8} {:<28} {:<10} {:>7} {:>9} {:>6} {:>6}  last check",
        "VIP health", "", "backend", "state", "share", "since", "fails", "passes"
    );
    for vh in vip_health(config, plan, table, None) {
        let _ = writeln!(out, "{:<24} {:<8}", vh.name, vh.health);
        for member in &vh.members {
            let (address, role, share) = (member.address, if member.backup { "backup" } else { "" }, member.ring_share * 100.0);
            match member.entry {
                Some(e) => {
                    let since = format!("{:.1}s", now.saturating_sub(e.since_unix_ms) as f64 / 1000.0);
                    let _ = writeln!(
                        out,
                        "{:<24} {:<8} {:<28} {:<10} {:>6.1}% {:>9} {:>6} {:>6}  {}",
                        "",
                        role,
                        address.to_string(),
                        state_label(e.state),
                        share,
                        since,
                        e.consecutive_fails,
                        e.consecutive_passes,
                        reason_label(&e)
                    );
                }
                None => {
                    let _ = writeln!(out, "{:<24} {:<8} {:<28} {:<10} {:>6.1}%", "", role, address.to_string(), "?", share);
                }
            }
        }
    }
    out
}
