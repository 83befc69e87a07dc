//! `cargo xtask bench`: what every packet path and every ring build costs,
//! against floors measured in the same run (absolute times drift on shared
//! machines; ratios do not). Prints a table and writes JSON
//! (`--json PATH`, default `target/bench/latest.json`).
//!
//! Per-packet method: `BPF_PROG_TEST_RUN` with `repeat = 1`, many times, each
//! on a fresh copy of the input (with `repeat > 1` the kernel reuses the
//! buffer, so an encapsulating program would measure its own output), taking
//! the median of the kernel-reported durations. Every measured run's action
//! and output are checked. The floors go through the very same harness, so
//! its fixed cost is in both sides of every ratio; and the cases run in
//! interleaved rounds, each round's ratios taken within it, so a slow
//! stretch of a shared machine moves a round's floors and paths together.

mod agent;
/// The decap program's second-chance paths, in a backend namespace with real sockets.
mod decap_paths;
/// CPU and memory of 10,000 health checks, passing and failing.
mod health;
/// The SYN path while the new-flow guard is active.
mod flood_guard;
/// Packets per second with live frames (BPF_F_TEST_XDP_LIVE_FRAMES) out of a veth.
mod live_frames;
/// End-to-end packets per second in namespaces, against a reflector.
mod forward;
/// The per-packet targets, checked against this run's ratios.
mod targets;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::{maps::Array, Ebpf};
use etherparse::PacketBuilder;
use lb_agent::{
    dataplane,
    maglev::{self, Member},
    dataplane::rings::MappedRings,
};
use lb_tests::bpf::{self, Overrides};
use lb_tests::configs::{self, TestVip, BACKENDS_V4};
use lb_common::{
    flows::FlowEvent,
    maps, programs,
    second_chance::{second_chance_len, GueHeader, PreviousOwners, MAX_PREVIOUS_OWNERS},
    Action,
};
use serde_json::{json, Value};

// ------------------------------------------------------------ allocation meter

/// Counts live heap bytes so ring builds can report their peak memory.
struct Meter;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; the
// counters on the side allocate nothing.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Meter = Meter;

/// Peak heap growth (bytes) while `f` runs.
fn peak_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

// ------------------------------------------------------------ setup

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_V4: [u8; 4] = [198, 51, 100, 10];
const CLIENT_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const VIP_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10);

/// The benchmark's data plane: the production ring size, two or three
/// backends per VIP, a stateless VIP beside the flow table's, "backend" VIPs
/// (second chance; one whose bench flow has a previous owner, one whose has
/// two) and a GUE VIP that keeps its flow table.
fn config() -> String {
    let stateless = TestVip::new("web-stateless", "192.0.2.10:81").flow_table(false).backends(BACKENDS_V4);
    let backend = |name: &str, endpoint: &str| TestVip::new(name, endpoint).set("flow_state", "backend").backends(BACKENDS_V4);
    let gue = TestVip::new("web-gue", "192.0.2.10:83").set("encap", "gue").backends(BACKENDS_V4);
    let c = configs::unattached("bench0").max_vips(8).max_backends(16).vip(stateless);
    let c = c.vip(backend("web-backend", "192.0.2.10:82")).vip(backend("web-backend-moved", "192.0.2.10:84")).vip(gue);
    let c = c.vip(backend("web-backend-moved-twice", "192.0.2.10:85"));
    c.vip(configs::web()).vip(configs::dns()).vip(configs::web6()).static_macs().to_toml()
}

fn load() -> Result<Ebpf> {
    Ok(load_with_plan()?.ebpf)
}

fn load_with_plan() -> Result<bpf::Loaded> {
    let programs = [programs::BALANCER, programs::DECAP, programs::PASS, programs::FLOOR_TX];
    bpf::load(&config(), "bench.toml", &programs, Overrides::default())
}

