//! Turns checker reports into the dataplane: the `HEALTH` entry of the pair
//! after every check, and on a state change the VIP's new ring, of which only
//! the slots that differ are written (a 65,537-slot ring rewritten whole
//! would be 65,537 syscalls and a window where readers see a mix anyway).

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use lb_common::health::{HEALTH_DOWN, HEALTH_UNCHECKED, HEALTH_UP, HealthEntry, HealthKey, HealthReason};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{Config, VipConfig};
use crate::health::checker::{self, Jitter, MemberRef, Report};
use crate::health::probe::NetProbe;
use crate::health::select::{self, Tier};
use crate::health::settings::{CheckKind, InitialState};
use crate::health::tracker::State;
use crate::maglev::changed_slots;
use crate::plan::Plan;

/// Reports in flight before checkers wait for the supervisor.
const REPORT_QUEUE: usize = 256;

/// Where the supervisor writes (the kernel maps, or a recorder in tests).
pub trait HealthWriter {
    /// Writes `(slot, backend id)` pairs into the ring of VIP row `row`.
    fn write_slots(&mut self, row: u32, changes: &[(u32, u32)]) -> Result<()>;
    fn write_health(&mut self, key: HealthKey, entry: HealthEntry) -> Result<()>;
}

/// The live `RINGS` and `HEALTH` maps.
pub struct MapWriter {
    pub rings: Array<MapData, u32>,
    pub health: BpfHashMap<MapData, HealthKey, HealthEntry>,
    pub ring_size: u32,
}

impl HealthWriter for MapWriter {
    fn write_slots(&mut self, row: u32, changes: &[(u32, u32)]) -> Result<()> {
        let base = row * self.ring_size;
        for &(slot, id) in changes {
            self.rings.set(base + slot, id, 0).with_context(|| format!("writing slot {slot} of ring row {row}"))?;
        }
        Ok(())
    }

    fn write_health(&mut self, key: HealthKey, entry: HealthEntry) -> Result<()> {
        self.health.insert(key, entry, 0).with_context(|| format!("writing health of {key:?}"))
    }
}

struct VipState {
    config: VipConfig,
    row: u32,
    /// Backend ids, by index in `config.backends`.
    ids: Vec<u32>,
    up: Vec<bool>,
    entries: Vec<HealthEntry>,
    ring: Vec<u32>,
    tier: Tier,
}

