//! The supervisor against a recorder of what it writes.

use std::collections::BTreeMap;

use lb_common::health::{HEALTH_DOWN, HEALTH_UP, HealthReason};
use tokio::sync::mpsc;

use super::*;
use crate::test_config::{TestBackend, TestConfig, TestVip};
use crate::health::checker::MemberRef;
use super::tasks::apply_reports;
use crate::plan::Plan;

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

/// A check's outcome for backend `backend` of the first VIP (whose checks
/// change state at the first failure or pass: fails = passes = 1).
fn report(backend: usize, outcome: Outcome) -> Report {
    Report { member: MemberRef { vip: 0, backend }, outcome, latency: std::time::Duration::from_millis(1) }
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
    s.apply(&report(2, Outcome::Passed { http_status: None })).unwrap();
    assert_eq!(ring0(&s), all_up, "back to the all-up ring");
    assert_eq!(s.writer().writes - writes, owned13);

    s.apply(&report(0, Outcome::Timeout)).unwrap();
    let e = s.writer().health[&key(1)];
    assert_eq!((e.state, e.reason, e.consecutive_fails), (HEALTH_DOWN, HealthReason::Timeout as u8, 1));
    for (slot, (before, after)) in all_up.iter().zip(&ring0(&s)).enumerate() {
        assert!(*before == 1 || before == after, "slot {slot} of a healthy backend moved");
    }

    s.apply(&report(1, Outcome::Refused)).unwrap();
    s.apply(&report(2, Outcome::HttpStatus(500))).unwrap();
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
    s.apply(&report(0, Outcome::Timeout)).unwrap();
    s.apply(&report(1, Outcome::Timeout)).unwrap();
    assert!(s.serving_addresses().is_empty(), "no backend up (.13 starts down): nothing to announce");
    s.apply(&report(2, Outcome::Passed { http_status: None })).unwrap();
    assert_eq!(s.serving_addresses(), [vip].into());
}

#[test]
fn a_successor_keeps_health_states_and_writes_nothing_unchanged() {
    let c = config();
    let p = crate::plan::plan(&c);
    let recorder = Recorder { initial: p.vips.iter().map(|v| (v.row, v.all_up.as_ref().unwrap().ring.clone())).collect(), ..Recorder::default() };
    let mut first = Supervisor::new(&c, &p, recorder, &PriorHealth::new(), None).unwrap();
    first.apply(&report(2, Outcome::Passed { http_status: None })).unwrap();
    first.apply(&report(0, Outcome::Timeout)).unwrap();
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
    first.apply(&report(0, Outcome::Timeout)).unwrap();
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
    assert_eq!(second.vips[0].up(), first.vips[0].up(), "health state carried over");
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
    single.apply(&report(0, Outcome::Timeout)).unwrap();
    single.apply(&report(1, Outcome::Refused)).unwrap();
    assert_eq!(single.writer().ring_builds - builds, 2);

    let mut s = Supervisor::new(&c, &p, all_up_recorder(&p), &PriorHealth::new(), None).unwrap();
    let builds = s.writer().ring_builds;
    s.record(&[report(0, Outcome::Timeout), report(1, Outcome::Refused)]).unwrap();
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
    tx.send(report(0, Outcome::Timeout)).await.unwrap();
    let applied = async {
        while shared.lock().unwrap().writer().health[&key(1)].state != HEALTH_DOWN {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), applied).await.expect("a current report is applied");
    // A reload replaces the supervisor; a report of the old checkers
    // (indices of the old config) arrives afterwards.
    *shared.lock().unwrap() = Supervisor::new(&c, &p, all_up_recorder(&p), &PriorHealth::new(), None).unwrap();
    let _ = tx.send(report(1, Outcome::Refused)).await;
    tokio::time::timeout(std::time::Duration::from_secs(10), task).await.expect("the old report task stops").unwrap();
    let s = shared.lock().unwrap();
    assert!(s.writer().health.get(&key(2)).is_none_or(|e| e.state != HEALTH_DOWN), "an old report reached the new supervisor");
    assert!(!s.unsettled());
}

#[test]
fn only_a_vip_the_plan_calls_unchanged_is_carried_over() {
    let c = config();
    let p = crate::plan::plan(&c);
    let mut first = Supervisor::new(&c, &p, all_up_recorder(&p), &PriorHealth::new(), None).unwrap();
    // A change counted, its ring not built yet: only the supervisor knows it.
    first.record(&[report(0, Outcome::Timeout)]).unwrap();
    let prior = first.writer().health.clone();
    let mut running = p.clone();
    running.forget_rings();
    let previous = crate::plan::Previous { config: &c, plan: &running };
    let unchanged = crate::plan::plan_reusing(&c, &running.kept(), Some(previous)).unwrap();
    let carried = Supervisor::new(&c, &unchanged, all_up_recorder(&p), &prior, Some(&first)).unwrap();
    assert!(carried.unsettled(), "the plan says unchanged: the state, unsettled change included, is taken over");
    assert_eq!(carried.vips[0].up(), [false, true, false]);
    // The same config planned without the previous plan: rebuilt from the
    // HEALTH map, which does not have the unsettled change yet.
    let rebuilt_plan = crate::plan::plan_reusing(&c, &running.kept(), None).unwrap();
    assert!(!rebuilt_plan.vips[0].unchanged);
    let rebuilt = Supervisor::new(&c, &rebuilt_plan, all_up_recorder(&p), &prior, Some(&first)).unwrap();
    assert!(!rebuilt.unsettled());
    assert_eq!(rebuilt.vips[0].up(), [true, true, false]);
}