/// Gives the slot of the flow from `src`:`sport` to VIP `port` `depth`
/// previous owners (other members of the VIP), as that many ring changes
/// would (the `PREVIOUS` layout of `lb_common::second_chance`): the
/// balancer then carries them in the GUE header. Returns (current, newest
/// previous) backend ids.
fn set_previous_owners(loaded: &mut bpf::Loaded, src: IpAddr, sport: u16, port: u16, depth: usize) -> Result<(u32, u32)> {
    let plan = &loaded.plan;
    let vip = lb_agent::plan::find_vip(plan, VIP_V4.into(), port, lb_common::PROTO_TCP).context("no bench VIP on that port")?;
    let slot = lb_agent::plan::slot(plan, vip, src, sport, port).context("the flow has no slot")?;
    let current = vip.ring()[slot as usize];
    let mut owners: PreviousOwners = [lb_common::NO_BACKEND; MAX_PREVIOUS_OWNERS];
    let others: Vec<u32> = vip.members.iter().map(|(id, _)| *id).filter(|id| *id != current).take(depth).collect();
    ensure!(others.len() == depth && depth <= MAX_PREVIOUS_OWNERS, "the VIP has too few backends for {depth} previous owners");
    owners[..depth].copy_from_slice(&others);
    let mut map: Array<_, PreviousOwners> = Array::try_from(loaded.ebpf.map_mut(maps::PREVIOUS).context("PREVIOUS")?)?;
    map.set(vip.row * plan.ring_size + slot, owners, 0)?;
    Ok((current, owners[0]))
}

/// One previous owner (see [`set_previous_owners`]).
fn set_previous_owner(loaded: &mut bpf::Loaded, src: IpAddr, sport: u16, port: u16) -> Result<(u32, u32)> {
    set_previous_owners(loaded, src, sport, port, 1)
}

fn write(builder: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    builder(&mut v);
    v
}

fn tcp4_syn(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    write(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT_V4, dst.octets(), 64)
            .tcp(40000, dport, 1, 65535)
            .syn()
            .write_to_vec(v, &[])
            .unwrap()
    })
}

/// The client's next packet of the SYN's flow (same 5-tuple).
fn tcp4_ack(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    write(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT_V4, dst.octets(), 64)
            .tcp(40000, dport, 2, 65535)
            .ack(1)
            .write_to_vec(v, &[])
            .unwrap()
    })
}

fn tcp6_syn(dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    write(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv6(CLIENT_V6, dst.octets(), 64)
            .tcp(40000, dport, 1, 65535)
            .syn()
            .write_to_vec(v, &[])
            .unwrap()
    })
}

fn udp4(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    write(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT_V4, dst.octets(), 64)
            .udp(40000, dport)
            .write_to_vec(v, b"0123456789abcdef")
            .unwrap()
    })
}

// ------------------------------------------------------------ per-packet cost

/// What a measured run must return and how its output must look.
#[derive(Clone, Copy)]
enum Expect {
    /// `XDP_PASS` with the packet unchanged.
    PassUnchanged,
    /// `XDP_PASS` with a packet of this length (decap).
    PassWithLen(usize),
    /// `XDP_TX`, `grows_by` bytes longer than the input.
    Tx { grows_by: usize },
}

/// What a measured run must do to the flow table (checked with the FLOW_STATS counters).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flows {
    /// Not checked.
    Any,
    /// Every run is a hit.
    Hit,
    /// No lookup at all (a "backend" VIP's TCP: the state lives on the backends).
    Untouched,
}

struct PacketCase {
    name: &'static str,
    flows: Flows,
    program: &'static str,
    input: Vec<u8>,
    /// The interface the run says the packet came in on (`None`: loopback);
    /// the decap program's socket and route lookups see its namespace.
    ingress: Option<u32>,
    expect: Expect,
}

