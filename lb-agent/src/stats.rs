//! `lb-agent stats`: the counters of a running agent, named after the config.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use lb_common::{flows::FlowEvent, second_chance::VIP_FLAG_SECOND_CHANCE, Counter, Reason};
use serde::Serialize;

use crate::health::report::{self, MemberHealth, VipHealth};
use crate::{dataplane::Counters, plan::Plan, rates::{Rate, Rates}};

/// The `stats --json` document. `Display` prints it as JSON on one line.
///
/// Backend counters are per backend address, summed over the VIPs that
/// share it. [`StatsJson::add_health`] and [`StatsJson::add_rates`] add the
/// optional parts (`None` fields are left out).
#[derive(Serialize)]
pub struct StatsJson<'a> {
    /// The window of the rates, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<f64>,
    pub vips: Vec<VipJson<'a>>,
    pub backends: Vec<BackendJson>,
    /// Every packet outcome by its label.
    pub reasons: BTreeMap<&'static str, CountJson>,
    /// What the flow table did, by label (`hit`, `miss`, `rehash`,
    /// `non_syn_miss`: a part of `miss`, established TCP flows it had lost).
    pub flows: BTreeMap<&'static str, CountJson>,
}

/// A VIP: its identity, counters, rates, health and members.
#[derive(Serialize)]
pub struct VipJson<'a> {
    pub name: &'a str,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    #[serde(flatten)]
    pub count: CountJson,
    #[serde(flatten)]
    pub rate: Option<Rate>,
    /// `up`, `degraded`, `backup`, `down`, `down_fail_open`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<&'static str>,
    pub backends: Vec<MemberJson>,
    /// A `flow_state = "backend"` VIP's ring slots that have a previous
    /// owner (see [`StatsJson::add_previous`]); absent for other VIPs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_owner_slots: Option<u32>,
    /// The VIP's row in the kernel's maps: where its rates are.
    #[serde(skip)]
    row: u32,
}

/// A backend as a member of one VIP, with what the VIP sent it.
#[derive(Serialize)]
pub struct MemberJson {
    pub address: IpAddr,
    pub weight: u32,
    #[serde(flatten)]
    pub count: CountJson,
    #[serde(flatten)]
    pub health: Option<MemberHealthJson>,
}

/// A member's health: its role, its share of the VIP's ring (0..=1) with the
/// current health, and its last check if it has been checked.
#[derive(Serialize)]
pub struct MemberHealthJson {
    pub backup: bool,
    pub share: f64,
    #[serde(flatten)]
    pub check: Option<CheckJson>,
}

/// A member's entry in the `HEALTH` map.
#[derive(Serialize)]
pub struct CheckJson {
    /// `unchecked`, `up`, `down`.
    pub state: &'static str,
    /// Why, from the last check (`passed`, `timeout`, `http_status 503`, ...).
    pub reason: String,
    pub since_unix_ms: u64,
    pub fails: u32,
    pub passes: u32,
    pub changes: u32,
    pub http_status: u16,
}

/// A backend address, counted over all the VIPs that share it.
#[derive(Serialize)]
pub struct BackendJson {
    pub address: IpAddr,
    #[serde(flatten)]
    pub count: CountJson,
    #[serde(flatten)]
    pub rate: Option<Rate>,
    /// The backend's id in the kernel's maps: where its rates are.
    #[serde(skip)]
    id: u32,
}

/// Packets and bytes.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountJson {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for CountJson {
    fn from(Counter { packets, bytes }: Counter) -> Self {
        CountJson { packets, bytes }
    }
}

impl fmt::Display for StatsJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Cannot fail: every map key is a string.
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

/// The counters of `plan`'s VIPs and backends, every outcome and the flow table.
pub fn to_json<'a>(plan: &'a Plan, counters: &Counters) -> StatsJson<'a> {
    let vips = plan
        .vips
        .iter()
        .map(|vip| VipJson {
            name: &vip.name,
            address: vip.address(),
            port: vip.port(),
            protocol: protocol_name(vip.key.proto),
            count: counters.vips.get(vip.row as usize).copied().unwrap_or_default().into(),
            rate: None,
            health: None,
            backends: vip
                .members
                .iter()
                .filter_map(|&(id, weight)| {
                    let count = counters.member(vip.row, id).into();
                    plan.backend(id).map(|b| MemberJson { address: b.address, weight, count, health: None })
                })
                .collect(),
            previous_owner_slots: None,
            row: vip.row,
        })
        .collect();
    let backends = plan
        .backends
        .iter()
        .map(|b| BackendJson {
            address: b.address,
            count: counters.backends.get(b.id as usize).copied().unwrap_or_default().into(),
            rate: None,
            id: b.id,
        })
        .collect();
    StatsJson {
        window_seconds: None,
        vips,
        backends,
        reasons: Reason::ALL.iter().map(|r| (r.label(), counters.reason(*r).into())).collect(),
        flows: FlowEvent::COUNTERS.iter().map(|e| (e.label(), counters.flow_event(*e).into())).collect(),
    }
}

