//! The main loop of a running agent: signals, control-socket requests
//! (reload, its dry run, drain/undrain, maintenance) and a maintenance drain.

use std::future::Future;
use std::pin::Pin;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::{cluster, reload::{drain, dry_run, reload}, Running};
use crate::{
    announce::drain::Drained,
    control::{self, Answer, Request},
};

/// A maintenance drain in progress: the request, answered when it ends.
type Draining = (control::Pending, Pin<Box<dyn Future<Output = Drained>>>);

/// Serves reload requests (SIGHUP, the control socket's task) until
/// SIGINT/SIGTERM or the end of a maintenance drain. A signal during a drain
/// stops the agent at once (the routes stay withdrawn).
pub(super) async fn serve(running: &mut Running, mut requests: mpsc::Receiver<control::Pending>) -> &'static str {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let mut draining: Option<Draining> = None;
    // How often this host's published state (health, announcements) is refreshed.
    let mut publish = tokio::time::interval(std::time::Duration::from_secs(1));
    // From this loop, so that a loop that stops turning stops them.
    let mut keep_alive = keep_alive_timer(running);
    let stop = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break "SIGINT",
            _ = term.recv() => break "SIGTERM",
            _ = async { keep_alive.as_mut().expect("guarded by is_some").tick().await }, if keep_alive.is_some() => {
                running.watchdog.keep_alive();
                beat_guard(running);
            }
            _ = hup.recv() => {
                if draining.is_some() {
                    tracing::warn!("SIGHUP ignored: in maintenance, the agent stops once drained");
                } else {
                    let _ = reload(running, None).await;
                    keep_alive = keep_alive_timer(running);
                    cluster::refresh(running);
                }
            }
            Some(doc) = cluster::next_document(&mut running.cluster) => {
                if draining.is_some() {
                    tracing::warn!("config source: revision {} not applied: in maintenance, the agent stops once drained", doc.revision);
                } else {
                    cluster::apply(running, doc).await;
                    keep_alive = keep_alive_timer(running);
                }
            }
            _ = publish.tick(), if running.cluster.is_some() => cluster::refresh(running),
            Some(pending) = requests.recv() => {
                if draining.is_some() {
                    pending.answer(Answer::error("in maintenance: the routes are withdrawn and the agent stops once drained"));
                    continue;
                }
                let answer = |result: anyhow::Result<String>| match result {
                    Ok(summary) => Answer::ok(summary),
                    Err(e) => Answer::error(format!("{e:#}")),
                };
                match pending.request {
                    Request::Reload { dry_run: false } => {
                        let result = reload(running, None).await;
                        keep_alive = keep_alive_timer(running);
                        pending.answer(answer(result));
                        cluster::refresh(running);
                    }
                    Request::Reload { dry_run: true } => {
                        let result = dry_run(running).await;
                        pending.answer(answer(result));
                    }
                    Request::Drain { .. } | Request::Undrain { .. } => {
                        let result = drain(running, &pending.request).await;
                        pending.answer(answer(result));
                        cluster::refresh(running);
                    }
                    Request::Maintenance => match maintenance(running).await {
                        Some(drain) => draining = Some((pending, drain)),
                        None => {
                            pending.answer(Answer::ok("no [announce] table, nothing to withdraw; stopping"));
                            return "maintenance";
                        }
                    },
                }
            }
            drained = async { draining.as_mut().expect("guarded by is_some").1.as_mut().await }, if draining.is_some() => {
                tracing::info!("maintenance: routes withdrawn, {drained}; stopping");
                let (pending, _) = draining.take().expect("guarded by is_some");
                pending.answer(Answer::ok(format!("routes withdrawn, {drained}; stopping")));
                return "maintenance";
            }
        }
    };
    if let Some((pending, _)) = draining {
        tracing::info!("{stop} during the maintenance drain: stopping now; the routes stay withdrawn");
        pending.answer(Answer::ok(format!("routes withdrawn; {stop} ended the drain early; stopping")));
    }
    stop
}

/// Ticks at the shorter keep-alive period of systemd's watchdog and the
/// liveness guard (None: neither runs). The first tick is at once: READY=1
/// or a reload has just been sent.
fn keep_alive_timer(running: &Running) -> Option<tokio::time::Interval> {
    let guard = running.guard.as_ref().map(crate::announce::guard::Guard::period);
    let period = match (running.watchdog.period(), guard) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    period.map(|period| {
        let mut timer = tokio::time::interval(period);
        // A late tick (the loop was busy) is sent once, not in a burst.
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    })
}

/// A heartbeat to the liveness guard with the `[announce]` settings that
/// run now; a reload that removed the table ends the guard (nothing to guard).
fn beat_guard(running: &mut Running) {
    match (running.guard.as_mut(), running.config.announce.as_ref()) {
        (Some(guard), Some(announce)) => guard.beat(announce),
        (Some(_), None) => {
            tracing::info!("[announce] removed: the liveness guard has no routes to guard and stops");
            if let Some(guard) = running.guard.take() {
                guard.clean();
            }
        }
        (None, _) => {}
    }
}

/// `lb-agent maintenance`: withdraws the routes and returns the drain to
/// wait for, which the main loop awaits alongside signals (None: nothing
/// is announced; stop at once).
async fn maintenance(running: &Running) -> Option<Pin<Box<dyn Future<Output = Drained>>>> {
    let Some(announcer) = running.announcer.as_ref() else {
        tracing::info!("maintenance: no [announce] table, nothing to withdraw; stopping");
        return None;
    };
    announcer.withdraw_all("maintenance").await;
    let settings = running.config.announce.clone().unwrap_or_else(|| unreachable!("an announcer has settings"));
    let bpffs_dir = running.config.lb.bpffs_dir.clone();
    Some(Box::pin(async move { crate::announce::drain::wait(&bpffs_dir, settings.drain_timeout, settings.drain_quiet).await }))
}
