//! The table and the JSON of the forwarding bench.

use std::time::Duration;

use serde_json::{json, Value};

use super::sample::{medians, Sample, METRICS};
use super::{FLOWS, ROUNDS};

/// Prints the medians of both programs side by side, the losses and what
/// limited the run; returns the section's JSON.
pub(super) fn report(seconds: Duration, frame_bytes: usize, lb: &[Sample], reflector: &[Sample]) -> Value {
    let (m_lb, m_reflector) = (medians(lb), medians(reflector));
    println!("{:<44} {:>14} {:>14} {:>14}", "", "LB", "reflector", "LB/reflector");
    let mut ratios = json!({});
    for (i, (key, label, percent)) in METRICS.iter().enumerate() {
        let (a, b) = (m_lb[i], m_reflector[i]);
        let cell = |v: f64| if *percent { format!("{:.0}%", v * 100.0) } else if v < 100.0 { format!("{v:.1}") } else { group(v) };
        println!("{label:<44} {:>14} {:>14} {:>14.2}", cell(a), cell(b), a / b);
        ratios[*key] = json!(a / b);
    }
    let lost = |samples: &[Sample]| {
        let before: u64 = samples.iter().map(|s| s.sent.saturating_sub(s.d.prog_runs)).sum();
        let at_tx: u64 = samples.iter().map(|s| s.d.xdp_tx_errors).sum();
        let sent: u64 = samples.iter().map(|s| s.sent).sum();
        (before, at_tx, sent)
    };
    for (name, samples) in [("LB", lb), ("reflector", reflector)] {
        let (before, at_tx, sent) = lost(samples);
        if before + at_tx > 0 {
            println!("{name}: of {} frames sent, {} were lost before the XDP program (the LB's receive ring was full) and {} at XDP_TX (the wire's ring was full)",
                group(sent as f64), group(before as f64), group(at_tx as f64));
        }
    }
    let limit = limits(&m_lb);
    println!("{limit}");
    let json_of = |samples: &[Sample], m: &[f64; METRICS.len()]| {
        let mut median = json!({});
        for ((key, _, _), v) in METRICS.iter().zip(m) {
            median[*key] = json!(v);
        }
        json!({"median": median, "rounds": samples.iter().map(Sample::to_json).collect::<Vec<_>>()})
    };
    json!({
        "flows": FLOWS, "frame_bytes": frame_bytes, "seconds_per_program": seconds.as_secs_f64(), "rounds": ROUNDS,
        "generator": "AF_PACKET SOCK_RAW, PACKET_QDISC_BYPASS, sendmmsg batches of 64, CPU 0",
        "lb": json_of(lb, &m_lb), "reflector": json_of(reflector, &m_reflector),
        "ratio_lb_to_reflector": ratios,
        "limited_by": limit,
    })
}

/// 1234567.0 -> "1,234,567".
fn group(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// What limits the LB's packets per second, from its medians.
fn limits(m: &[f64; METRICS.len()]) -> String {
    let metric = |key: &str| METRICS.iter().position(|(k, _, _)| *k == key).map_or(f64::NAN, |i| m[i]);
    let (lb_busy, generator_busy) = (metric("lb_cpu_busy"), metric("generator_cpu_busy"));
    if lb_busy > 0.9 {
        format!(
            "limited by: the LB's CPU ({:.0}% busy in its NAPI thread): packets/s compare the LB with the reflector",
            lb_busy * 100.0
        )
    } else if generator_busy > 0.9 {
        format!(
            "limited by: the generator's CPU ({:.0}% busy sending, in the client's veth and the bridge), not the LB's \
             ({:.0}% busy): packets/s are the offered load, not what the LB could forward. The generator also pays \
             for waking the LB's NAPI thread, which a cheaper program lets sleep more often (sleeps per 1000 \
             packets), so the cheaper program is offered less. Below saturation ns/packet includes per-wakeup costs \
             that fuller batches would spread, so the capacity is a low estimate",
            generator_busy * 100.0,
            lb_busy * 100.0
        )
    } else {
        format!(
            "limited by: neither CPU was saturated (generator {:.0}%, LB {:.0}%): the machine is shared or the generator waited",
            generator_busy * 100.0,
            lb_busy * 100.0
        )
    }
}
