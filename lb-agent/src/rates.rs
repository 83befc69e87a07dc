//! Packets and bytes per second between two reads of the counters: what
//! `lb-agent stats` shows over its window (`--interval`).

use std::time::Duration;

use lb_common::Counter;
use serde::Serialize;

use crate::dataplane::Counters;

/// Per second over a window; its field names are those of `stats --json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rate {
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
}

/// Rates per VIP row and per backend id (indexed like [`Counters`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    pub window: Duration,
    pub vips: Vec<Rate>,
    pub backends: Vec<Rate>,
}

fn rate(before: Counter, after: Counter, seconds: f64) -> Rate {
    // A counter that went down belongs to a restarted agent: no rate, not a negative one.
    let per_second = |b: u64, a: u64| a.saturating_sub(b) as f64 / seconds;
    Rate { packets_per_second: per_second(before.packets, after.packets), bytes_per_second: per_second(before.bytes, after.bytes) }
}

fn rates(before: &[Counter], after: &[Counter], seconds: f64) -> Vec<Rate> {
    after.iter().enumerate().map(|(i, a)| rate(before.get(i).copied().unwrap_or_default(), *a, seconds)).collect()
}

impl Rates {
    /// `None` for an empty window (no rate can be told).
    pub fn between(before: &Counters, after: &Counters, window: Duration) -> Option<Rates> {
        let seconds = window.as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        Some(Rates { window, vips: rates(&before.vips, &after.vips, seconds), backends: rates(&before.backends, &after.backends, seconds) })
    }

    pub fn vip(&self, row: u32) -> Rate {
        self.vips.get(row as usize).copied().unwrap_or_default()
    }

    pub fn backend(&self, id: u32) -> Rate {
        self.backends.get(id as usize).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_over_the_window_and_never_negative() {
        let c = |p, b| Counter { packets: p, bytes: b };
        let before = Counters { vips: vec![c(10, 1000)], backends: vec![c(0, 0), c(50, 500)], ..Default::default() };
        let after = Counters { vips: vec![c(30, 5000)], backends: vec![c(0, 0), c(40, 400)], ..Default::default() };
        let r = Rates::between(&before, &after, Duration::from_millis(500)).unwrap();
        assert_eq!(r.vip(0), Rate { packets_per_second: 40.0, bytes_per_second: 8000.0 });
        assert_eq!(r.backend(1), Rate::default());
        assert_eq!(r.backend(7), Rate::default());
        assert!(Rates::between(&before, &after, Duration::ZERO).is_none());
    }
}
