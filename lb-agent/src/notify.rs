//! systemd's notify protocol (`Type=notify`, `WatchdogSec=`): READY=1 when
//! the balancer is attached and its maps written, RELOADING=1 / READY=1
//! around a reload, STOPPING=1, and watchdog keep-alives from the main loop.
//! Every call is a no-op without `NOTIFY_SOCKET` (not under systemd), and a
//! failed send is logged, never fatal: the service manager is told, not asked.
//!
//! The watchdog is how a hung agent loses its routes: the agent asks systemd
//! for the config's bound (`announce.liveness`, sent as `WATCHDOG_USEC`), a
//! main loop that stops answering is killed after it, and the unit's
//! `ExecStopPost=lb-agent withdraw` removes the routes (see `contrib/systemd`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// The longest a reload may keep the main loop from sending keep-alives:
/// next hops resolve within 5 s, a reload's answer is awaited 30 s by
/// `lb-agent reload`; beyond this the agent is hung, not busy.
pub(crate) const RELOAD_BOUND: Duration = Duration::from_secs(60);

/// Set after the first failed send: keep-alives go every few seconds, and
/// one warning says all there is to say.
static WARNED: AtomicBool = AtomicBool::new(false);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states)
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        let what: Vec<String> = states.iter().map(ToString::to_string).collect();
        tracing::warn!(
            "telling systemd {}: {e} (is NOTIFY_SOCKET {:?} the service manager's?); further failures are not logged",
            what.join(" "),
            std::env::var_os("NOTIFY_SOCKET")
        );
    }
}

fn usec(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
fn managed() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The watchdog of a running agent: its bound, and keep-alives at half of it.
#[derive(Debug)]
pub(crate) struct Watchdog {
    bound: Option<Duration>,
}

impl Watchdog {
    /// READY=1 (with `status` as STATUS=), then the watchdog bound: the
    /// config's `liveness` if it sets one and a service manager listens
    /// (it replaces the unit's `WatchdogSec=`), else the unit's own.
    pub(crate) fn ready(status: &str, liveness: Option<Duration>) -> Watchdog {
        let mut watchdog = Watchdog { bound: None };
        watchdog.ready_with_bound(status, liveness);
        watchdog
    }

    /// READY=1 and the bound in one message (also after a reload widened
    /// it), so the config, not the unit, owns the bound when it sets one,
    /// and nobody sees the agent ready under the old bound.
    fn ready_with_bound(&mut self, status: &str, liveness: Option<Duration>) {
        self.bound = liveness.filter(|_| managed()).or_else(sd_notify::watchdog_enabled);
        let mut states = vec![NotifyState::Ready, NotifyState::Status(status)];
        if let Some(bound) = self.bound.filter(|_| managed()) {
            states.extend([NotifyState::WatchdogUsec(usec(bound)), NotifyState::Watchdog]);
        }
        send(&states);
    }

    /// How often the main loop sends [`Watchdog::keep_alive`] (None: no watchdog).
    pub(crate) fn period(&self) -> Option<Duration> {
        self.bound.map(|b| b / 2)
    }

    /// WATCHDOG=1: the main loop is alive.
    pub(crate) fn keep_alive(&self) {
        if self.bound.is_some() {
            send(&[NotifyState::Watchdog]);
        }
    }

    /// RELOADING=1 with the monotonic time systemd needs to match it; the
    /// bound widens to [`RELOAD_BOUND`] while the reload holds the main loop.
    pub(crate) fn reloading(&self) {
        let mut states = vec![NotifyState::Reloading];
        states.extend(NotifyState::monotonic_usec_now().ok());
        if self.bound.is_some() {
            states.extend([NotifyState::WatchdogUsec(usec(RELOAD_BOUND)), NotifyState::Watchdog]);
        }
        send(&states);
    }

    /// READY=1 after a reload (applied or refused), with the bound of the
    /// config that now runs.
    pub(crate) fn reloaded(&mut self, status: &str, liveness: Option<Duration>) {
        self.ready_with_bound(status, liveness);
    }
}

/// STOPPING=1: the agent is shutting down on purpose.
pub(crate) fn stopping(why: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(why)]);
}
