//! The supervisor's tasks: the checkers, and the one that applies their
//! reports (rings built on a blocking thread, never on the runtime's workers).

use std::net::SocketAddr;

use anyhow::Result;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{HealthWriter, REPORT_QUEUE, Supervisor};
use crate::config::Config;
use crate::config::health::CheckKind;
use crate::health::checker::{self, Jitter, MemberRef, Report};
use crate::health::probe::NetProbe;

/// Applies the checkers' reports to `supervisor` until they stop, or until
/// a reload replaces the supervisor (a report held by this task names pairs
/// by the old config's indices: applying it would give one backend another's
/// result). Reports are recorded as they come; rings are built one VIP at a
/// time on a blocking thread (milliseconds each, never on the runtime's
/// workers that run the checks), taking in between whatever has queued.
pub(super) async fn apply_reports<W: HealthWriter + Send + 'static>(
    mut rx: mpsc::Receiver<Report>,
    supervisor: SharedSupervisor<W>,
    generation: u64,
) {
    // Runs `f` on the supervisor unless a reload replaced it.
    let with = move |supervisor: &SharedSupervisor<W>, f: &mut dyn FnMut(&mut Supervisor<W>) -> Result<bool>| -> Option<bool> {
        let mut s = supervisor.lock().unwrap_or_else(|e| e.into_inner());
        if s.generation != generation {
            return None;
        }
        Some(f(&mut s).unwrap_or_else(|e| {
            tracing::error!("health: {e:#}");
            s.unsettled()
        }))
    };
    let mut batch = Vec::with_capacity(REPORT_QUEUE);
    let Some(mut unsettled) = with(&supervisor, &mut |s| Ok(s.unsettled())) else { return };
    loop {
        batch.clear();
        if !unsettled {
            if rx.recv_many(&mut batch, REPORT_QUEUE).await == 0 {
                return;
            }
        } else {
            while batch.len() < REPORT_QUEUE
                && let Ok(r) = rx.try_recv()
            {
                batch.push(r);
            }
        }
        let Some(waits) = with(&supervisor, &mut |s| s.record(&batch).map(|()| s.unsettled())) else { return };
        unsettled = waits;
        if unsettled {
            let s = supervisor.clone();
            let settled = move || {
                let waits = with(&s, &mut |s| s.settle_next());
                if waits == Some(false) {
                    // The end of a burst of ring builds: hand their freed
                    // buffers (a ring is 256 KiB at the default size) back to
                    // the kernel, or glibc keeps them in this thread's arena.
                    // SAFETY: malloc_trim only releases free heap pages.
                    unsafe { libc::malloc_trim(0) };
                }
                waits
            };
            match tokio::task::spawn_blocking(settled).await {
                Ok(Some(waits)) => unsettled = waits,
                _ => return,
            }
        }
    }
}

/// A supervisor shared by its report task and the reload path (which
/// replaces it while holding the lock, so no health change lands mid-reload).
pub(crate) type SharedSupervisor<W> = std::sync::Arc<std::sync::Mutex<Supervisor<W>>>;

/// Starts one checker per checked backend of every VIP and a task applying
/// their reports. Abort the returned handles to stop checking.
pub(crate) fn spawn<W: HealthWriter + Send + 'static>(config: &Config, supervisor: SharedSupervisor<W>) -> Vec<JoinHandle<()>> {
    let (tx, rx) = mpsc::channel::<Report>(REPORT_QUEUE);
    let mut tasks = Vec::new();
    // Checkers only probe: the state they lead to is the supervisor's, kept
    // across reloads and restarts.
    let (generation, ids) = {
        let s = supervisor.lock().unwrap_or_else(|e| e.into_inner());
        (s.generation, s.vips.iter().map(|v| v.ids.clone()).collect::<Vec<_>>())
    };
    for (vi, v) in config.vips.iter().enumerate() {
        for (bi, b) in v.backends.iter().enumerate() {
            if b.check.kind == CheckKind::None {
                continue;
            }
            let port = b.check.port.unwrap_or(v.port);
            let probe = if b.check.dsr {
                NetProbe::dsr(SocketAddr::new(v.address, port), ids[vi][bi], &b.check)
            } else {
                NetProbe::new(SocketAddr::new(b.address, port), &b.check)
            };
            // Seeded by the pair, so restarts and LB hosts spread checks alike.
            let seed = lb_common::hash::hash_words(vi as u32, &crate::maglev::backend_identity(b.address)) as u64
                | ((bi as u64) << 32);
            let member = MemberRef { vip: vi, backend: bi };
            tasks.push(tokio::spawn(checker::run(member, b.check.clone(), probe, Jitter::new(seed), tx.clone())));
        }
    }
    drop(tx);
    tasks.push(tokio::spawn(apply_reports(rx, supervisor, generation)));
    tasks
}
