//! Turns checker reports into the dataplane: the `HEALTH` entry of the pair
//! after every check, and on a state change the pair's `MEMBERS` entry (a
//! down backend's recorded flows re-hash) and the VIP's new ring, of which
//! only the slots that differ from the kernel's are written. Rings are built
//! one VIP at a time, each for all the changes its VIP gathered meanwhile
//! (see [`Supervisor::record`]), on a blocking thread.
//!
//! A supervisor starts from the kernel's current rings and the previous
//! health entries (after a reload or an agent restart), so a backend keeps
//! its state and an unchanged VIP gets zero ring writes.
//!
//! Health state has one owner: the supervisor's [`pair::PairHealth`] per
//! (VIP, backend), which counts results with the [`crate::health::tracker`]
//! state machine. Checkers only report probe outcomes; the kernel's `HEALTH`
//! map is the copy written from it, read back only when a supervisor starts.
//!
//! - `start`: [`Supervisor::new`], the state of every pair and what the kernel must hold.
//! - here: counting reports ([`Supervisor::record`]) and queueing ring builds.
//! - `settle`: a VIP's new ring after its changes, and their log lines.
//! - `tasks`: the checker tasks and the one that applies their reports.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use lb_common::health::{HealthEntry, HealthKey};

use crate::config::VipConfig;
use crate::health::checker::Report;
use crate::health::probe::Outcome;
use crate::health::tracker::State;
use crate::plan::select::{self, Tier};

mod pair;
mod settle;
mod start;
mod tasks;
#[cfg(test)]
mod tests;

pub(crate) use tasks::{SharedSupervisor, spawn};

/// Reports in flight before checkers wait for the supervisor.
const REPORT_QUEUE: usize = 256;

/// Where the supervisor writes: the kernel's maps (reconcile implements this
/// for every map store), or a recorder in tests. Health owns this trait so
/// that it needs no dataplane.
pub trait HealthWriter {
    /// Makes the kernel's ring of VIP row `row` equal `ring`, writing only
    /// the slots that differ; returns how many it wrote.
    fn write_ring(&mut self, row: u32, ring: &[u32]) -> Result<usize>;
    fn write_health(&mut self, key: HealthKey, entry: HealthEntry) -> Result<()>;
    /// Whether recorded flows of (row, backend) may stay on it.
    fn write_member(&mut self, key: HealthKey, usable: bool) -> Result<()>;
}

/// Health entries of a previous supervisor (from the `HEALTH` map): pairs
/// found there keep their state instead of starting from `initial`.
pub(crate) type PriorHealth = BTreeMap<HealthKey, HealthEntry>;

#[derive(Clone)]
struct VipState {
    config: VipConfig,
    row: u32,
    /// Backend ids, by index in `config.backends`.
    ids: Vec<u32>,
    /// Health of each backend, by index in `config.backends`.
    pairs: Vec<pair::PairHealth>,
    tier: Tier,
    /// State changes counted but not yet in the ring (see [`Supervisor::settle_next`]).
    unsettled: Vec<Change>,
}

impl VipState {
    /// Whether each backend (by index in `config.backends`) is up.
    fn up(&self) -> Vec<bool> {
        self.pairs.iter().map(pair::PairHealth::up).collect()
    }
}

/// A state change of one backend, as counted, waiting for its VIP's ring.
#[derive(Clone, Debug)]
struct Change {
    /// Index in the VIP's `config.backends`.
    backend: usize,
    state: State,
    outcome: Outcome,
    /// Consecutive failed and passed checks when it changed (for its log line).
    fails: u32,
    passes: u32,
}

/// Told of every check: VIP name, backend address, how long it took.
pub(crate) type CheckObserver = Box<dyn Fn(&str, IpAddr, std::time::Duration) + Send>;

