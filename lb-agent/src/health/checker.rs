//! One tokio task per checked backend of a VIP: check, report, wait. A
//! checker holds no health state: the supervisor counts its outcomes.
//!
//! Tasks share nothing but the report channel, so a slow or hung backend
//! delays only its own next check; each probe is cut off at `timeout` and
//! counts as a failure. The first check of each task starts at a
//! pseudo-random point of the first interval and every wait is stretched by
//! up to [`JITTER_PERCENT`], so the checks of many backends do not
//! synchronise (and the agent's start is not a burst of connects).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};

use crate::config::health::HealthCheck;
use crate::health::probe::{Outcome, Probe};

/// Largest extra wait between two checks, in percent of the interval.
pub(crate) const JITTER_PERCENT: u64 = 10;

/// Which backend of which VIP (indices in the config's `vips` / `backends`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberRef {
    pub vip: usize,
    pub backend: usize,
}

/// What a checker tells the supervisor after every check: the probe's
/// outcome only (what it means for the backend's state is the supervisor's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub member: MemberRef,
    pub outcome: Outcome,
    /// How long the check took (its timeout, if it timed out).
    pub latency: Duration,
}

/// A small deterministic generator (xorshift64*): jitter needs spread, not
/// secrecy, and a seed per member keeps tests reproducible.
#[derive(Clone, Debug)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// A value in `0..bound` (0 if `bound` is 0).
    fn below(&mut self, bound: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let nanos = bound.as_nanos() as u64;
        if nanos == 0 { Duration::ZERO } else { Duration::from_nanos(r % nanos) }
    }
}

