//! `lb-agent stats`: the counters of a running agent, named after the config.

use std::{fmt::Write as _, net::SocketAddr};

use std::collections::BTreeMap;

use lb_common::{flows::FlowEvent, second_chance::VIP_FLAG_SECOND_CHANCE, Counter, Reason};
use serde_json::{json, Value};

use crate::{dataplane::Counters, plan::Plan, rates::Rates};

/// JSON: `{"vips":[{name, address, port, protocol, packets, bytes, backends:[{address, weight}]}],
/// "backends":[{address, packets, bytes}], "reasons":{label:{packets, bytes}}}`.
/// Backend counters are per backend address, summed over the VIPs that share it.
/// Also `"flows":{hit, miss, rehash, non_syn_miss}`: what the flow table did
/// (`non_syn_miss`, a part of `miss`: established TCP flows it had lost).
pub fn to_json(plan: &Plan, counters: &Counters) -> Value {
    let vips: Vec<Value> = plan
        .vips
        .iter()
        .map(|vip| {
            let c = counters.vips.get(vip.row as usize).copied().unwrap_or_default();
            let members: Vec<Value> = vip
                .members
                .iter()
                .filter_map(|(id, weight)| plan.backend(*id).map(|b| json!({"address": b.address.to_string(), "weight": weight})))
                .collect();
            json!({
                "name": vip.name,
                "address": vip.address().to_string(),
                "port": vip.port(),
                "protocol": protocol_name(vip.key.proto),
                "packets": c.packets,
                "bytes": c.bytes,
                "backends": members,
            })
        })
        .collect();
    let backends: Vec<Value> = plan
        .backends
        .iter()
        .map(|b| {
            let c = counters.backends.get(b.id as usize).copied().unwrap_or_default();
            json!({"address": b.address.to_string(), "packets": c.packets, "bytes": c.bytes})
        })
        .collect();
    let reasons: serde_json::Map<String, Value> = Reason::ALL
        .iter()
        .map(|r| {
            let c = counters.reason(*r);
            (r.label().to_string(), json!({"packets": c.packets, "bytes": c.bytes}))
        })
        .collect();
    let flows: serde_json::Map<String, Value> = FlowEvent::COUNTERS
        .iter()
        .map(|e| {
            let c = counters.flow_event(*e);
            (e.label().to_string(), json!({"packets": c.packets, "bytes": c.bytes}))
        })
        .collect();
    json!({"vips": vips, "backends": backends, "reasons": reasons, "flows": flows})
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

/// Adds `"previous_owner_slots"` (ring slots with a previous owner, see
/// `dataplane::previous::slots_with_previous_owner`) to each VIP of
/// [`to_json`]'s output.
pub fn add_previous_to_json(json: &mut Value, plan: &Plan, counts: &BTreeMap<u32, u32>) {
    let Some(vips) = json.get_mut("vips").and_then(Value::as_array_mut) else { return };
    for (out, vip) in vips.iter_mut().zip(&plan.vips) {
        out["previous_owner_slots"] = json!(counts.get(&vip.row).copied().unwrap_or(0));
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
    use crate::config::parse;

    const TWO: &str = r#"
[lb]
interface = "eth0"
ring_size = 13
[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
flow_state = "backend"
  [[vip.backend]]
  address = "198.51.100.11"
[[vip]]
name = "dns"
address = "192.0.2.20"
port = 53
protocol = "udp"
  [[vip.backend]]
  address = "198.51.100.11"
"#;

    #[test]
    fn previous_owner_slots_in_json_and_text() {
        let plan = crate::plan::plan(&parse(TWO, "t.toml").unwrap());
        let web = plan.vip("web").unwrap().row;
        let counts: BTreeMap<u32, u32> = [(web, 4)].into();
        let mut json = to_json(&plan, &Counters::default());
        add_previous_to_json(&mut json, &plan, &counts);
        let by_name = |n: &str| json["vips"].as_array().unwrap().iter().find(|v| v["name"] == n).unwrap()["previous_owner_slots"].clone();
        assert_eq!((by_name("web"), by_name("dns")), (json!(4), json!(0)));
        let text = previous_to_text(&plan, &counts);
        assert!(text.lines().any(|l| l.starts_with("web") && l.ends_with(" 4")), "{text}");
        assert!(!text.contains("dns"), "an \"lb\" VIP has no second chance:\n{text}");
    }
}