impl StatsJson<'_> {
    /// Adds each VIP's health, and each member's role, ring share and last
    /// check (found by VIP name and member address, through indexes: 10,000
    /// members stay linear).
    pub fn add_health(&mut self, health: &[VipHealth<'_>]) {
        let by_name: HashMap<&str, &VipHealth> = health.iter().map(|vh| (vh.name, vh)).collect();
        for vip in &mut self.vips {
            let Some(vh) = by_name.get(vip.name) else { continue };
            vip.health = Some(vh.health);
            let by_address: HashMap<IpAddr, &MemberHealth> = vh.members.iter().map(|m| (m.address, m)).collect();
            for member in &mut vip.backends {
                let Some(m) = by_address.get(&member.address) else { continue };
                member.health = Some(MemberHealthJson {
                    backup: m.backup,
                    share: m.ring_share,
                    check: m.entry.map(|e| CheckJson {
                        state: report::state_label(e.state),
                        reason: report::reason_label(&e),
                        since_unix_ms: e.since_unix_ms,
                        fails: e.consecutive_fails,
                        passes: e.consecutive_passes,
                        changes: e.changes,
                        http_status: e.http_status,
                    }),
                });
            }
        }
    }

    /// Adds each second-chance VIP's slots with a previous owner (`counts`
    /// by ring row, see `dataplane::previous::slots_with_previous_owner`).
    pub fn add_previous(&mut self, plan: &Plan, counts: &BTreeMap<u32, u32>) {
        for vip in &mut self.vips {
            let second_chance = plan.vip(vip.name).is_some_and(|v| v.meta.flags & VIP_FLAG_SECOND_CHANCE != 0);
            if second_chance {
                vip.previous_owner_slots = Some(counts.get(&vip.row).copied().unwrap_or(0));
            }
        }
    }

    /// Adds the window, and packets and bytes per second to each VIP and backend.
    pub fn add_rates(&mut self, rates: &Rates) {
        self.window_seconds = Some(rates.window.as_secs_f64());
        for vip in &mut self.vips {
            vip.rate = Some(rates.vip(vip.row));
        }
        for backend in &mut self.backends {
            backend.rate = Some(rates.backend(backend.id));
        }
    }
}

/// Packets/s and bytes/s columns, blank without a window.
fn rate_columns(rate: Option<crate::rates::Rate>) -> String {
    match rate {
        Some(r) => format!("{:>10.1} {:>12.1}", r.packets_per_second, r.bytes_per_second),
        None => format!("{:>10} {:>12}", "-", "-"),
    }
}

/// A human table: VIPs with their members, then backends (counted over all
/// the VIPs that share them), then every packet outcome; with `rates`, the
/// packets/s and bytes/s over their window.
pub fn to_text(plan: &Plan, counters: &Counters, rates: Option<&Rates>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<28} {:>12} {:>14} {:>10} {:>12}  backends (weight)",
        "VIP", "address", "packets", "bytes", "packets/s", "bytes/s"
    );
    for vip in &plan.vips {
        let c = counters.vips.get(vip.row as usize).copied().unwrap_or_default();
        let members: Vec<String> = vip
            .members
            .iter()
            .filter_map(|(id, weight)| plan.backend(*id).map(|b| format!("{} ({weight})", b.address)))
            .collect();
        let _ = writeln!(
            out,
            "{:<24} {:<28} {:>12} {:>14} {}  {}",
            vip.name,
            format!("{}/{}", SocketAddr::new(vip.address(), vip.port()), protocol_name(vip.key.proto)),
            c.packets,
            c.bytes,
            rate_columns(rates.map(|r| r.vip(vip.row))),
            members.join(", ")
        );
    }
    let _ = writeln!(out, "\n{:<24} {:>12} {:>14} {:>10} {:>12}", "backend (all VIPs)", "packets", "bytes", "packets/s", "bytes/s");
    for b in &plan.backends {
        let c = counters.backends.get(b.id as usize).copied().unwrap_or_default();
        let rate = rate_columns(rates.map(|r| r.backend(b.id)));
        let _ = writeln!(out, "{:<24} {:>12} {:>14} {}", b.address.to_string(), c.packets, c.bytes, rate);
    }
    let _ = writeln!(out, "\n{:<24} {:<28} {:>12} {:>14}", "VIP -> backend", "backend", "packets", "bytes");
    for vip in &plan.vips {
        for (id, _) in &vip.members {
            let Some(b) = plan.backend(*id) else { continue };
            let c = counters.member(vip.row, *id);
            let _ = writeln!(out, "{:<24} {:<28} {:>12} {:>14}", vip.name, b.address.to_string(), c.packets, c.bytes);
        }
    }
    let _ = writeln!(out, "\n{:<24} {:>12} {:>14}  action", "outcome", "packets", "bytes");
    for r in Reason::ALL {
        let Counter { packets, bytes } = counters.reason(*r);
        let _ = writeln!(out, "{:<24} {:>12} {:>14}  {}", r.label(), packets, bytes, r.action().label());
    }
    let _ = writeln!(out, "\n{:<24} {:>12} {:>14}", "flow table", "packets", "bytes");
    for e in FlowEvent::COUNTERS {
        let Counter { packets, bytes } = counters.flow_event(*e);
        let _ = writeln!(out, "{:<24} {:>12} {:>14}", e.label(), packets, bytes);
    }
    out
}