/// Median kernel-reported ns of `runs` single runs, each checked.
fn median_ns(ebpf: &Ebpf, case: &PacketCase, runs: usize) -> Result<f64> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (action, out, duration) = bpf::run_from(ebpf, case.program, &case.input, case.ingress)?;
        let len = out.len();
        match case.expect {
            Expect::PassUnchanged => ensure!(
                action == Action::Pass as u32 && out == case.input,
                "{}: expected PASS and an unchanged packet, got action {}",
                case.name,
                action
            ),
            Expect::PassWithLen(want) => ensure!(
                action == Action::Pass as u32 && len == want,
                "{}: expected PASS and {want} bytes, got action {} and {len} bytes",
                case.name,
                action
            ),
            Expect::Tx { grows_by } => ensure!(
                action == Action::Tx as u32 && len == case.input.len() + grows_by,
                "{}: expected TX and {} bytes, got action {} and {len} bytes",
                case.name,
                case.input.len() + grows_by,
                action
            ),
        }
        samples.push(duration.as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// The floors every per-packet row is divided by.
const PASS_FLOOR: &str = "floor: xdp_pass";
const TX_FLOOR: &str = "floor: parse + swap MACs + tx";
/// Interleaved rounds of the per-packet cases (see `packet_costs`).
const ROUNDS: usize = 48;
/// A round is quiet when both floors are within this factor of their fastest round.
pub(crate) const QUIET_SLACK: f64 = 1.08;
/// Fewer quiet rounds than this, and every round counts.
const MIN_QUIET_ROUNDS: usize = 5;

/// A freshly loaded object and the per-packet cases to run on it.
fn packet_cases() -> Result<(Ebpf, Vec<PacketCase>)> {
    let mut loaded = load_with_plan()?;
    set_previous_owner(&mut loaded, Ipv4Addr::from(CLIENT_V4).into(), 40000, 84)?;
    set_previous_owners(&mut loaded, Ipv4Addr::from(CLIENT_V4).into(), 40000, 85, 2)?;
    let ebpf = loaded.ebpf;
    // An encapsulated packet for the decap case: run the balancer once.
    let syn = tcp4_syn(VIP_V4, 80);
    let (action, encapsulated, _) = bpf::run(&ebpf, programs::BALANCER, &syn)?;
    ensure!(action == Action::Tx as u32, "the balancer did not forward the SYN");
    let gue_syn = tcp4_syn(VIP_V4, 82);
    let ipv4_outer = 20;
    let ipv6_outer = 40;
    // IPv4 + UDP + GUE, and the second-chance private data when the slot has a previous owner.
    let gue_outer = ipv4_outer + 8 + size_of::<GueHeader>();
    let gue_outer_previous = gue_outer + second_chance_len(1);
    let gue_outer_two_previous = gue_outer + second_chance_len(2);
    let cases = vec![
        PacketCase { name: PASS_FLOOR, flows: Flows::Any, program: programs::PASS, input: syn.clone(), ingress: None, expect: Expect::PassUnchanged },
        PacketCase { name: TX_FLOOR, flows: Flows::Any, program: programs::FLOOR_TX, input: syn.clone(), ingress: None, expect: Expect::Tx { grows_by: 0 } },
        PacketCase { name: "ipv4 tcp syn to vip (hash)", flows: Flows::Any, program: programs::BALANCER, input: syn.clone(), ingress: None, expect: Expect::Tx { grows_by: ipv4_outer } },
        PacketCase { name: "ipv4 tcp ack, known flow (flow table hit)", flows: Flows::Hit, program: programs::BALANCER, input: tcp4_ack(VIP_V4, 80), ingress: None, expect: Expect::Tx { grows_by: ipv4_outer } },
        PacketCase { name: "ipv6 tcp syn to vip (hash)", flows: Flows::Any, program: programs::BALANCER, input: tcp6_syn(VIP_V6, 80), ingress: None, expect: Expect::Tx { grows_by: ipv6_outer } },
        PacketCase { name: "ipv4 udp to vip (hash)", flows: Flows::Any, program: programs::BALANCER, input: udp4(VIP_V4, 53), ingress: None, expect: Expect::Tx { grows_by: ipv4_outer } },
        PacketCase { name: "ipv4 tcp ack, stateless vip (no flow table)", flows: Flows::Any, program: programs::BALANCER, input: tcp4_ack(VIP_V4, 81), ingress: None, expect: Expect::Tx { grows_by: ipv4_outer } },
        PacketCase { name: "ipv4 tcp, vip address, other port (pass)", flows: Flows::Any, program: programs::BALANCER, input: tcp4_syn(VIP_V4, 22), ingress: None, expect: Expect::PassUnchanged },
        PacketCase { name: "ipv4 tcp, no vip (pass)", flows: Flows::Any, program: programs::BALANCER, input: tcp4_syn(Ipv4Addr::new(198, 51, 100, 2), 22), ingress: None, expect: Expect::PassUnchanged },
        PacketCase { name: "decap ipip", flows: Flows::Any, program: programs::DECAP, input: encapsulated, ingress: None, expect: Expect::PassWithLen(syn.len()) },
        PacketCase { name: "ipv4 tcp syn, gue vip (flow table)", flows: Flows::Any, program: programs::BALANCER, input: tcp4_syn(VIP_V4, 83), ingress: None, expect: Expect::Tx { grows_by: gue_outer } },
        PacketCase { name: "ipv4 tcp ack, gue vip, known flow", flows: Flows::Hit, program: programs::BALANCER, input: tcp4_ack(VIP_V4, 83), ingress: None, expect: Expect::Tx { grows_by: gue_outer } },
        PacketCase { name: "ipv4 tcp syn, backend vip", flows: Flows::Untouched, program: programs::BALANCER, input: gue_syn.clone(), ingress: None, expect: Expect::Tx { grows_by: gue_outer } },
        PacketCase { name: "ipv4 tcp ack, backend vip", flows: Flows::Untouched, program: programs::BALANCER, input: tcp4_ack(VIP_V4, 82), ingress: None, expect: Expect::Tx { grows_by: gue_outer } },
        PacketCase { name: "ipv4 tcp syn, backend vip, previous owner", flows: Flows::Untouched, program: programs::BALANCER, input: tcp4_syn(VIP_V4, 84), ingress: None, expect: Expect::Tx { grows_by: gue_outer_previous } },
        PacketCase { name: "ipv4 tcp ack, backend vip, previous owner", flows: Flows::Untouched, program: programs::BALANCER, input: tcp4_ack(VIP_V4, 84), ingress: None, expect: Expect::Tx { grows_by: gue_outer_previous } },
        PacketCase { name: "ipv4 tcp ack, backend vip, two previous owners", flows: Flows::Untouched, program: programs::BALANCER, input: tcp4_ack(VIP_V4, 85), ingress: None, expect: Expect::Tx { grows_by: gue_outer_two_previous } },
    ];
    Ok((ebpf, cases))
}

fn packet_costs(runs: usize) -> Result<Value> {
    // Interleaved rounds: every case once per round, in the same order, so
    // a slow stretch of the machine hits all cases alike; each round's
    // ratios are taken within the round, and the table shows their medians.
    // Each round loads the object anew: where the JIT image and the maps
    // land moves a path's cost by up to a fifth from one load to the next
    // (seen as whole runs of the bench agreeing within themselves and not
    // with each other), and the median over loads takes that out too.
    let per_round = (runs / ROUNDS).max(1);
    let lookups = |ebpf: &Ebpf| -> Result<(u64, u64, u64)> {
        let c = dataplane::read_counters(ebpf)?;
        Ok((c.flow_event(FlowEvent::Hit).packets, c.flow_event(FlowEvent::Miss).packets, c.flow_event(FlowEvent::Unrecorded).packets))
    };
    let mut rounds: Vec<std::collections::BTreeMap<&str, f64>> = Vec::with_capacity(ROUNDS);
    let mut names: Vec<&str> = Vec::new();
    for _ in 0..ROUNDS {
        let (ebpf, cases) = packet_cases()?;
        if names.is_empty() {
            names = cases.iter().map(|c| c.name).collect();
        }
        let mut round = std::collections::BTreeMap::new();
        for case in &cases {
            let before = lookups(&ebpf)?;
            round.insert(case.name, median_ns(&ebpf, case, per_round)?);
            let after = lookups(&ebpf)?;
            let (hits, misses) = (after.0 - before.0, after.1 - before.1);
            // These rows measure the default new-flow guard under its limit (its own row is below).
            ensure!(after.2 == before.2, "{}: {} new flows went unrecorded: the runs outpaced lb.new_flow_guard", case.name, after.2 - before.2);
            // The known-flow case must really measure hits (the SYN runs
            // recorded the flow; BPF_PROG_TEST_RUN runs on the calling CPU,
            // pinned, so the LRU list it went to is this CPU's).
            ensure!(case.flows != Flows::Hit || hits == per_round as u64, "{}: {hits} flow-table hits in {per_round} runs", case.name);
            ensure!(case.flows != Flows::Untouched || hits + misses == 0, "{}: {hits} hits and {misses} misses: the flow table was used", case.name);
        }
        for (name, v) in flood_guard::measure(&ebpf, per_round)? {
            round.insert(name, v);
        }
        // Rows measured once (a topology of their own), against every round's floors.
        if rounds.is_empty() {
            for (name, v) in decap_paths::measure(runs)? {
                round.insert(name, v);
            }
        }
        rounds.push(round);
    }
    names.extend(rounds[0].keys().filter(|k| !names.contains(k)).copied().collect::<Vec<_>>());
    let quiet = quiet_rounds(&rounds);
    let median_of = |f: &dyn Fn(&std::collections::BTreeMap<&str, f64>) -> Option<f64>| -> f64 {
        let mut v: Vec<f64> = quiet.iter().map(|&i| &rounds[i]).filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let once = |name: &str| rounds[0].get(name).copied();
    let value = |name: &str, floor: Option<&str>| -> f64 {
        median_of(&|r| {
            let v = r.get(name).copied().or_else(|| once(name))?;
            Some(floor.map_or(v, |f| v / r[f]))
        })
    };
    let mut rows = Vec::new();
    let mut ratio_tx = std::collections::BTreeMap::new();
    let mut ratio_pass = std::collections::BTreeMap::new();
    println!(
        "\nPer packet (BPF_PROG_TEST_RUN, repeat=1; {ROUNDS} interleaved rounds of {per_round} checked runs a case, \
         {} of them quiet: medians of the quiet rounds' medians and ratios)",
        quiet.len()
    );
    println!("{:<44} {:>8} {:>10} {:>10}", "path", "ns", "x pass", "x tx floor");
    for name in names {
        let (ns, xp, xt) = (value(name, None), value(name, Some(PASS_FLOOR)), value(name, Some(TX_FLOOR)));
        ratio_pass.insert(name, xp);
        ratio_tx.insert(name, xt);
        println!("{name:<44} {ns:>8.0} {xp:>10.2} {xt:>10.2}");
        rows.push(json!({"path": name, "ns": ns, "ratio_to_pass_floor": xp, "ratio_to_tx_floor": xt}));
    }
    let targets = targets::check(&ratio_pass, &ratio_tx, value("ipv6 tcp syn to vip (hash)", Some("ipv4 tcp syn to vip (hash)")));
    Ok(json!({"runs": runs, "rounds": ROUNDS, "quiet_rounds": quiet.len(), "paths": rows, "targets": targets}))
}

/// The rounds in which the machine was quiet: both floors within
/// `QUIET_SLACK` of their fastest round. On a shared VM the machine goes
/// through slow stretches of a second or more (another tenant on the core
/// or its sibling) in which the floors slow by a fifth and the longer paths
/// by half again; mixing those in moves a path's ratio by 30 % from one run
/// to the next. The floors alone decide, never the path measured, so the
/// choice cannot favour a path. Every round when too few were quiet.
fn quiet_rounds(rounds: &[std::collections::BTreeMap<&str, f64>]) -> Vec<usize> {
    let fastest = |floor: &str| rounds.iter().map(|r| r[floor]).fold(f64::INFINITY, f64::min);
    let (pass, tx) = (fastest(PASS_FLOOR), fastest(TX_FLOOR));
    let quiet: Vec<usize> =
        (0..rounds.len()).filter(|&i| rounds[i][PASS_FLOOR] <= pass * QUIET_SLACK && rounds[i][TX_FLOOR] <= tx * QUIET_SLACK).collect();
    if quiet.len() < MIN_QUIET_ROUNDS {
        println!("(only {} of {} rounds were quiet: the figures below use every round and move between runs)", quiet.len(), rounds.len());
        return (0..rounds.len()).collect();
    }
    quiet
}

// ------------------------------------------------------------ rings

fn members(n: u32) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            identity: maglev::backend_identity(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, (i >> 16) as u16, i as u16))),
            // Weights 1..=10: realistic mixes of machine sizes.
            weight: 1 + i % 10,
        })
        .collect()
}

