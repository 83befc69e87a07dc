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

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use lb_common::health::{HEALTH_DOWN, HEALTH_UNCHECKED, HEALTH_UP, HealthEntry, HealthKey, HealthReason};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{Config, VipConfig};
use crate::health::checker::{self, Jitter, MemberRef, Report};
use crate::health::probe::NetProbe;
use crate::plan::select::{self, Tier};
use crate::config::health::{CheckKind, InitialState};
use crate::health::tracker::{State, Tracker};
use crate::plan::Plan;

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
pub type PriorHealth = BTreeMap<HealthKey, HealthEntry>;

#[derive(Clone)]
struct VipState {
    config: VipConfig,
    row: u32,
    /// Backend ids, by index in `config.backends`.
    ids: Vec<u32>,
    up: Vec<bool>,
    entries: Vec<HealthEntry>,
    tier: Tier,
    /// State changes counted but not yet in the ring (see [`Supervisor::settle_next`]).
    unsettled: Vec<Report>,
}

/// Told of every check: VIP name, backend address, how long it took.
pub type CheckObserver = Box<dyn Fn(&str, IpAddr, std::time::Duration) + Send>;

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
    /// Writes the health entries, the members and the rings that follow
    /// from them (only the slots that differ from the kernel's). A pair with
    /// a checked entry in `prior` keeps that state; others start from the
    /// configured initial state.
    ///
    /// On a reload, `replaced` is the supervisor being replaced: a VIP the
    /// plan left without a ring (unchanged, see `plan::Previous`) takes over
    /// its state there, since the kernel holds that state's ring and health
    /// entries already, and nothing of it is written.
    pub fn new(config: &Config, plan: &Plan, mut writer: W, prior: &PriorHealth, replaced: Option<&Self>) -> Result<Self> {
        let since = now_unix_ms();
        let mut vips = Vec::with_capacity(config.vips.len());
        for v in &config.vips {
            let planned = plan.vip(&v.name).with_context(|| format!("VIP {} missing from the plan", v.name))?;
            let carried = replaced
                .filter(|_| planned.all_up.is_none())
                .and_then(|p| p.vips.iter().find(|s| s.row == planned.row && s.config == *v));
            if let Some(state) = carried {
                vips.push(state.clone());
                continue;
            }
            let ids: Vec<u32> = v.backends.iter().map(|b| plan.backend_id(b.address).expect("every backend has an id")).collect();
            let previous = |i: usize| {
                prior
                    .get(&HealthKey { row: planned.row, backend_id: ids[i] })
                    .filter(|e| v.backends[i].check.kind != CheckKind::None && (e.state == HEALTH_UP || e.state == HEALTH_DOWN))
            };
            let up: Vec<bool> = v
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| match previous(i) {
                    Some(e) => e.state == HEALTH_UP,
                    None => b.check.kind == CheckKind::None || b.check.initial == InitialState::Up,
                })
                .collect();
            let entries: Vec<HealthEntry> = v
                .backends
                .iter()
                .zip(&up)
                .enumerate()
                .map(|(i, (b, &up))| match previous(i) {
                    Some(e) => *e,
                    None => HealthEntry {
                    since_unix_ms: since,
                    state: match (b.check.kind, up) {
                        (CheckKind::None, _) => HEALTH_UNCHECKED,
                        (_, true) => HEALTH_UP,
                        (_, false) => HEALTH_DOWN,
                    },
                    reason: if b.check.kind == CheckKind::None { HealthReason::NotChecked } else { HealthReason::Initial } as u8,
                    ..HealthEntry::default()
                    },
                })
                .collect();
            // What the kernel holds already is not written again (a reload
            // of a large config would otherwise cost two syscalls per pair).
            let before = replaced.and_then(|p| p.vips.iter().find(|s| s.row == planned.row));
            for ((id, e), &up) in ids.iter().zip(&entries).zip(&up) {
                let key = HealthKey { row: planned.row, backend_id: *id };
                if prior.get(&key) != Some(e) {
                    writer.write_health(key, *e)?;
                }
                let was_up = before.and_then(|s| s.ids.iter().position(|x| x == id).map(|i| s.up[i]));
                if was_up != Some(up) {
                    writer.write_member(key, up)?;
                }
            }
            let all_up = up.iter().all(|u| *u);
            let mut state = VipState { config: v.clone(), row: planned.row, ids, up, entries, tier: Tier::Primary, unsettled: Vec::new() };
            // All up: the plan's ring is the one `select::ring` would build.
            let (written, _) = match planned.all_up.as_ref().filter(|_| all_up) {
                Some(selection) => Self::write_selection(&mut state, &selection.ring, selection.tier, &mut writer)?,
                None => Self::reselect(&mut state, plan.ring_size, &mut writer)?,
            };
            if state.tier != Tier::Primary {
                tracing::warn!("vip {}: serves from {}", v.name, state.tier.as_str());
            }
            tracing::info!("vip {}: {written} ring slots written", v.name);
            vips.push(state);
        }
        static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let generation = GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A VIP carried over from the replaced supervisor keeps its unsettled changes.
        let waiting = (0..vips.len()).filter(|&i| !vips[i].unsettled.is_empty()).collect();
        Ok(Supervisor { generation, vips, waiting, ring_size: plan.ring_size, writer, observer: None })
    }

    /// Calls `observer` for every check from now on (the latency histogram).
    pub fn observe_checks(&mut self, observer: CheckObserver) {
        self.observer = Some(observer);
    }

    /// Recomputes a VIP's ring from its `up` set and writes the changed
    /// slots; returns how many and the previous tier.
    fn reselect(vip: &mut VipState, ring_size: u32, writer: &mut W) -> Result<(usize, Tier)> {
        let by_address: Vec<(IpAddr, u32)> = vip.config.backends.iter().map(|b| b.address).zip(vip.ids.iter().copied()).collect();
        let id_of = |a: IpAddr| by_address.iter().find(|(b, _)| *b == a).map_or(lb_common::NO_BACKEND, |(_, id)| *id);
        let up = vip.up.clone();
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
            anyhow::ensure!(b < vip.entries.len(), "report for backend {b} of VIP {}, which has {}", vip.config.name, vip.entries.len());
            if let Some(observe) = &self.observer {
                observe(&vip.config.name, vip.config.backends[b].address, r.latency);
            }
            let entry = &mut vip.entries[b];
            entry.consecutive_fails = r.fails;
            entry.consecutive_passes = r.passes;
            entry.changes = r.changes;
            entry.reason = r.outcome.reason() as u8;
            entry.http_status = r.outcome.http_status().unwrap_or(0);
            entry.state = if r.state == State::Up { HEALTH_UP } else { HEALTH_DOWN };
            if r.changed {
                entry.since_unix_ms = now_unix_ms();
            }
            let entry = *entry;
            let key = HealthKey { row: vip.row, backend_id: vip.ids[b] };
            if !r.changed {
                // An unsettled change of this backend writes its entry once the ring has it.
                if !vip.unsettled.iter().any(|u| u.member.backend == b) {
                    self.writer.write_health(key, entry)?;
                }
                continue;
            }
            vip.up[b] = r.state == State::Up;
            // Down: its recorded flows re-hash from now on (onto the ring that
            // still names it for a moment: they re-hash again once it changes).
            if !vip.up[b] {
                self.writer.write_member(key, false)?;
            }
            if vip.unsettled.is_empty() {
                self.waiting.push_back(r.member.vip);
            }
            vip.unsettled.push(r.clone());
        }
        Ok(())
    }

    /// Settles the VIP that has waited longest; returns whether others wait.
    pub fn settle_next(&mut self) -> Result<bool> {
        if let Some(vi) = self.waiting.pop_front() {
            let transitions = std::mem::take(&mut self.vips[vi].unsettled);
            self.settle(vi, &transitions)?;
        }
        Ok(!self.waiting.is_empty())
    }

    /// Whether state changes wait for their VIP's ring.
    pub fn unsettled(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// After state changes of VIP `vi`: its ring, then the members that are
    /// up (new flows may be recorded on them once the ring has them), then
    /// their health entries (once `stats` shows a state, the ring has it).
    fn settle(&mut self, vi: usize, transitions: &[Report]) -> Result<()> {
        let ring_size = self.ring_size;
        let vip = &mut self.vips[vi];
        let (written, before) = Self::reselect(vip, ring_size, &mut self.writer)?;
        let mut settled: Vec<usize> = transitions.iter().map(|r| r.member.backend).collect();
        settled.sort_unstable();
        settled.dedup();
        for &b in &settled {
            let key = HealthKey { row: vip.row, backend_id: vip.ids[b] };
            if vip.up[b] {
                self.writer.write_member(key, true)?;
            }
            self.writer.write_health(key, vip.entries[b])?;
        }
        let up_count = vip.up.iter().filter(|u| **u).count();
        let slots = match transitions.len() {
            1 => format!("{written} ring slots rewritten"),
            n => format!("{written} ring slots rewritten for {n} changes"),
        };
        for r in transitions {
            let backend = &vip.config.backends[r.member.backend];
            let role = if backend.backup { "backup " } else { "" };
            match r.state {
                State::Down => tracing::warn!(
                    vip = %vip.config.name,
                    backend = %backend.address,
                    state = "down",
                    "vip {}: {role}backend {} DOWN: {} ({} consecutive failed checks, fails = {}); {up_count}/{} backends up, serving from {}; {slots}",
                    vip.config.name,
                    backend.address,
                    r.outcome.describe(),
                    r.fails,
                    backend.check.fails,
                    vip.up.len(),
                    vip.tier.as_str()
                ),
                State::Up => tracing::info!(
                    vip = %vip.config.name,
                    backend = %backend.address,
                    state = "up",
                    "vip {}: {role}backend {} UP: {} ({} consecutive passed checks, passes = {}); {up_count}/{} backends up, serving from {}; {slots}",
                    vip.config.name,
                    backend.address,
                    r.outcome.describe(),
                    r.passes,
                    backend.check.passes,
                    vip.up.len(),
                    vip.tier.as_str()
                ),
            }
        }
        if vip.tier != before {
            match vip.tier {
                Tier::Down => tracing::warn!(
                    "vip {}: no backend is up; its packets are dropped and counted as no_backend (health.all_down = \"drop\")",
                    vip.config.name
                ),
                Tier::FailOpen => tracing::warn!(
                    "vip {}: no backend is up; sending to all primaries anyway (health.all_down = \"fail_open\")",
                    vip.config.name
                ),
                Tier::Backup => tracing::warn!("vip {}: no primary backend is up; backups take the traffic", vip.config.name),
                Tier::Primary => tracing::info!("vip {}: a primary backend is up again; new flows go to the primaries", vip.config.name),
            }
        }
        Ok(())
    }

    /// The VIP addresses with at least one VIP that has a healthy backend
    /// (serving from its primaries or backups): what may be announced.
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

/// Applies the checkers' reports to `supervisor` until they stop, or until
/// a reload replaces the supervisor (a report held by this task names pairs
/// by the old config's indices: applying it would give one backend another's
/// result). Reports are recorded as they come; rings are built one VIP at a
/// time on a blocking thread (milliseconds each, never on the runtime's
/// workers that run the checks), taking in between whatever has queued.
async fn apply_reports<W: HealthWriter + Send + 'static>(
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
pub type SharedSupervisor<W> = std::sync::Arc<std::sync::Mutex<Supervisor<W>>>;

/// Starts one checker per checked backend of every VIP and a task applying
/// their reports. Abort the returned handles to stop checking.
pub fn spawn<W: HealthWriter + Send + 'static>(config: &Config, supervisor: SharedSupervisor<W>) -> Vec<JoinHandle<()>> {
    let (tx, rx) = mpsc::channel::<Report>(REPORT_QUEUE);
    let mut tasks = Vec::new();
    // Each checker goes on from the state the supervisor holds (kept across
    // reloads and restarts), not from the configured initial state.
    let (generation, ids, trackers) = {
        let s = supervisor.lock().unwrap_or_else(|e| e.into_inner());
        let (ids, trackers): (Vec<Vec<u32>>, Vec<Vec<Tracker>>) = s
            .vips
            .iter()
            .map(|v| {
                let trackers = v
                    .config
                    .backends
                    .iter()
                    .zip(&v.up)
                    .zip(&v.entries)
                    .map(|((b, &up), e)| {
                        let state = if up { State::Up } else { State::Down };
                        Tracker::resume(state, e.consecutive_fails, e.consecutive_passes, e.changes, b.check.fails, b.check.passes)
                    })
                    .collect();
                (v.ids.clone(), trackers)
            })
            .unzip();
        (s.generation, ids, trackers)
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
            let tracker = trackers[vi][bi].clone();
            tasks.push(tokio::spawn(checker::run(member, b.check.clone(), tracker, probe, Jitter::new(seed), tx.clone())));
        }
    }
    drop(tx);
    tasks.push(tokio::spawn(apply_reports(rx, supervisor, generation)));
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_config::{TestBackend, TestConfig, TestVip};
    use crate::health::probe::Outcome;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Recorder {
        rings: BTreeMap<u32, BTreeMap<u32, u32>>,
        writes: usize,
        health: BTreeMap<HealthKey, HealthEntry>,
        members: BTreeMap<HealthKey, bool>,
        /// Calls of `write_ring` (one per ring built).
        ring_builds: usize,
        /// The kernel's rings before the supervisor starts.
        initial: BTreeMap<u32, Vec<u32>>,
    }

    impl Recorder {
        /// The ring of `row` as the kernel would have it.
        fn read_ring(&self, row: u32, ring_size: u32) -> Vec<u32> {
            let mut ring = self.initial.get(&row).cloned().unwrap_or_else(|| vec![0; ring_size as usize]);
            for (slot, id) in self.rings.get(&row).into_iter().flatten() {
                ring[*slot as usize] = *id;
            }
            ring
        }
    }

    impl HealthWriter for Recorder {
        fn write_member(&mut self, key: HealthKey, usable: bool) -> Result<()> {
            self.members.insert(key, usable);
            Ok(())
        }
        fn write_ring(&mut self, row: u32, ring: &[u32]) -> Result<usize> {
            self.ring_builds += 1;
            let changes = crate::maglev::changed_slots(&self.read_ring(row, ring.len() as u32), ring);
            self.writes += changes.len();
            self.rings.entry(row).or_default().extend(changes.iter().copied());
            Ok(changes.len())
        }
        fn write_health(&mut self, key: HealthKey, entry: HealthEntry) -> Result<()> {
            self.health.insert(key, entry);
            Ok(())
        }
    }

    /// One checked VIP on .11, .12 and .13, which starts down.
    fn config() -> crate::config::Config {
        let web = TestVip::new("web", "192.0.2.10:80").health("interval", "1s").health("timeout", "500ms");
        let web = web.backends(["198.51.100.11", "198.51.100.12"]).backend(TestBackend::new("198.51.100.13").health("initial", "down"));
        TestConfig::new().ring_size(1009).vip(web).parse()
    }

    /// The kernel's ring of the first VIP, as the supervisor wrote it.
    fn ring0(s: &Supervisor<Recorder>) -> Vec<u32> {
        s.writer().read_ring(0, s.ring_size)
    }

    fn report(backend: usize, state: State, outcome: Outcome) -> Report {
        Report {
            member: MemberRef { vip: 0, backend },
            outcome,
            state,
            fails: 1,
            passes: 0,
            changes: 1,
            changed: true,
            latency: std::time::Duration::from_millis(1),
        }
    }

    #[test]
    fn writes_only_changed_slots_and_health_entries() {
        let c = config();
        let p = crate::plan::plan(&c);
        // The kernel holds the all-up rings (as after a first reconcile).
        let recorder = Recorder { initial: p.vips.iter().map(|v| (v.row, v.all_up.as_ref().unwrap().ring.clone())).collect(), ..Recorder::default() };
        let mut s = Supervisor::new(&c, &p, recorder, &PriorHealth::new(), None).unwrap();
        let all_up = p.vips[0].all_up.as_ref().unwrap().ring.clone();
        // .13 starts down: only its slots were rewritten.
        let owned13 = all_up.iter().filter(|id| **id == 3).count();
        assert_eq!(s.writer().writes, owned13);
        assert!(!ring0(&s).contains(&3));
        let key = |id| HealthKey { row: 0, backend_id: id };
        assert_eq!(s.writer().health[&key(3)].state, HEALTH_DOWN);
        assert_eq!(s.writer().health[&key(1)].reason, HealthReason::Initial as u8);

        let writes = s.writer().writes;
        s.apply(&report(2, State::Up, Outcome::Passed { http_status: None })).unwrap();
        assert_eq!(ring0(&s), all_up, "back to the all-up ring");
        assert_eq!(s.writer().writes - writes, owned13);

        s.apply(&report(0, State::Down, Outcome::Timeout)).unwrap();
        let e = s.writer().health[&key(1)];
        assert_eq!((e.state, e.reason, e.consecutive_fails), (HEALTH_DOWN, HealthReason::Timeout as u8, 1));
        for (slot, (before, after)) in all_up.iter().zip(&ring0(&s)).enumerate() {
            assert!(*before == 1 || before == after, "slot {slot} of a healthy backend moved");
        }

        s.apply(&report(1, State::Down, Outcome::Refused)).unwrap();
        s.apply(&report(2, State::Down, Outcome::HttpStatus(500))).unwrap();
        assert!(ring0(&s).iter().all(|id| *id == lb_common::NO_BACKEND), "all down: drop");
        assert_eq!(s.writer().health[&key(3)].http_status, 500);
        assert!(!s.writer().members[&key(1)], "a down backend's flows re-hash");
    }

    #[test]
    fn a_vip_is_serving_while_one_backend_is_up() {
        let c = config();
        let p = crate::plan::plan(&c);
        let mut s = Supervisor::new(&c, &p, Recorder::default(), &PriorHealth::new(), None).unwrap();
        let vip: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(s.serving_addresses(), [vip].into());
        s.apply(&report(0, State::Down, Outcome::Timeout)).unwrap();
        s.apply(&report(1, State::Down, Outcome::Timeout)).unwrap();
        assert!(s.serving_addresses().is_empty(), "no backend up (.13 starts down): nothing to announce");
        s.apply(&report(2, State::Up, Outcome::Passed { http_status: None })).unwrap();
        assert_eq!(s.serving_addresses(), [vip].into());
    }

    #[test]
    fn a_successor_keeps_health_states_and_writes_nothing_unchanged() {
        let c = config();
        let p = crate::plan::plan(&c);
        let recorder = Recorder { initial: p.vips.iter().map(|v| (v.row, v.all_up.as_ref().unwrap().ring.clone())).collect(), ..Recorder::default() };
        let mut first = Supervisor::new(&c, &p, recorder, &PriorHealth::new(), None).unwrap();
        first.apply(&report(2, State::Up, Outcome::Passed { http_status: None })).unwrap();
        first.apply(&report(0, State::Down, Outcome::Timeout)).unwrap();
        let kernel = ring0(&first);
        let prior = first.writer().health.clone();
        // What an agent restarted on the same maps sees.
        let recorder = Recorder { initial: [(0, kernel.clone())].into(), ..Recorder::default() };
        let second = Supervisor::new(&c, &p, recorder, &prior, None).unwrap();
        assert_eq!(second.writer().writes, 0, "no ring slot rewritten");
        assert_eq!(ring0(&second), kernel);
        let key = |id| HealthKey { row: 0, backend_id: id };
        assert!(!second.writer().members[&key(1)]);
        assert!(second.writer().members[&key(3)]);
    }

    #[test]
    fn a_reload_carries_unchanged_vips_over_without_writing() {
        let c = config();
        let p = crate::plan::plan(&c);
        let recorder = Recorder { initial: p.vips.iter().map(|v| (v.row, v.all_up.as_ref().unwrap().ring.clone())).collect(), ..Recorder::default() };
        let mut first = Supervisor::new(&c, &p, recorder, &PriorHealth::new(), None).unwrap();
        first.apply(&report(0, State::Down, Outcome::Timeout)).unwrap();
        let kernel = ring0(&first);
        // Reload of the same config: the plan builds no ring for the VIP.
        let mut running = p.clone();
        running.forget_rings();
        let previous = crate::plan::Previous { config: &c, plan: &running };
        let reloaded = crate::plan::plan_reusing(&c, &running.kept(), Some(previous)).unwrap();
        assert!(reloaded.vips[0].all_up.is_none());
        let recorder = Recorder { initial: [(0, kernel.clone())].into(), ..Recorder::default() };
        let prior = first.writer().health.clone();
        let second = Supervisor::new(&c, &reloaded, recorder, &prior, Some(&first)).unwrap();
        let w = second.writer();
        assert_eq!((w.writes, w.health.len(), w.members.len()), (0, 0, 0), "nothing written");
        assert_eq!(ring0(&second), kernel);
        assert_eq!(second.vips[0].up, first.vips[0].up, "health state carried over");
        assert_eq!(second.vips[0].tier, first.vips[0].tier);
    }

    fn all_up_recorder(p: &Plan) -> Recorder {
        Recorder { initial: p.vips.iter().map(|v| (v.row, v.all_up.as_ref().unwrap().ring.clone())).collect(), ..Recorder::default() }
    }

    #[test]
    fn changes_gathered_while_waiting_share_one_ring_build() {
        let c = config();
        let p = crate::plan::plan(&c);
        let key = |id| HealthKey { row: 0, backend_id: id };
        // One by one: a ring build per change.
        let mut single = Supervisor::new(&c, &p, all_up_recorder(&p), &PriorHealth::new(), None).unwrap();
        let builds = single.writer().ring_builds;
        single.apply(&report(0, State::Down, Outcome::Timeout)).unwrap();
        single.apply(&report(1, State::Down, Outcome::Refused)).unwrap();
        assert_eq!(single.writer().ring_builds - builds, 2);

        let mut s = Supervisor::new(&c, &p, all_up_recorder(&p), &PriorHealth::new(), None).unwrap();
        let builds = s.writer().ring_builds;
        s.record(&[report(0, State::Down, Outcome::Timeout), report(1, State::Down, Outcome::Refused)]).unwrap();
        assert!(s.unsettled());
        assert!(!s.writer().members[&key(1)], "a down backend's flows re-hash at once");
        assert_eq!(s.writer().health[&key(1)].state, HEALTH_UP, "stats shows the change only once the ring has it");
        assert!(!s.settle_next().unwrap(), "one VIP waited");
        assert_eq!(s.writer().ring_builds - builds, 1, "both changes in one build");
        assert_eq!(ring0(&s), ring0(&single), "the same ring as one change at a time");
        assert_eq!(s.writer().health[&key(1)].state, HEALTH_DOWN);
        assert_eq!(s.writer().health[&key(2)].reason, HealthReason::Refused as u8);
    }

    #[tokio::test]
    async fn reports_of_a_replaced_supervisor_are_never_applied() {
        let c = config();
        let p = crate::plan::plan(&c);
        let key = |id| HealthKey { row: 0, backend_id: id };
        let first = Supervisor::new(&c, &p, all_up_recorder(&p), &PriorHealth::new(), None).unwrap();
        let generation = first.generation;
        let shared: SharedSupervisor<Recorder> = std::sync::Arc::new(std::sync::Mutex::new(first));
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(apply_reports(rx, shared.clone(), generation));
        tx.send(report(0, State::Down, Outcome::Timeout)).await.unwrap();
        let applied = async {
            while shared.lock().unwrap().writer().health[&key(1)].state != HEALTH_DOWN {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), applied).await.expect("a current report is applied");
        // A reload replaces the supervisor; a report of the old checkers
        // (indices of the old config) arrives afterwards.
        *shared.lock().unwrap() = Supervisor::new(&c, &p, all_up_recorder(&p), &PriorHealth::new(), None).unwrap();
        let _ = tx.send(report(1, State::Down, Outcome::Refused)).await;
        tokio::time::timeout(std::time::Duration::from_secs(10), task).await.expect("the old report task stops").unwrap();
        let s = shared.lock().unwrap();
        assert!(s.writer().health.get(&key(2)).is_none_or(|e| e.state != HEALTH_DOWN), "an old report reached the new supervisor");
        assert!(!s.unsettled());
    }
}
