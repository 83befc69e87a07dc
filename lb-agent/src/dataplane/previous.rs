//! What the agent knows of `PREVIOUS` beyond what the map holds: which rows
//! belong to second-chance VIPs, when each row with previous owners changed
//! (its last [`MAX_PREVIOUS_OWNERS`] changes, newest first), and the drain
//! window. Shared (one `Arc`) by every handle on the
//! same maps ([`super::store::MapStore::reopen`]): reconcile, the health
//! supervisor and the drain timer write `PREVIOUS` only while holding it,
//! so a row is never cleared by the timer between a ring change and the
//! previous owners that change wrote.
//!
//! Each depth has its own deadline: the `k`-th previous owner of any slot
//! (0 = newest) goes once the window has passed since the row's `k`-th
//! latest change. A slot's `k`-th previous owner became one at that change
//! or before it (the `k` newer ones each came with a later change of the
//! slot, hence of the row), so none goes early; it is exact for a slot that
//! took part in each of those changes (A -> B -> C: A goes a window after
//! the first change, B a window after the second). Per-slot times would be
//! exact always, at 8 bytes per slot and depth; no previous owner is ever
//! dropped before its window, which is what connections need.
//!
//! The times are the agent's own: after a restart (an adoption keeps the
//! pinned `PREVIOUS`) every row with previous owners starts a new window.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Result;
use lb_common::second_chance::{MAX_PREVIOUS_OWNERS, VIP_FLAG_SECOND_CHANCE};

use super::store::MapStore;
use crate::plan::{previous::with_previous_owner, Plan};

/// See the module's documentation.
#[derive(Debug)]
pub struct Ledger {
    /// Rows of VIPs with `flow_state = "backend"`.
    second_chance: BTreeSet<u32>,
    /// Rows with at least one previous owner, and when they changed: one
    /// time per depth the row holds, newest first.
    changed: BTreeMap<u32, Vec<Instant>>,
    /// Whether `changed` has been filled from the map (once per agent).
    scanned: bool,
    /// `lb.previous_owner_window`.
    window: Duration,
    /// Slots per row.
    ring_size: u32,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            second_chance: BTreeSet::new(),
            changed: BTreeMap::new(),
            scanned: false,
            window: crate::config::DEFAULT_PREVIOUS_OWNER_WINDOW,
            ring_size: 0,
        }
    }
}

pub type SharedLedger = Arc<Mutex<Ledger>>;

/// The ledger, whatever a panicking holder left (its fields stay consistent).
pub fn lock(ledger: &SharedLedger) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ledger {
    /// What the running config says: the rows of second-chance VIPs, the
    /// window and the ring size.
    pub fn configure(&mut self, second_chance: BTreeSet<u32>, window: Duration, ring_size: u32) {
        self.second_chance = second_chance;
        self.window = window;
        self.ring_size = ring_size;
    }

    pub fn is_second_chance(&self, row: u32) -> bool {
        self.second_chance.contains(&row)
    }

    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    /// Whether the rows found in the map were recorded already.
    pub fn scanned(&self) -> bool {
        self.scanned
    }

    /// Records the rows the map holds previous owners in, with their depth
    /// (on the first use after a start: their windows start now).
    pub fn record_scan(&mut self, rows: impl IntoIterator<Item = (u32, usize)>, now: Instant) {
        for (row, depth) in rows {
            self.changed.entry(row).or_insert_with(|| vec![now; depth.min(MAX_PREVIOUS_OWNERS)]);
        }
        self.scanned = true;
    }

    /// A ring change just wrote row `row` of `PREVIOUS`, which now holds
    /// previous owners `depth` deep (0: none left).
    pub fn wrote(&mut self, row: u32, depth: usize, now: Instant) {
        if depth == 0 {
            self.changed.remove(&row);
            return;
        }
        let times = self.changed.entry(row).or_default();
        times.insert(0, now);
        times.truncate(depth);
        // A row scanned or drained shallower than it now is: the deeper
        // entries date from before `now`'s change; their time is unknown,
        // so the oldest known stands for them (never early: see the module).
        while times.len() < depth {
            let oldest = *times.last().unwrap_or(&now);
            times.push(oldest);
        }
    }

    /// Row `row` was cut to its newest `depth` previous owners by the drain.
    pub fn drained(&mut self, row: u32, depth: usize) {
        match self.changed.get_mut(&row) {
            Some(times) if depth > 0 => times.truncate(depth),
            _ => {
                self.changed.remove(&row);
            }
        }
    }

    /// Whether row `row` holds any previous owner.
    pub fn has_previous(&self, row: u32) -> bool {
        self.changed.contains_key(&row)
    }

    /// Rows holding previous owners.
    pub fn rows(&self) -> impl Iterator<Item = u32> + '_ {
        self.changed.keys().copied()
    }

    /// Rows some of whose depths' windows have passed at `now`, each with
    /// the depth to keep (the newest previous owners still in their window).
    pub fn expired(&self, now: Instant) -> Vec<(u32, usize)> {
        self.changed
            .iter()
            .filter_map(|(&row, times)| {
                let keep = times.iter().take_while(|&&at| now.saturating_duration_since(at) < self.window).count();
                (keep < times.len()).then_some((row, keep))
            })
            .collect()
    }
}

