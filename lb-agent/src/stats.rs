//! `lb-agent stats`: the counters of a running agent, named after the config.

use std::fmt::Write as _;

use lb_common::{Counter, Reason};
use serde_json::{json, Value};

use crate::{dataplane::Counters, plan::Plan};

/// JSON: `{"vips":[{name, address, port, protocol, packets, bytes, backends:[{address, packets, bytes}]}],
/// "reasons":{label:{packets, bytes}}}`.
pub fn to_json(plan: &Plan, counters: &Counters) -> Value {
    let vips: Vec<Value> = plan
        .vips
        .iter()
        .map(|vip| {
            let c = counters.vips.get(vip.row as usize).copied().unwrap_or_default();
            let backends: Vec<Value> = vip
                .members
                .iter()
                .filter_map(|(id, _)| plan.backends.iter().find(|b| b.id == *id))
                .map(|b| {
                    let bc = counters.backends.get(b.id as usize).copied().unwrap_or_default();
                    json!({"address": b.address.to_string(), "packets": bc.packets, "bytes": bc.bytes})
                })
                .collect();
            json!({
                "name": vip.name,
                "address": vip_address(vip).to_string(),
                "port": u16::from_be(vip.key.port_be),
                "protocol": protocol_name(vip.key.proto),
                "packets": c.packets,
                "bytes": c.bytes,
                "backends": backends,
            })
        })
        .collect();
    let reasons: serde_json::Map<String, Value> = Reason::ALL
        .iter()
        .map(|r| {
            let c = counters.reason(*r);
            (r.label().to_string(), json!({"packets": c.packets, "bytes": c.bytes}))
        })
        .collect();
    json!({"vips": vips, "reasons": reasons})
}

/// A human table. Backend counters are per backend address: a backend shared
/// by several VIPs shows the same totals under each.
pub fn to_text(plan: &Plan, counters: &Counters) -> String {
    let mut out = String::new();
    for vip in &plan.vips {
        let c = counters.vips.get(vip.row as usize).copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "VIP {} {}:{}/{}  {} packets  {} bytes",
            vip.name,
            vip_address(vip),
            u16::from_be(vip.key.port_be),
            protocol_name(vip.key.proto),
            c.packets,
            c.bytes
        );
        for (id, weight) in &vip.members {
            let Some(b) = plan.backends.iter().find(|b| b.id == *id) else { continue };
            let bc = counters.backends.get(*id as usize).copied().unwrap_or_default();
            let _ = writeln!(out, "  backend {:<40} weight {:<4} {:>10} packets {:>12} bytes", b.address, weight, bc.packets, bc.bytes);
        }
    }
    let _ = writeln!(out, "Packets by outcome:");
    for r in Reason::ALL {
        let Counter { packets, bytes } = counters.reason(*r);
        let _ = writeln!(out, "  {:<18} {:<5} {:>10} packets {:>12} bytes", r.label(), format!("{:?}", r.action()), packets, bytes);
    }
    out
}

fn vip_address(vip: &crate::plan::PlannedVip) -> std::net::IpAddr {
    lb_common::words_addr(&vip.key.addr, vip.key.family).expect("planned VIPs have a known family")
}

fn protocol_name(proto: u8) -> &'static str {
    match proto {
        lb_common::PROTO_TCP => "tcp",
        lb_common::PROTO_UDP => "udp",
        _ => "?",
    }
}