/// The health of every VIP's backends and the rings that follow from it.
pub struct Supervisor<W: HealthWriter> {
    vips: Vec<VipState>,
    ring_size: u32,
    writer: W,
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl<W: HealthWriter> Supervisor<W> {
    /// Writes the initial health entries and, if some backends start down,
    /// the rings that follow (the plan's rings assume every backend up).
    pub fn new(config: &Config, plan: &Plan, mut writer: W) -> Result<Self> {
        let since = now_unix_ms();
        let mut vips = Vec::with_capacity(config.vips.len());
        for v in &config.vips {
            let planned = plan.vip(&v.name).with_context(|| format!("VIP {} missing from the plan", v.name))?;
            let ids: Vec<u32> = v.backends.iter().map(|b| plan.backend_id(b.address).expect("every backend has an id")).collect();
            let up: Vec<bool> = v.backends.iter().map(|b| b.check.kind == CheckKind::None || b.check.initial == InitialState::Up).collect();
            let entries: Vec<HealthEntry> = v
                .backends
                .iter()
                .zip(&up)
                .map(|(b, &up)| HealthEntry {
                    since_unix_ms: since,
                    state: match (b.check.kind, up) {
                        (CheckKind::None, _) => HEALTH_UNCHECKED,
                        (_, true) => HEALTH_UP,
                        (_, false) => HEALTH_DOWN,
                    },
                    reason: if b.check.kind == CheckKind::None { HealthReason::NotChecked } else { HealthReason::Initial } as u8,
                    ..HealthEntry::default()
                })
                .collect();
            for (id, e) in ids.iter().zip(&entries) {
                writer.write_health(HealthKey { row: planned.row, backend_id: *id }, *e)?;
            }
            let mut state =
                VipState { config: v.clone(), row: planned.row, ids, up, entries, ring: planned.ring.clone(), tier: Tier::Primary };
            let (written, _) = Self::reselect(&mut state, plan.ring_size, &mut writer)?;
            if written > 0 || state.tier != Tier::Primary {
                log::warn!("vip {}: starts serving from {} ({} ring slots differ from the all-up ring)", v.name, state.tier.as_str(), written);
            }
            vips.push(state);
        }
        Ok(Supervisor { vips, ring_size: plan.ring_size, writer })
    }

    /// Recomputes a VIP's ring from its `up` set and writes the changed
    /// slots; returns how many and the previous tier.
    fn reselect(vip: &mut VipState, ring_size: u32, writer: &mut W) -> Result<(usize, Tier)> {
        let by_address: Vec<(IpAddr, u32)> = vip.config.backends.iter().map(|b| b.address).zip(vip.ids.iter().copied()).collect();
        let id_of = |a: IpAddr| by_address.iter().find(|(b, _)| *b == a).map_or(lb_common::NO_BACKEND, |(_, id)| *id);
        let up = vip.up.clone();
        let selection = select::ring(&vip.config, ring_size, &id_of, &|i| up[i]);
        let changes = changed_slots(&vip.ring, &selection.ring);
        writer.write_slots(vip.row, &changes)?;
        vip.ring = selection.ring;
        let before = std::mem::replace(&mut vip.tier, selection.tier);
        Ok((changes.len(), before))
    }

    /// Counts one report: the pair's `HEALTH` entry, and on a state change
    /// the VIP's ring.
    pub fn apply(&mut self, r: &Report) -> Result<()> {
        let ring_size = self.ring_size;
        let vip = self.vips.get_mut(r.member.vip).context("report for an unknown VIP")?;
        let b = r.member.backend;
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
            return self.writer.write_health(key, entry);
        }
        vip.up[b] = r.state == State::Up;
        // Ring first: once `stats` shows the new state, the ring has it too.
        let (written, before) = Self::reselect(vip, ring_size, &mut self.writer)?;
        self.writer.write_health(key, entry)?;
        let backend = &vip.config.backends[b];
        let up_count = vip.up.iter().filter(|u| **u).count();
        let role = if backend.backup { "backup " } else { "" };
        match r.state {
            State::Down => log::warn!(
                "vip {}: {role}backend {} DOWN: {} ({} consecutive failed checks, fails = {}); {up_count}/{} backends up, serving from {}; {written} ring slots rewritten",
                vip.config.name,
                backend.address,
                r.outcome.describe(),
                r.fails,
                backend.check.fails,
                vip.up.len(),
                vip.tier.as_str()
            ),
            State::Up => log::info!(
                "vip {}: {role}backend {} UP: {} ({} consecutive passed checks, passes = {}); {up_count}/{} backends up, serving from {}; {written} ring slots rewritten",
                vip.config.name,
                backend.address,
                r.outcome.describe(),
                r.passes,
                backend.check.passes,
                vip.up.len(),
                vip.tier.as_str()
            ),
        }
        if vip.tier != before {
            match vip.tier {
                Tier::Down => log::warn!(
                    "vip {}: no backend is up; its packets are dropped and counted as no_backend (health.all_down = \"drop\")",
                    vip.config.name
                ),
                Tier::FailOpen => log::warn!(
                    "vip {}: no backend is up; sending to all primaries anyway (health.all_down = \"fail_open\")",
                    vip.config.name
                ),
                Tier::Backup => log::warn!("vip {}: no primary backend is up; backups take the traffic", vip.config.name),
                Tier::Primary => log::info!("vip {}: a primary backend is up again; new flows go to the primaries", vip.config.name),
            }
        }
        Ok(())
    }

    /// The current ring of the VIP with this index in the config (tests).
    pub fn ring(&self, vip: usize) -> &[u32] {
        &self.vips[vip].ring
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }
}

