//! The health of one (VIP, backend) pair: the agent's one copy of it.
//! Checkers only report probe outcomes; the supervisor counts them here, and
//! the kernel's `HEALTH` entry is [`PairHealth::entry`], written from it.

use lb_common::health::{HEALTH_DOWN, HEALTH_UNCHECKED, HEALTH_UP, HealthEntry, HealthReason};

use crate::config::health::{CheckKind, HealthCheck};
use crate::health::probe::Outcome;
use crate::health::tracker::{State, Tracker};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PairHealth {
    /// The consecutive-results state machine; `None`: not checked (always up).
    tracker: Option<Tracker>,
    /// [`HealthReason`] of the last check (as a `HEALTH` entry holds it).
    reason: u8,
    /// Status of the last HTTP answer, 0 if none.
    http_status: u16,
    /// Last state change, or the start (ms since the Unix epoch).
    since_unix_ms: u64,
}

impl PairHealth {
    /// A pair's state at a supervisor's start: a checked pair whose `prior`
    /// entry (the `HEALTH` map's, after a reload or restart) holds a checked
    /// state goes on from it; others start from the configured initial state.
    pub(super) fn start(check: &HealthCheck, prior: Option<&HealthEntry>, since_unix_ms: u64) -> PairHealth {
        if check.kind == CheckKind::None {
            return PairHealth { tracker: None, reason: HealthReason::NotChecked as u8, http_status: 0, since_unix_ms };
        }
        match prior.and_then(|e| Some((e, checked_state(e.state)?))) {
            Some((e, state)) => PairHealth {
                tracker: Some(Tracker::resume(state, e.consecutive_fails, e.consecutive_passes, e.changes, check.fails, check.passes)),
                reason: e.reason,
                http_status: e.http_status,
                since_unix_ms: e.since_unix_ms,
            },
            None => PairHealth {
                tracker: Some(Tracker::new(check.initial, check.fails, check.passes)),
                reason: HealthReason::Initial as u8,
                http_status: 0,
                since_unix_ms,
            },
        }
    }

    /// Whether the backend may take traffic (an unchecked one always).
    pub(super) fn up(&self) -> bool {
        self.tracker.as_ref().is_none_or(|t| t.state == State::Up)
    }

    /// Counts one check's outcome; returns the new state if it changed.
    /// `None` (nothing counted) for a pair that is not checked.
    pub(super) fn count(&mut self, outcome: &Outcome, now_unix_ms: u64) -> Option<Option<State>> {
        let tracker = self.tracker.as_mut()?;
        let changed = tracker.record(outcome.passed());
        self.reason = outcome.reason() as u8;
        self.http_status = outcome.http_status().unwrap_or(0);
        if changed.is_some() {
            self.since_unix_ms = now_unix_ms;
        }
        Some(changed)
    }

    /// Consecutive (failed, passed) checks so far.
    pub(super) fn streaks(&self) -> (u32, u32) {
        self.tracker.as_ref().map_or((0, 0), |t| (t.fails, t.passes))
    }

    /// The kernel-visible copy (`HEALTH` entry) of this state.
    pub(super) fn entry(&self) -> HealthEntry {
        let (state, consecutive_fails, consecutive_passes, changes) = match &self.tracker {
            None => (HEALTH_UNCHECKED, 0, 0, 0),
            Some(t) => (if t.state == State::Up { HEALTH_UP } else { HEALTH_DOWN }, t.fails, t.passes, t.changes),
        };
        HealthEntry {
            since_unix_ms: self.since_unix_ms,
            consecutive_fails,
            consecutive_passes,
            changes,
            http_status: self.http_status,
            state,
            reason: self.reason,
        }
    }
}

/// The state of a checked `HEALTH` entry (`None` for unchecked or unknown).
fn checked_state(state: u8) -> Option<State> {
    match state {
        HEALTH_UP => Some(State::Up),
        HEALTH_DOWN => Some(State::Down),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::health::InitialState;

    fn checked(fails: u32, passes: u32, initial: InitialState) -> HealthCheck {
        HealthCheck { kind: CheckKind::Tcp, fails, passes, initial, ..HealthCheck::unchecked() }
    }

    #[test]
    fn the_health_entry_is_derived_from_the_state_and_round_trips() {
        let check = checked(2, 1, InitialState::Up);
        let mut pair = PairHealth::start(&check, None, 1000);
        assert_eq!((pair.entry().state, pair.entry().reason, pair.entry().since_unix_ms), (HEALTH_UP, HealthReason::Initial as u8, 1000));
        assert_eq!(pair.count(&Outcome::HttpStatus(503), 2000), Some(None), "one failure of two");
        assert_eq!(pair.count(&Outcome::Timeout, 3000), Some(Some(State::Down)));
        let e = pair.entry();
        assert_eq!((e.state, e.consecutive_fails, e.changes, e.since_unix_ms), (HEALTH_DOWN, 2, 1, 3000));
        assert_eq!((e.reason, e.http_status), (HealthReason::Timeout as u8, 0));
        assert!(!pair.up());
        // A successor started from that entry holds the same state, and
        // its entry is the same one (nothing to write again).
        let resumed = PairHealth::start(&check, Some(&e), 9000);
        assert_eq!(resumed, pair);
        assert_eq!(resumed.entry(), e);
    }

    #[test]
    fn unchecked_pairs_are_up_and_count_nothing() {
        let unchecked = HealthCheck::unchecked();
        let down = HealthEntry { state: HEALTH_DOWN, ..HealthEntry::default() };
        let mut pair = PairHealth::start(&unchecked, Some(&down), 5);
        assert!(pair.up(), "a check removed since: up, whatever the entry said");
        assert_eq!(pair.count(&Outcome::Refused, 6), None);
        let e = pair.entry();
        assert_eq!((e.state, e.reason, e.since_unix_ms), (HEALTH_UNCHECKED, HealthReason::NotChecked as u8, 5));
        // An unchecked entry is no state to go on from: the initial state is.
        let fresh = PairHealth::start(&checked(1, 1, InitialState::Down), Some(&e), 7);
        assert_eq!((fresh.up(), fresh.entry().reason), (false, HealthReason::Initial as u8));
    }
}
