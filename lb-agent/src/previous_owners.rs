//! The drain timer of second chance: once a second it forgets the previous
//! owners in `PREVIOUS` whose `lb.previous_owner_window` has passed (each
//! depth of a row by its own change, [`MapStore::drain_previous`]; the
//! window and the rows are in the store's shared ledger, so a reload
//! changes them without a new timer).
//! A drained previous owner's id and `BACKENDS` entry go at the next reload.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::dataplane::store::MapStore;

/// How often the timer looks: the window's resolution.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// Runs the timer on its own handle on the maps until aborted.
pub(crate) fn spawn<S: MapStore + Send + 'static>(mut store: S) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            match store.drain_previous(Instant::now()) {
                Ok(rows) if !rows.is_empty() => {
                    tracing::info!("previous_owner_window passed: ring rows {rows:?} forget their expired previous owners");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("clearing drained previous owners failed (tried again in {TICK:?}): {e:#}"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::test_config::{TestConfig, TestVip};
    use crate::dataplane::{memory::MemoryStore, reconcile, ResolvedBackend};
    use lb_common::NO_BACKEND;

    /// A "backend" VIP on `backends` whose previous owners drain after 1 s.
    fn one_second(backends: &[&str]) -> String {
        let web = TestVip::new("web", "192.0.2.10:80").set("flow_state", "backend").backends(backends.iter().copied());
        TestConfig::new().ring_size(13).lb("previous_owner_window", "1s").vip(web).to_toml()
    }

    fn applied(store: &mut MemoryStore, text: &str) {
        let config = parse(text, "t.toml").unwrap();
        let plan = crate::plan::plan_keeping(&config, &store.kept().unwrap()).unwrap();
        let resolved = plan
            .backends
            .iter()
            .map(|b| (b.id, ResolvedBackend { address: b.address, next_hop_mac: crate::config::MacAddr([2, 0, 0, 0, 0, b.id as u8]) }))
            .collect();
        reconcile::apply(store, &config, &plan, &resolved, None).unwrap();
    }

    #[tokio::test]
    async fn previous_owners_clear_once_the_window_has_passed() {
        let mut store = MemoryStore::default();
        applied(&mut store, &one_second(&["198.51.100.11", "198.51.100.12"]));
        applied(&mut store, &one_second(&["198.51.100.11"]));
        let has_previous = |s: &MemoryStore| s.maps().previous.values().flatten().flatten().any(|&id| id != NO_BACKEND);
        assert!(has_previous(&store), "the removal gave previous owners");
        let started = Instant::now();
        let timer = spawn(store.clone());
        // Bounded: the window (1 s) plus a few ticks.
        while has_previous(&store) && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        timer.abort();
        assert!(!has_previous(&store), "still there after {:?}", started.elapsed());
        assert!(started.elapsed() >= Duration::from_millis(900), "cleared before the window passed: {:?}", started.elapsed());
    }
}
