//! What the agent knows of `PREVIOUS` beyond what the map holds: which rows
//! belong to second-chance VIPs, when each row with previous owners last
//! changed, and the drain window. Shared (one `Arc`) by every handle on the
//! same maps ([`super::store::MapStore::reopen`]): reconcile, the health
//! supervisor and the drain timer write `PREVIOUS` only while holding it,
//! so a row is never cleared by the timer between a ring change and the
//! previous owners that change wrote.
//!
//! The times are the agent's own: after a restart (an adoption keeps the
//! pinned `PREVIOUS`) every row with previous owners starts a new window.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Result;
use lb_common::second_chance::VIP_FLAG_SECOND_CHANCE;

use super::store::MapStore;
use crate::plan::{previous::with_previous_owner, Plan};

/// See the module's documentation.
#[derive(Debug)]
pub struct Ledger {
    /// Rows of VIPs with `flow_state = "backend"`.
    second_chance: BTreeSet<u32>,
    /// Rows with at least one previous owner, and when they last changed.
    changed: BTreeMap<u32, Instant>,
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

    /// Records the rows the map holds previous owners in (on the first use
    /// after a start: their window starts now).
    pub fn record_scan(&mut self, rows: impl IntoIterator<Item = u32>, now: Instant) {
        for row in rows {
            self.changed.entry(row).or_insert(now);
        }
        self.scanned = true;
    }

    /// Row `row` of `PREVIOUS` was just written; `any` = it has a previous owner left.
    pub fn wrote(&mut self, row: u32, any: bool, now: Instant) {
        if any {
            self.changed.insert(row, now);
        } else {
            self.changed.remove(&row);
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

    /// Rows whose window has passed at `now`.
    pub fn expired(&self, now: Instant) -> Vec<u32> {
        self.changed.iter().filter(|&(_, &at)| now.saturating_duration_since(at) >= self.window).map(|(&row, _)| row).collect()
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
        l.wrote(3, true, t0);
        assert!(l.expired(t0 + Duration::from_secs(9)).is_empty());
        l.wrote(3, true, t0 + Duration::from_secs(5));
        assert!(l.expired(t0 + Duration::from_secs(12)).is_empty(), "the window restarts with each change");
        assert_eq!(l.expired(t0 + Duration::from_secs(15)), [3]);
        l.wrote(3, false, t0);
        assert!(l.expired(t0 + Duration::from_secs(99)).is_empty(), "a row without previous owners has nothing to drain");
    }
}