/// Checks one backend until the report channel closes.
pub(crate) async fn run<P: Probe>(
    member: MemberRef,
    check: HealthCheck,
    mut probe: P,
    mut jitter: Jitter,
    reports: mpsc::Sender<Report>,
) {
    let mut next = Instant::now() + jitter.below(check.interval);
    loop {
        sleep_until(next).await;
        let started = Instant::now();
        let outcome = timeout(check.timeout, probe.check()).await.unwrap_or(Outcome::Timeout);
        let latency = started.elapsed();
        if reports.send(Report { member, outcome, latency }).await.is_err() {
            return;
        }
        let extra = jitter.below(check.interval * JITTER_PERCENT as u32 / 100);
        next = started + check.interval + extra;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::health::{CheckKind, InitialState};
    use crate::health::tracker::{State, Tracker};
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// What the scripted backend does on each check.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Pass,
        Refuse,
        /// Never answers.
        Hang,
    }

    struct Scripted {
        steps: VecDeque<Step>,
        /// When each check started.
        starts: Arc<Mutex<Vec<Instant>>>,
    }

    impl Probe for Scripted {
        async fn check(&mut self) -> Outcome {
            self.starts.lock().unwrap().push(Instant::now());
            match self.steps.pop_front().unwrap_or(Step::Pass) {
                Step::Pass => Outcome::Passed { http_status: None },
                Step::Refuse => Outcome::Refused,
                Step::Hang => std::future::pending().await,
            }
        }
    }

    const INTERVAL: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_millis(300);

    fn check(fails: u32, passes: u32, initial: InitialState) -> HealthCheck {
        HealthCheck { kind: CheckKind::Tcp, interval: INTERVAL, timeout: TIMEOUT, fails, passes, initial, ..HealthCheck::unchecked() }
    }

    /// A report and what it adds up to: the state machine the supervisor
    /// counts reports with, after counting this one.
    struct Counted {
        outcome: Outcome,
        state: State,
        fails: u32,
        passes: u32,
        changes: u32,
        changed: bool,
    }

    /// Runs a checker over `steps` and returns its first `n` reports, counted
    /// in order from the check's initial state, with the (virtual) time each
    /// arrived, and when each check started.
    async fn script(steps: &[Step], check: HealthCheck, n: usize) -> (Vec<(Duration, Counted)>, Vec<Duration>) {
        let t0 = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let probe = Scripted { steps: steps.iter().copied().collect(), starts: starts.clone() };
        let (tx, mut rx) = mpsc::channel(4);
        let mut tracker = Tracker::new(check.initial, check.fails, check.passes);
        let task = tokio::spawn(run(MemberRef { vip: 0, backend: 0 }, check, probe, Jitter::new(42), tx));
        let mut out = Vec::new();
        while out.len() < n {
            let r = rx.recv().await.expect("checker stopped");
            assert_eq!(r.member, MemberRef { vip: 0, backend: 0 });
            let changed = tracker.record(r.outcome.passed()).is_some();
            let counted = Counted {
                outcome: r.outcome,
                state: tracker.state,
                fails: tracker.fails,
                passes: tracker.passes,
                changes: tracker.changes,
                changed,
            };
            out.push((t0.elapsed(), counted));
        }
        task.abort();
        let starts = starts.lock().unwrap().iter().map(|s| *s - t0).collect();
        (out, starts)
    }

    #[tokio::test(start_paused = true)]
    async fn marked_down_after_fails_consecutive_failures() {
        let (reports, starts) = script(&[Step::Pass, Step::Refuse, Step::Refuse, Step::Refuse], check(3, 1, InitialState::Up), 4).await;
        let states: Vec<(State, u32, bool)> = reports.iter().map(|(_, r)| (r.state, r.fails, r.changed)).collect();
        assert_eq!(states, [(State::Up, 0, false), (State::Up, 1, false), (State::Up, 2, false), (State::Down, 3, true)]);
        assert_eq!(reports[3].1.outcome, Outcome::Refused);
        // The first check lands inside the first interval; later ones are an
        // interval apart plus at most 10 % jitter.
        assert!(starts[0] < INTERVAL, "{starts:?}");
        for w in starts.windows(2) {
            let gap = w[1] - w[0];
            assert!(gap >= INTERVAL && gap <= INTERVAL + INTERVAL / 10, "{starts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hang_fails_at_the_timeout_and_never_blocks_the_next_check() {
        let (reports, starts) = script(&[Step::Hang, Step::Hang, Step::Pass], check(2, 1, InitialState::Up), 3).await;
        assert_eq!(reports[0].1.outcome, Outcome::Timeout);
        // The result of a hung check arrives exactly `timeout` after it started.
        assert_eq!(reports[0].0, starts[0] + TIMEOUT);
        assert_eq!(reports[1].0, starts[1] + TIMEOUT);
        assert_eq!((reports[1].1.state, reports[1].1.changed), (State::Down, true));
        assert_eq!((reports[2].1.state, reports[2].1.changed), (State::Up, true));
        // Worst case to mark down: (fails - 1) intervals with jitter + timeout after the first failing check.
        let bound = starts[0] + (INTERVAL + INTERVAL / 10) + TIMEOUT;
        assert!(reports[1].0 <= bound, "{:?} > {bound:?}", reports[1].0);
    }

    #[tokio::test(start_paused = true)]
    async fn flapping_does_not_change_state() {
        let steps: Vec<Step> = (0..20).map(|i| if i % 2 == 0 { Step::Refuse } else { Step::Pass }).collect();
        let (reports, _) = script(&steps, check(2, 2, InitialState::Up), 20).await;
        assert!(reports.iter().all(|(_, r)| r.state == State::Up && !r.changed && r.changes == 0));
    }

    #[tokio::test(start_paused = true)]
    async fn initially_down_until_passes_consecutive_passes() {
        let steps = [Step::Pass, Step::Refuse, Step::Pass, Step::Pass, Step::Pass];
        let (reports, _) = script(&steps, check(1, 3, InitialState::Down), 5).await;
        let states: Vec<State> = reports.iter().map(|(_, r)| r.state).collect();
        assert_eq!(states, [State::Down, State::Down, State::Down, State::Down, State::Up]);
        assert_eq!(reports[4].1.passes, 3);
    }
}