/// The health of every VIP's backends and the rings that follow from it.
pub struct Supervisor<W: HealthWriter> {
    /// Unique per supervisor: report tasks of the one a reload replaced
    /// see a different number and stop (their indices are the old config's).
    generation: u64,
    vips: Vec<VipState>,
    /// VIPs with unsettled changes, longest waiting first, each once.
    waiting: std::collections::VecDeque<usize>,
    ring_size: u32,
    writer: W,
    observer: Option<CheckObserver>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl<W: HealthWriter> Supervisor<W> {
    /// Calls `observer` for every check from now on (the latency histogram).
    pub fn observe_checks(&mut self, observer: CheckObserver) {
        self.observer = Some(observer);
    }

    /// Recomputes a VIP's ring from its `up` set and writes the changed
    /// slots; returns how many and the previous tier.
    fn reselect(vip: &mut VipState, ring_size: u32, writer: &mut W) -> Result<(usize, Tier)> {
        let by_address: Vec<(IpAddr, u32)> = vip.config.backends.iter().map(|b| b.address).zip(vip.ids.iter().copied()).collect();
        let id_of = |a: IpAddr| by_address.iter().find(|(b, _)| *b == a).map_or(lb_common::NO_BACKEND, |(_, id)| *id);
        let up = vip.up();
        let selection = select::ring(&vip.config, ring_size, &id_of, &|i| up[i]);
        Self::write_selection(vip, &selection.ring, selection.tier, writer)
    }

    fn write_selection(vip: &mut VipState, ring: &[u32], tier: Tier, writer: &mut W) -> Result<(usize, Tier)> {
        let written = writer.write_ring(vip.row, ring)?;
        let before = std::mem::replace(&mut vip.tier, tier);
        Ok((written, before))
    }

    /// Counts one report: the pair's `HEALTH` entry, and on a state change
    /// the VIP's ring.
    pub fn apply(&mut self, r: &Report) -> Result<()> {
        self.record(std::slice::from_ref(r))?;
        while self.settle_next()? {}
        Ok(())
    }

    /// Counts reports in arrival order: each pair's `HEALTH` entry is
    /// written now, except after a state change, which waits for the VIP's
    /// ring ([`Self::settle_next`]). A ring build costs milliseconds, so
    /// changes are not settled one by one: all the changes a VIP gathers
    /// while other VIPs' rings are being built share one build (a backend
    /// shared by many VIPs, or thousands of checks failing at once, would
    /// otherwise cost one build per change and keep a core busy for minutes).
    pub fn record(&mut self, reports: &[Report]) -> Result<()> {
        for r in reports {
            let vip = self.vips.get_mut(r.member.vip).context("report for an unknown VIP")?;
            let b = r.member.backend;
            anyhow::ensure!(b < vip.pairs.len(), "report for backend {b} of VIP {}, which has {}", vip.config.name, vip.pairs.len());
            if let Some(observe) = &self.observer {
                observe(&vip.config.name, vip.config.backends[b].address, r.latency);
            }
            let pair = &mut vip.pairs[b];
            let changed = pair
                .count(&r.outcome, now_unix_ms())
                .with_context(|| format!("report for backend {b} of VIP {}, which is not checked", vip.config.name))?;
            let key = HealthKey { row: vip.row, backend_id: vip.ids[b] };
            let Some(state) = changed else {
                // An unsettled change of this backend writes its entry once the ring has it.
                if !vip.unsettled.iter().any(|u| u.backend == b) {
                    self.writer.write_health(key, pair.entry())?;
                }
                continue;
            };
            // Down: its recorded flows re-hash from now on (onto the ring that
            // still names it for a moment: they re-hash again once it changes).
            if state == State::Down {
                self.writer.write_member(key, false)?;
            }
            if vip.unsettled.is_empty() {
                self.waiting.push_back(r.member.vip);
            }
            let (fails, passes) = pair.streaks();
            vip.unsettled.push(Change { backend: b, state, outcome: r.outcome.clone(), fails, passes });
        }
        Ok(())
    }

    /// Settles the VIP that has waited longest; returns whether others wait.
    pub fn settle_next(&mut self) -> Result<bool> {
        if let Some(vi) = self.waiting.pop_front() {
            let changes = std::mem::take(&mut self.vips[vi].unsettled);
            self.settle(vi, &changes)?;
        }
        Ok(!self.waiting.is_empty())
    }

    /// Whether state changes wait for their VIP's ring.
    pub fn unsettled(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The VIP addresses with at least one VIP that has a healthy backend
    /// (serving from its primaries or backups): what may be announced.
    /// Backends (per VIP) up and down now, for the cluster's view of this host.
    pub fn backends_up_down(&self) -> (usize, usize) {
        let up = self.vips.iter().flat_map(|v| v.pairs.iter()).filter(|p| p.up()).count();
        let all = self.vips.iter().map(|v| v.pairs.len()).sum::<usize>();
        (up, all - up)
    }

    pub fn serving_addresses(&self) -> std::collections::BTreeSet<IpAddr> {
        self.vips
            .iter()
            .filter(|v| matches!(v.tier, Tier::Primary | Tier::Backup))
            .map(|v| v.config.address)
            .collect()
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }
}