/// Ring slots with a previous owner, by VIP row of `plan` (only VIPs with
/// flow state on the backends can have any; the others are 0 unread).
pub fn slots_with_previous_owner(store: &impl MapStore, plan: &Plan) -> Result<BTreeMap<u32, u32>> {
    plan.vips
        .iter()
        .map(|v| {
            let count = match v.meta.flags & VIP_FLAG_SECOND_CHANCE {
                0 => 0,
                _ => with_previous_owner(&store.previous_row(v.row, plan.ring_size)?),
            };
            Ok((v.row, count))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_expires_a_window_after_its_last_change() {
        let mut l = Ledger::default();
        l.configure([3].into(), Duration::from_secs(10), 7);
        let t0 = Instant::now();
        l.wrote(3, 1, t0);
        assert!(l.expired(t0 + Duration::from_secs(9)).is_empty());
        l.wrote(3, 1, t0 + Duration::from_secs(5));
        assert!(l.expired(t0 + Duration::from_secs(12)).is_empty(), "the window restarts with each change");
        assert_eq!(l.expired(t0 + Duration::from_secs(15)), [(3, 0)]);
        l.wrote(3, 0, t0);
        assert!(l.expired(t0 + Duration::from_secs(99)).is_empty(), "a row without previous owners has nothing to drain");
    }

    #[test]
    fn each_depth_drains_a_window_after_its_own_change() {
        let mut l = Ledger::default();
        l.configure([3].into(), Duration::from_secs(10), 7);
        let t0 = Instant::now();
        // A -> B at t0, B -> C at t0 + 6: B is 1 deep, A 2 deep.
        l.wrote(3, 1, t0);
        l.wrote(3, 2, t0 + Duration::from_secs(6));
        assert!(l.expired(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(l.expired(t0 + Duration::from_secs(10)), [(3, 1)], "A's window has passed, B's not");
        l.drained(3, 1);
        assert!(l.expired(t0 + Duration::from_secs(15)).is_empty());
        assert_eq!(l.expired(t0 + Duration::from_secs(16)), [(3, 0)]);
        l.drained(3, 0);
        assert!(!l.has_previous(3));
    }

    #[test]
    fn a_scanned_row_starts_every_depth_at_the_scan() {
        let mut l = Ledger::default();
        l.configure([3].into(), Duration::from_secs(10), 7);
        let t0 = Instant::now();
        l.record_scan([(3, 2)], t0);
        assert_eq!(l.expired(t0 + Duration::from_secs(10)), [(3, 0)], "both depths date from the scan");
    }
}
