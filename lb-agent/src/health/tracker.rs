//! The per-backend state machine: consecutive results only. A pass resets
//! the failure count and a failure the pass count, so scattered failures
//! never mark a backend down and scattered passes never bring it back.

use crate::config::health::InitialState;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Up,
    Down,
}


/// State and consecutive counts of one checked backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tracker {
    pub state: State,
    /// Consecutive failures so far (0 after a pass).
    pub fails: u32,
    /// Consecutive passes so far (0 after a failure).
    pub passes: u32,
    /// State changes so far.
    pub changes: u32,
    fails_to_down: u32,
    passes_to_up: u32,
}

impl Tracker {
    /// `fails_to_down` / `passes_to_up` are at least 1 (validated config).
    pub(crate) fn new(initial: InitialState, fails_to_down: u32, passes_to_up: u32) -> Tracker {
        let state = match initial {
            InitialState::Up => State::Up,
            InitialState::Down => State::Down,
        };
        Tracker { state, fails: 0, passes: 0, changes: 0, fails_to_down: fails_to_down.max(1), passes_to_up: passes_to_up.max(1) }
    }

    /// Goes on from a state and counts a previous supervisor left in the
    /// `HEALTH` map (after a reload or restart; a fresh tracker would start
    /// from the configured initial state and miss a down backend's recovery).
    pub(crate) fn resume(state: State, fails: u32, passes: u32, changes: u32, fails_to_down: u32, passes_to_up: u32) -> Tracker {
        Tracker { state, fails, passes, changes, fails_to_down: fails_to_down.max(1), passes_to_up: passes_to_up.max(1) }
    }

    /// Counts one check; returns the new state if this result changed it.
    pub(crate) fn record(&mut self, passed: bool) -> Option<State> {
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.fails = 0;
        } else {
            self.fails = self.fails.saturating_add(1);
            self.passes = 0;
        }
        let next = match self.state {
            State::Up if self.fails >= self.fails_to_down => State::Down,
            State::Down if self.passes >= self.passes_to_up => State::Up,
            _ => return None,
        };
        self.state = next;
        self.changes += 1;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_threshold_then_passes_threshold() {
        let mut t = Tracker::new(InitialState::Up, 3, 2);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(State::Down));
        assert_eq!((t.fails, t.passes), (3, 0));
        assert_eq!(t.record(false), None, "already down");
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(State::Up));
        assert_eq!(t.changes, 2);
    }

    #[test]
    fn flapping_never_changes_state() {
        let mut t = Tracker::new(InitialState::Up, 2, 2);
        for i in 0..50 {
            assert_eq!(t.record(i % 2 == 0), None, "check {i}");
        }
        assert_eq!((t.state, t.changes), (State::Up, 0));
        let mut t = Tracker::new(InitialState::Down, 2, 2);
        for i in 0..50 {
            assert_eq!(t.record(i % 2 == 1), None, "check {i}");
        }
        assert_eq!(t.state, State::Down);
    }

    #[test]
    fn one_and_one_like_nginx() {
        let mut t = Tracker::new(InitialState::Down, 1, 1);
        assert_eq!(t.record(true), Some(State::Up));
        assert_eq!(t.record(false), Some(State::Down));
        assert_eq!(t.record(true), Some(State::Up));
    }

    #[test]
    fn a_resumed_tracker_goes_on_from_the_state_it_was_given() {
        // A checker restarted (reload) while its backend was down: the
        // recovery must still be a change, whatever the initial state says.
        let mut t = Tracker::resume(State::Down, 4, 0, 1, 3, 2);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(State::Up));
        assert_eq!(t.changes, 2, "changes go on counting");
        let mut t = Tracker::resume(State::Up, 2, 0, 0, 3, 2);
        assert_eq!(t.record(false), Some(State::Down), "two failures were already counted");
    }
}