/// Starts one checker per checked backend of every VIP and a task applying
/// their reports. Abort the returned handles to stop checking.
pub fn spawn<W: HealthWriter + Send + 'static>(config: &Config, mut supervisor: Supervisor<W>) -> Vec<JoinHandle<()>> {
    let (tx, mut rx) = mpsc::channel::<Report>(REPORT_QUEUE);
    let mut tasks = Vec::new();
    for (vi, v) in config.vips.iter().enumerate() {
        for (bi, b) in v.backends.iter().enumerate() {
            if b.check.kind == CheckKind::None {
                continue;
            }
            let port = b.check.port.unwrap_or(v.port);
            let probe = if b.check.dsr {
                NetProbe::dsr(SocketAddr::new(v.address, port), supervisor.vips[vi].ids[bi], &b.check)
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
    tasks.push(tokio::spawn(async move {
        while let Some(report) = rx.recv().await {
            if let Err(e) = supervisor.apply(&report) {
                log::error!("health: {e:#}");
            }
        }
    }));
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::health::probe::Outcome;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Recorder {
        rings: BTreeMap<u32, BTreeMap<u32, u32>>,
        writes: usize,
        health: BTreeMap<HealthKey, HealthEntry>,
    }

    impl HealthWriter for Recorder {
        fn write_slots(&mut self, row: u32, changes: &[(u32, u32)]) -> Result<()> {
            self.writes += changes.len();
            self.rings.entry(row).or_default().extend(changes.iter().copied());
            Ok(())
        }
        fn write_health(&mut self, key: HealthKey, entry: HealthEntry) -> Result<()> {
            self.health.insert(key, entry);
            Ok(())
        }
    }

    const CONFIG: &str = r#"
[lb]
interface = "eth0"
ring_size = 1009

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
  [vip.health]
  interval = "1s"
  timeout = "500ms"
  [[vip.backend]]
  address = "198.51.100.11"
  [[vip.backend]]
  address = "198.51.100.12"
  [[vip.backend]]
  address = "198.51.100.13"
    [vip.backend.health]
    initial = "down"
"#;

    fn report(backend: usize, state: State, outcome: Outcome) -> Report {
        Report { member: MemberRef { vip: 0, backend }, outcome, state, fails: 1, passes: 0, changes: 1, changed: true }
    }

    #[test]
    fn writes_only_changed_slots_and_health_entries() {
        let c = parse(CONFIG, "t.toml").unwrap();
        let p = crate::plan::plan(&c);
        let mut s = Supervisor::new(&c, &p, Recorder::default()).unwrap();
        let all_up = p.vips[0].ring.clone();
        // .13 starts down: only its slots were rewritten.
        let owned13 = all_up.iter().filter(|id| **id == 3).count();
        assert_eq!(s.writer().writes, owned13);
        assert!(!s.ring(0).contains(&3));
        let key = |id| HealthKey { row: 0, backend_id: id };
        assert_eq!(s.writer().health[&key(3)].state, HEALTH_DOWN);
        assert_eq!(s.writer().health[&key(1)].reason, HealthReason::Initial as u8);

        let writes = s.writer().writes;
        s.apply(&report(2, State::Up, Outcome::Passed { http_status: None })).unwrap();
        assert_eq!(s.ring(0), &all_up[..], "back to the all-up ring");
        assert_eq!(s.writer().writes - writes, owned13);

        s.apply(&report(0, State::Down, Outcome::Timeout)).unwrap();
        let e = s.writer().health[&key(1)];
        assert_eq!((e.state, e.reason, e.consecutive_fails), (HEALTH_DOWN, HealthReason::Timeout as u8, 1));
        for (slot, (before, after)) in all_up.iter().zip(s.ring(0)).enumerate() {
            assert!(*before == 1 || before == after, "slot {slot} of a healthy backend moved");
        }
        // The recorded kernel ring equals the supervisor's view.
        let mut kernel = all_up.clone();
        for (slot, id) in &s.writer().rings[&0] {
            kernel[*slot as usize] = *id;
        }
        assert_eq!(kernel, s.ring(0));

        s.apply(&report(1, State::Down, Outcome::Refused)).unwrap();
        s.apply(&report(2, State::Down, Outcome::HttpStatus(500))).unwrap();
        assert!(s.ring(0).iter().all(|id| *id == lb_common::NO_BACKEND), "all down: drop");
        assert_eq!(s.writer().health[&key(3)].http_status, 500);
    }
}
