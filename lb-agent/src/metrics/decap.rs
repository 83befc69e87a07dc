//! `lb-agent decap --metrics ADDR`: a backend host's decap counters
//! (`DECAP_STATS`, one per `DecapReason`) in the Prometheus text format, on
//! the same HTTP endpoint code as the agent's ([`super::server`]).

use std::sync::{Arc, Mutex};

use anyhow::Result;
use aya::Ebpf;
use lb_common::{metrics as names, metrics::labels, Counter, DecapReason};

use super::server::Render;
use super::text::{Kind, Text};
use crate::dataplane;

/// The loaded decap object, shared with the command that detaches it.
pub struct DecapMetrics(pub Arc<Mutex<Ebpf>>);

impl Render for DecapMetrics {
    fn render(&self) -> Result<String> {
        let counters = dataplane::read_counters(&self.0.lock().unwrap_or_else(|e| e.into_inner()))?;
        Ok(encode(&counters.decap))
    }
}

/// The exposition of `decap` (indexed by `DecapReason`).
pub fn encode(decap: &[Counter]) -> String {
    let mut t = Text::with_capacity(4096);
    let count = |r: DecapReason| decap.get(r as usize).copied().unwrap_or_default();
    let series = |r: DecapReason| [(labels::ACTION, r.action().label()), (labels::REASON, r.label())];
    t.family(names::DECAP_PACKETS, Kind::Counter, "Packets the decap program saw, by outcome.");
    for r in DecapReason::ALL {
        t.sample(names::DECAP_PACKETS, &series(*r), count(*r).packets);
    }
    t.family(names::DECAP_BYTES, Kind::Counter, "Bytes of those packets (outer frame), by outcome.");
    for r in DecapReason::ALL {
        t.sample(names::DECAP_BYTES, &series(*r), count(*r).bytes);
    }
    t.family(names::BUILD_INFO, Kind::Gauge, "The agent's version.");
    t.sample(names::BUILD_INFO, &[(labels::VERSION, env!("CARGO_PKG_VERSION"))], 1u64);
    t.finish()
}

/// One line per outcome: what `lb-agent decap` prints when it stops.
pub fn summary(decap: &[Counter]) -> String {
    DecapReason::ALL
        .iter()
        .map(|r| {
            let c = decap.get(*r as usize).copied().unwrap_or_default();
            format!("{:<24} {:>12} packets {:>14} bytes  {}\n", r.label(), c.packets, c.bytes, r.action().label())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_a_series_with_its_count() {
        let mut decap = vec![Counter::default(); DecapReason::ALL.len()];
        decap[DecapReason::NotTunnel as usize] = Counter { packets: 7, bytes: 700 };
        let text = encode(&decap);
        for name in names::DECAP_ALL {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
        }
        for r in DecapReason::ALL {
            let series = format!("{}{{action=\"{}\",reason=\"{}\"}} ", names::DECAP_PACKETS, r.action().label(), r.label());
            let value = if *r == DecapReason::NotTunnel { "7" } else { "0" };
            assert!(text.lines().any(|l| l == format!("{series}{value}")), "{series}{value} not in:\n{text}");
        }
        assert!(summary(&decap).lines().any(|l| l.starts_with("not_tunnel") && l.contains(" 7 packets")), "{}", summary(&decap));
    }
}