/// Best of `tries`: the least disturbed measurement of a deterministic computation.
fn best<T>(tries: usize, mut f: impl FnMut() -> T) -> (T, Duration) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..tries {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        out = Some(v);
    }
    (out.unwrap(), best)
}

fn ring_costs() -> Result<Value> {
    let size = lb_common::limits::DEFAULT_RING_SIZE;
    println!("\nMaglev ring of {size} slots (best of 20; weights 1..=10)");
    println!("{:<44} {:>10} {:>12}", "operation", "time", "peak heap");
    let mut rows = Vec::new();
    for n in [10u32, 100, 1000] {
        let m = members(n);
        let ((_, t), peak) = peak_bytes(|| best(20, || maglev::build(&m, size)));
        println!("{:<44} {:>8.3}ms {:>10}KiB", format!("build, {n} backends"), t.as_secs_f64() * 1e3, peak / 1024);
        rows.push(json!({"operation": "build", "backends": n, "ms": t.as_secs_f64() * 1e3, "peak_heap_bytes": peak}));
    }
    // One backend of 100 goes down: rebuild without it and diff.
    let all = members(100);
    let before = maglev::build(&all, size);
    let mut without = all.clone();
    without[42].weight = 0;
    let ((changes, _), t) = best(20, || {
        let after = maglev::build(&without, size);
        (maglev::changed_slots(&before, &after), after)
    });
    println!(
        "{:<44} {:>8.3}ms   {} slots change ({:.2}% of the ring; the backend owned {})",
        "one of 100 down: rebuild + diff",
        t.as_secs_f64() * 1e3,
        changes.len(),
        100.0 * changes.len() as f64 / size as f64,
        before.iter().filter(|&&o| o == 42).count()
    );
    rows.push(json!({"operation": "one_of_100_down_rebuild_and_diff", "ms": t.as_secs_f64() * 1e3, "changed_slots": changes.len()}));

    // Kernel map writes: through the agent's mapping of RINGS (what it uses),
    // and one bpf() call per slot for comparison.
    let mut ebpf = load()?;
    let mapped = MappedRings::new(&ebpf)?;
    let (_, changed_write) = best(20, || {
        for (slot, owner) in &changes {
            mapped.set(*slot, owner + 1).unwrap();
        }
    });
    let (_, full_write) = best(20, || {
        for slot in 0..size {
            mapped.set(slot, 1).unwrap();
        }
    });
    drop(mapped);
    let mut rings: Array<_, u32> = Array::try_from(ebpf.map_mut(maps::RINGS).context("RINGS")?)?;
    let t = Instant::now();
    for slot in 0..size {
        rings.set(slot, 1, 0)?;
    }
    let full_write_syscalls = t.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{:<44} {:>8.3}ms", format!("write the {} changed slots (mmap)", changes.len()), ms(changed_write));
    println!("{:<44} {:>8.3}ms", "write a whole ring (mmap)", ms(full_write));
    println!("{:<44} {:>8.3}ms   (one bpf() call per slot, for comparison)", "write a whole ring (bpf syscalls)", ms(full_write_syscalls));
    rows.push(json!({"operation": "write_changed_slots_mmap", "ms": ms(changed_write), "slots": changes.len()}));
    rows.push(json!({"operation": "write_whole_ring_mmap", "ms": ms(full_write), "slots": size}));
    rows.push(json!({"operation": "write_whole_ring_syscalls", "ms": ms(full_write_syscalls), "slots": size}));
    Ok(json!(rows))
}

