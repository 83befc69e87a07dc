//! The health part of `lb-agent stats`: the `HEALTH` map of a running agent
//! (read from its pin), shown per VIP and backend.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::health::{HEALTH_DOWN, HEALTH_UNCHECKED, HEALTH_UP, HealthEntry, HealthKey, HealthReason};
use lb_common::maps;
use serde_json::{Value, json};

use crate::config::Config;
use crate::health::select;
use crate::plan::Plan;

pub type HealthTable = BTreeMap<HealthKey, HealthEntry>;

/// Reads the `HEALTH` map pinned under `dir` by a running agent.
pub fn read_pinned(dir: &Path) -> Result<HealthTable> {
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

fn state_label(state: u8) -> &'static str {
    match state {
        HEALTH_UNCHECKED => "unchecked",
        HEALTH_UP => "up",
        HEALTH_DOWN => "down",
        _ => "unknown",
    }
}

fn reason_label(e: &HealthEntry) -> String {
    match HealthReason::from_u8(e.reason) {
        Some(HealthReason::HttpStatus) => format!("http_status {}", e.http_status),
        Some(r) => r.label().to_string(),
        None => format!("unknown ({})", e.reason),
    }
}

/// Per VIP (config order): its name, health label and per backend
/// (address, backup, entry). A pair without an entry counts as up.
struct VipHealth<'a> {
    name: &'a str,
    health: &'static str,
    members: Vec<(std::net::IpAddr, bool, Option<HealthEntry>)>,
}

fn vip_health<'a>(config: &'a Config, plan: &Plan, table: &HealthTable) -> Vec<VipHealth<'a>> {
    config
        .vips
        .iter()
        .filter_map(|v| {
            let planned = plan.vip(&v.name)?;
            let members: Vec<_> = v
                .backends
                .iter()
                .map(|b| {
                    let id = plan.backend_id(b.address).unwrap_or(lb_common::NO_BACKEND);
                    (b.address, b.backup, table.get(&HealthKey { row: planned.row, backend_id: id }).copied())
                })
                .collect();
            let id_of = |a| plan.backend_id(a).unwrap_or(lb_common::NO_BACKEND);
            let up = |i: usize| members[i].2.is_none_or(|e| e.state != HEALTH_DOWN);
            let tier = select::ring(v, plan.ring_size, &id_of, &up).tier;
            let all_up = (0..members.len()).all(up);
            let health = match tier {
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

/// Adds `health` to each VIP of `stats::to_json`'s output and
/// `backup`, `state`, `reason`, `since_unix_ms`, `fails`, `passes`,
/// `changes`, `http_status` to each of its backends.
pub fn add_to_json(json: &mut Value, config: &Config, plan: &Plan, table: &HealthTable) {
    let Some(vips) = json.get_mut("vips").and_then(Value::as_array_mut) else { return };
    for vh in vip_health(config, plan, table) {
        let Some(v) = vips.iter_mut().find(|v| v["name"] == vh.name) else { continue };
        v["health"] = json!(vh.health);
        let Some(members) = v.get_mut("backends").and_then(Value::as_array_mut) else { continue };
        for (address, backup, entry) in &vh.members {
            let Some(m) = members.iter_mut().find(|m| m["address"] == address.to_string()) else { continue };
            m["backup"] = json!(backup);
            if let Some(e) = entry {
                m["state"] = json!(state_label(e.state));
                m["reason"] = json!(reason_label(e));
                m["since_unix_ms"] = json!(e.since_unix_ms);
                m["fails"] = json!(e.consecutive_fails);
                m["passes"] = json!(e.consecutive_passes);
                m["changes"] = json!(e.changes);
                m["http_status"] = json!(e.http_status);
            }
        }
    }
}

/// A text section: one line per VIP, one per backend.
pub fn to_text(config: &Config, plan: &Plan, table: &HealthTable) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut out = String::new();
    let _ = writeln!(out, "\n{:<24} {:<8} {:<28} {:<10} {:>9} {:>6} {:>6}  last check", "VIP health", "", "backend", "state", "since", "fails", "passes");
    for vh in vip_health(config, plan, table) {
        let _ = writeln!(out, "{:<24} {:<8}", vh.name, vh.health);
        for (address, backup, entry) in &vh.members {
            let role = if *backup { "backup" } else { "" };
            match entry {
                Some(e) => {
                    let since = format!("{:.1}s", now.saturating_sub(e.since_unix_ms) as f64 / 1000.0);
                    let _ = writeln!(
                        out,
                        "{:<24} {:<8} {:<28} {:<10} {:>9} {:>6} {:>6}  {}",
                        "",
                        role,
                        address.to_string(),
                        state_label(e.state),
                        since,
                        e.consecutive_fails,
                        e.consecutive_passes,
                        reason_label(e)
                    );
                }
                None => {
                    let _ = writeln!(out, "{:<24} {:<8} {:<28} {:<10}", "", role, address.to_string(), "?");
                }
            }
        }
    }
    out
}