fn protocol_name(proto: u8) -> &'static str {
    match proto {
        lb_common::PROTO_TCP => "tcp",
        lb_common::PROTO_UDP => "udp",
        _ => "?",
    }
}

/// The VIPs with flow state on the backends and their slots with a previous owner.
pub fn previous_to_text(plan: &Plan, counts: &BTreeMap<u32, u32>) -> String {
    let mut out = String::new();
    let backend: Vec<_> = plan.vips.iter().filter(|v| v.meta.flags & VIP_FLAG_SECOND_CHANCE != 0).collect();
    if backend.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\n{:<24} {:>12} {:>12}", "second chance (VIP)", "slots", "w/ previous");
    for vip in backend {
        let _ = writeln!(out, "{:<24} {:>12} {:>12}", vip.name, plan.ring_size, counts.get(&vip.row).copied().unwrap_or(0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_config::{TestConfig, TestVip};

    #[test]
    fn member_counters_in_json_and_text_add_up_to_the_totals() {
        let web = TestVip::new("web", "192.0.2.10:80").backends(["198.51.100.11", "198.51.100.12"]);
        let dns = TestVip::new("dns", "192.0.2.20:53/udp").backends(["198.51.100.12"]);
        let plan = crate::plan::plan(&TestConfig::new().ring_size(13).vip(web).vip(dns).parse());
        let (web, dns) = (plan.vip("web").unwrap().row, plan.vip("dns").unwrap().row);
        let (b11, b12) = (plan.backend_id("198.51.100.11".parse().unwrap()).unwrap(), plan.backend_id("198.51.100.12".parse().unwrap()).unwrap());
        let max_backends = 4;
        let mut members = vec![Counter::default(); 2 * max_backends as usize];
        let mut set = |row, id, packets| members[lb_common::flows::member_index(row, id, max_backends) as usize] = Counter { packets, bytes: packets * 100 };
        set(web, b11, 3);
        set(web, b12, 5);
        set(dns, b12, 7);
        let counters = Counters::default().with_members(members, max_backends);
        let json: serde_json::Value = serde_json::from_str(&to_json(&plan, &counters).to_string()).unwrap();
        let vip = |n: &str| json["vips"].as_array().unwrap().iter().find(|v| v["name"] == n).unwrap().clone();
        let member = |n: &str, a: &str| vip(n)["backends"].as_array().unwrap().iter().find(|m| m["address"] == a).unwrap()["packets"].clone();
        assert_eq!((member("web", "198.51.100.11"), member("web", "198.51.100.12"), member("dns", "198.51.100.12")), (3.into(), 5.into(), 7.into()));
        assert_eq!((vip("web")["packets"].clone(), vip("dns")["bytes"].clone()), (8.into(), 700.into()));
        let backend = |a: &str| json["backends"].as_array().unwrap().iter().find(|b| b["address"] == a).unwrap()["packets"].clone();
        assert_eq!((backend("198.51.100.11"), backend("198.51.100.12")), (3.into(), 12.into()));
        let text = to_text(&plan, &counters, None);
        assert!(text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["dns", "198.51.100.12", "7", "700"]), "{text}");
    }

    #[test]
    fn previous_owner_slots_in_json_and_text() {
        let web = TestVip::new("web", "192.0.2.10:80").set("flow_state", "backend").backends(["198.51.100.11"]);
        let dns = TestVip::new("dns", "192.0.2.20:53/udp").backends(["198.51.100.11"]);
        let plan = crate::plan::plan(&TestConfig::new().ring_size(13).vip(web).vip(dns).parse());
        let counts: BTreeMap<u32, u32> = [(plan.vip("web").unwrap().row, 4)].into();
        let mut doc = to_json(&plan, &Counters::default());
        doc.add_previous(&plan, &counts);
        let json: serde_json::Value = serde_json::from_str(&doc.to_string()).unwrap();
        let by_name = |n: &str| json["vips"].as_array().unwrap().iter().find(|v| v["name"] == n).unwrap()["previous_owner_slots"].clone();
        assert_eq!((by_name("web"), by_name("dns")), (serde_json::json!(4), serde_json::Value::Null), "only a \"backend\" VIP has the field");
        let text = previous_to_text(&plan, &counts);
        assert!(text.lines().any(|l| l.starts_with("web") && l.ends_with(" 4")), "{text}");
        assert!(!text.contains("dns"), "an \"lb\" VIP has no second chance:\n{text}");
    }
}