// ------------------------------------------------------------ main

/// Runs `f` on one CPU (BPF_PROG_TEST_RUN runs on the calling CPU): the
/// floors and our paths share caches alike, and every flow the runs record
/// goes to the same one of the flow table's per-CPU LRU lists (the entries
/// are shared, each CPU evicts from its own list). The previous affinity comes back after, so the agent the later
/// sections start may use every CPU, as it would on a real host.
fn on_one_cpu<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    // SAFETY: cpu_set_t values for this thread: the current one read back, one with a single bit.
    unsafe {
        let mut before: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut before) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
        let out = f();
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &before) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
        out
    }
}

/// How long `--profile` runs its case.
const PROFILE_TIME: Duration = Duration::from_secs(10);

/// `--profile PATH`: runs the first per-packet case whose name contains
/// `pattern`, alone and checked, for `PROFILE_TIME` on CPU 0, for a sampling
/// profiler to watch (`perf record -e cpu-clock -C 0`: the VM has no
/// hardware counters, the timer samples the kernel and the JIT image).
fn profile_case(pattern: &str) -> Result<()> {
    let (ebpf, cases) = packet_cases()?;
    let case = cases.iter().find(|c| c.name.contains(pattern)).with_context(|| {
        format!("no per-packet case contains {pattern:?}; the cases: {}", cases.iter().map(|c| c.name).collect::<Vec<_>>().join(", "))
    })?;
    let until = Instant::now() + PROFILE_TIME;
    let mut runs = 0usize;
    let mut medians = Vec::new();
    while Instant::now() < until {
        medians.push(median_ns(&ebpf, case, 1000)?);
        runs += 1000;
    }
    medians.sort_by(f64::total_cmp);
    println!("{}: {runs} checked runs in {PROFILE_TIME:?}, median {:.0} ns", case.name, medians[medians.len() / 2]);
    Ok(())
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads BPF programs: run it as root (`cargo xtask bench`)");
    }
    let mut args = std::env::args().skip(1);
    let mut runs = 48_000usize;
    let mut json_path = PathBuf::from("target/bench/latest.json");
    let mut only: Option<String> = None;
    let mut forward_seconds = 6.0f64;
    let mut profile: Option<String> = None;
    const SECTIONS: [&str; 6] = ["per_packet", "live_frames", "rings", "agent", "health", "forwarding"];
    // --only runs one section (the JSON then holds only it); --forward-seconds
    // is the forwarding bench's sending time per program (default 6);
    // --profile runs one per-packet path for a profiler and nothing else.
    const USAGE: &str = "usage: lb-bench [--runs N] [--json PATH] [--only per_packet|live_frames|rings|agent|health|forwarding] [--forward-seconds S] [--profile PATH]";
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--json" => json_path = args.next().context("--json PATH")?.into(),
            "--only" => {
                let s = args.next().context("--only SECTION")?;
                ensure!(SECTIONS.contains(&s.as_str()), "unknown section {s:?}; {USAGE}");
                only = Some(s);
            }
            "--forward-seconds" => {
                forward_seconds = args.next().context("--forward-seconds S")?.parse()?;
                ensure!((0.1..=60.0).contains(&forward_seconds), "--forward-seconds must be in 0.1..=60");
            }
            "--profile" => profile = Some(args.next().context("--profile PATH")?),
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if let Some(pattern) = profile {
        return on_one_cpu(|| profile_case(&pattern));
    }
    let wanted = |section: &str| only.as_deref().is_none_or(|o| o == section);
    let machine = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    });
    let mut report = json!({"machine": machine});
    if wanted("per_packet") {
        report["per_packet"] = on_one_cpu(|| packet_costs(runs))?;
    }
    if wanted("live_frames") {
        report["live_frames"] = live_frames::measure()?;
    }
    if wanted("rings") {
        report["rings"] = on_one_cpu(ring_costs)?;
    }
    if wanted("agent") {
        report["agent"] = agent::measure()?;
    }
    if wanted("health") {
        report["health"] = health::measure()?;
    }
    if wanted("forwarding") {
        report["forwarding"] = forward::measure(Duration::from_secs_f64(forward_seconds))?;
    }
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    println!("\nwritten to {}", json_path.display());
    Ok(())
}
