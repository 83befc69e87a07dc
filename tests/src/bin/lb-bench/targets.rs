//! The per-packet goals (issues 13 and 14), as ratios to the floors of the
//! same run: printed with the ratio reached and whether it is met, and kept
//! in the JSON. They are goals for the bench, not test assertions: a busy
//! machine moves ratios, and a miss is a finding, not a failure.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Which floor a goal divides by.
#[derive(Clone, Copy)]
enum Floor {
    Pass,
    Tx,
}

/// (what, path, floor, bound): the path's ratio to the floor must be at most the bound.
const GOALS: [(&str, &str, Floor, f64); 8] = [
    ("known-flow TCP ACK", "ipv4 tcp ack, known flow (flow table hit)", Floor::Tx, 2.5),
    ("UDP, known flow", "ipv4 udp to vip (hash)", Floor::Tx, 2.5),
    ("TCP SYN with the flow table", "ipv4 tcp syn to vip (hash)", Floor::Tx, 4.5),
    ("\"backend\" VIP, SYN", "ipv4 tcp syn, backend vip", Floor::Tx, 2.5),
    ("\"backend\" VIP, ACK", "ipv4 tcp ack, backend vip", Floor::Tx, 2.5),
    ("no VIP (pass)", "ipv4 tcp, no vip (pass)", Floor::Pass, 1.2),
    ("VIP address, unconfigured port (pass)", "ipv4 tcp, vip address, other port (pass)", Floor::Pass, 1.5),
    ("flood guard SYN (unrecorded)", "ipv4 tcp syn, flood guard (unrecorded)", Floor::Tx, 4.5),
];
/// IPv6 SYN within this factor of the IPv4 SYN.
const IPV6_BOUND: f64 = 1.15;

/// Prints the goals with this run's ratios; returns them for the JSON.
pub fn check(ratio_pass: &BTreeMap<&str, f64>, ratio_tx: &BTreeMap<&str, f64>, ipv6_over_ipv4: f64) -> Value {
    println!("\n{:<40} {:>10} {:>14} {:>6}", "goal", "reached", "bound", "met");
    let mut rows = Vec::new();
    let mut row = |what: &str, reached: f64, bound: f64, unit: &str| {
        let met = reached <= bound;
        println!("{what:<40} {reached:>9.2}x {:>14} {:>6}", format!("<= {bound} x {unit}"), if met { "yes" } else { "NO" });
        rows.push(json!({"goal": what, "reached": reached, "at_most": bound, "of": unit, "met": met}));
    };
    for (what, path, floor, bound) in GOALS {
        let (ratios, unit) = match floor {
            Floor::Pass => (ratio_pass, "pass"),
            Floor::Tx => (ratio_tx, "tx"),
        };
        if let Some(&reached) = ratios.get(path) {
            row(what, reached, bound, unit);
        }
    }
    row("IPv6 SYN over IPv4 SYN", ipv6_over_ipv4, IPV6_BOUND, "v4");
    json!(rows)
}
