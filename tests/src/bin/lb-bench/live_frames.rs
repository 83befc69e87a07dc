//! Packets per second with live frames: `BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`, where each repeat is a fresh frame that
//! really leaves by `XDP_TX` (the kernel turns it into a redirect out of the
//! ingress interface): a veth in a namespace whose peer runs a program that
//! counts and drops (`lb_common::live_frames`). The kernel does not reset a
//! frame's bytes between repeats, so every program runs behind the same
//! wrapper, which writes the original headers back and picks the repeat's
//! source port (1 flow, or 1,024 in turn), then tail-calls it. Measured: the
//! XDP_TX floor, the balancer on known-flow ACKs (every run checked to be a
//! flow-table hit and a forward), and `xdp_pass` (frames to the namespace's
//! stack), each against the floor with as many flows; one CPU, wall time of
//! the test run. The peer must receive exactly what was sent.

use std::ffi::CString;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use aya::{
    maps::{Array, PerCpuArray, ProgramArray},
    programs::{Xdp, XdpMode},
    Ebpf,
};
use etherparse::PacketBuilder;
use lb_agent::dataplane;
use lb_common::{
    flows::FlowEvent,
    live_frames::{self, LiveFrame, RESTORE_LEN},
    programs, Action, Counter, Reason,
};
use lb_tests::{
    bpf, netns,
    topology::{Topology, TopologyOptions, LB},
};
use serde_json::{json, Value};

use crate::{write, CLIENT_MAC, CLIENT_V4, LB_MAC, VIP_V4};

/// The veth pair in the LB namespace: frames leave by `LB_END`, arrive at `PEER_END`.
const LB_END: &str = "a2live0";
const PEER_END: &str = "a2live1";
const FIRST_SOURCE_PORT: u16 = 30_000;
const FLOW_COUNTS: [u32; 2] = [1, 1024];
/// Frames per measured test run.
const REPEAT: u32 = 1_000_000;
/// Rounds of every case, interleaved; the table shows medians of the quiet rounds.
const ROUNDS: usize = 15;
/// Issue 14's target for known-flow ACKs, in multiples of the floor's packets per second.
const TARGET: f64 = 0.6;
const FLOOR: &str = "floor: parse + swap MACs + tx";
const ACK: &str = "ipv4 tcp ack, known flow (flow table hit)";
const PASS: &str = "xdp_pass (to the stack)";

/// What a case's frames must do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Each reaches the peer.
    Sent,
    /// Each reaches the peer, and is a flow-table hit forwarded by the balancer.
    ForwardedHit,
    /// None reaches the peer (`XDP_PASS`).
    Passed,
}

const CASES: [(&str, &str, Check); 3] =
    [(FLOOR, programs::FLOOR_TX, Check::Sent), (ACK, programs::BALANCER, Check::ForwardedHit), (PASS, programs::PASS, Check::Passed)];

fn tcp4(sport: u16, syn: bool) -> Vec<u8> {
    write(|v| {
        let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv4(CLIENT_V4, VIP_V4.octets(), 64).tcp(sport, 80, 2, 65535);
        let b = if syn { b.syn() } else { b.ack(1) };
        b.write_to_vec(v, &[]).unwrap()
    })
}

pub fn measure() -> Result<Value> {
    println!(
        "\nLive frames (BPF_F_TEST_XDP_LIVE_FRAMES out of a veth whose peer counts and drops; {REPEAT} frames a run, \
         {ROUNDS} interleaved rounds, medians of the quiet ones (floor within 8 % of its fastest), one CPU, \
         every program behind the same restoring wrapper)"
    );
    let topo = Topology::build(TopologyOptions { backends: 1, ..TopologyOptions::default() })?;
    topo.exec_ok(LB, "ip", &["link", "add", LB_END, "type", "veth", "peer", "name", PEER_END])?;
    // Nothing but the measured frames may reach the peer: no IPv6 (router
    // solicitations, MLD reports), no IPv4 address (so no ARP), no multicast.
    for end in [LB_END, PEER_END] {
        topo.exec_ok(LB, "sysctl", &["-qw", &format!("net.ipv6.conf.{end}.disable_ipv6=1")])?;
        topo.exec_ok(LB, "ip", &["link", "set", end, "multicast", "off", "up"])?;
    }
    let ns = topo.ns_name(LB).to_string();
    let rows = netns::run_in(&ns, || crate::on_one_cpu(measure_in_namespace))?;
    drop(topo);

    println!("{:<44} {:>6} {:>10} {:>12}", "path", "flows", "Mpps", "x tx floor");
    let mut out = Vec::new();
    for &flows in &FLOW_COUNTS {
        for (name, _, _) in CASES {
            let (pps, ratio) = rows.iter().find(|r| r.0 == name && r.1 == flows).map(|r| (r.2, r.3)).unwrap_or((f64::NAN, f64::NAN));
            println!("{:<44} {:>6} {:>10.2} {:>12.2}", name, flows, pps / 1e6, ratio);
            out.push(json!({"path": name, "flows": flows, "pps": pps, "ratio_to_tx_floor": ratio}));
        }
    }
    let ratio = |flows: u32| out.iter().find(|r| r["path"] == ACK && r["flows"] == flows).and_then(|r| r["ratio_to_tx_floor"].as_f64()).unwrap_or(f64::NAN);
    println!("known-flow ack: {:.2} x the floor's packets per second with 1 flow, {:.2} x with 1024 (target: at least {TARGET} x)", ratio(1), ratio(1024));
    Ok(json!({"repeat": REPEAT, "rounds": ROUNDS, "rows": out, "target_ratio": TARGET}))
}

/// One round's (path, flows, packets per second) of every case.
type Round = Vec<(&'static str, u32, f64)>;

/// Loads the bench object, attaches the counter to the peer, records the
/// flows and runs every case; returns (path, flows, median packets per
/// second, median ratio to the floor of the same round) over the quiet rounds.
fn measure_in_namespace() -> Result<Vec<(&'static str, u32, f64, f64)>> {
    let mut ebpf = crate::load()?;
    dataplane::load_program(&mut ebpf, live_frames::programs::LIVE_RESTORE)?;
    dataplane::load_program(&mut ebpf, live_frames::programs::COUNT_DROP)?
        .attach(PEER_END, XdpMode::Driver)
        .with_context(|| format!("attaching the counting program to {PEER_END}"))?;
    let name = CString::new(LB_END)?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {LB_END}: {}", std::io::Error::last_os_error());

    // Every flow the ACK runs use, recorded as its SYN would.
    for port in FIRST_SOURCE_PORT..FIRST_SOURCE_PORT + 1024 {
        let (action, _, _) = bpf::run(&ebpf, programs::BALANCER, &tcp4(port, true))?;
        ensure!(action == Action::Tx as u32, "the SYN from port {port} was not forwarded");
    }
    let ack = tcp4(FIRST_SOURCE_PORT, false);
    ensure!(ack.len() == RESTORE_LEN, "the wrapper restores {RESTORE_LEN} bytes, the frame has {}", ack.len());

    let mut rounds: Vec<Round> = Vec::new();
    for _ in 0..ROUNDS {
        let mut round = Vec::new();
        for &flows in &FLOW_COUNTS {
            for (name, program, check) in CASES {
                let pps = checked_run(&mut ebpf, program, check, &ack, flows, ifindex).with_context(|| format!("{name}, {flows} flows"))?;
                round.push((name, flows, pps));
            }
        }
        rounds.push(round);
    }
    let pps = |round: &Round, name: &str, flows: u32| round.iter().find(|r| r.0 == name && r.1 == flows).map_or(f64::NAN, |r| r.2);
    let mut rows = Vec::new();
    for &flows in &FLOW_COUNTS {
        // As in the per-packet section: only rounds whose floor ran within
        // `QUIET_SLACK` of its fastest, so a slow stretch of the VM does not
        // decide the ratio.
        let fastest = rounds.iter().map(|r| pps(r, FLOOR, flows)).fold(0.0, f64::max);
        let mut quiet: Vec<&Round> = rounds.iter().filter(|r| pps(r, FLOOR, flows) * crate::QUIET_SLACK >= fastest).collect();
        if quiet.len() < 3 {
            quiet = rounds.iter().collect();
        }
        for (name, _, _) in CASES {
            let median = |f: &dyn Fn(&Round) -> f64| {
                let mut v: Vec<f64> = quiet.iter().map(|r| f(r)).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            rows.push((name, flows, median(&|r| pps(r, name, flows)), median(&|r| pps(r, name, flows) / pps(r, FLOOR, flows))));
        }
    }
    Ok(rows)
}

/// One live run of `program` behind the wrapper; checks what `check` says
/// against the counters and returns packets per second.
fn checked_run(ebpf: &mut Ebpf, program: &str, check: Check, frame: &[u8], flows: u32, ifindex: u32) -> Result<f64> {
    let target = {
        let xdp: &Xdp = ebpf.program(program).with_context(|| format!("no program {program}"))?.try_into()?;
        xdp.fd()?.try_clone()?
    };
    let mut targets = ProgramArray::try_from(ebpf.map_mut(live_frames::maps::LIVE_TARGET).context("LIVE_TARGET")?)?;
    targets.set(0, &target, 0)?;
    let mut bytes = [0u8; RESTORE_LEN];
    bytes.copy_from_slice(frame);
    let mut state: Array<_, LiveFrame> = Array::try_from(ebpf.map_mut(live_frames::maps::LIVE_FRAME).context("LIVE_FRAME")?)?;
    state.set(0, LiveFrame { flows, next: 0, bytes, _pad: [0; 2] }, 0)?;

    let before = (peer_received(ebpf)?, dataplane::read_counters(ebpf)?);
    let wrapper: &Xdp = ebpf.program(live_frames::programs::LIVE_RESTORE).context("no wrapper program")?.try_into()?;
    let elapsed = live_test_run(wrapper.fd()?.as_fd().as_raw_fd() as u32, frame, ifindex, REPEAT)?;
    // What the run queued to the peer is received in softirq before the run
    // returns; a moment more costs nothing and rules out a late frame.
    std::thread::sleep(Duration::from_millis(20));
    let after = (peer_received(ebpf)?, dataplane::read_counters(ebpf)?);
    // The wrapper counts the repeats it restored (live runs report no return value).
    let state: Array<_, LiveFrame> = Array::try_from(ebpf.map(live_frames::maps::LIVE_FRAME).context("LIVE_FRAME")?)?;
    let wrapped = state.get(&0, 0)?.next;
    ensure!(wrapped == REPEAT, "the wrapper ran {wrapped} times in {REPEAT} repeats");
    let received = after.0 - before.0;
    let n = u64::from(REPEAT);
    let expected = if check == Check::Passed { 0 } else { n };
    ensure!(received == expected, "the peer received {received} frames, {expected} were sent");
    if check == Check::ForwardedHit {
        let hits = after.1.flow_event(FlowEvent::Hit).packets - before.1.flow_event(FlowEvent::Hit).packets;
        let forwarded = after.1.reason(Reason::Forwarded).packets - before.1.reason(Reason::Forwarded).packets;
        ensure!(hits == n && forwarded == n, "{hits} flow-table hits and {forwarded} forwards in {n} frames");
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

fn peer_received(ebpf: &Ebpf) -> Result<u64> {
    let map: PerCpuArray<_, Counter> = PerCpuArray::try_from(ebpf.map(live_frames::maps::PEER_RECEIVED).context("PEER_RECEIVED")?)?;
    Ok(map.get(&0, 0)?.iter().map(|c| c.packets).sum())
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN` (the `test` member), as far as
/// the live-frames fields; the kernel takes a shorter attr with zeros beyond.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// A live-frames test run (aya 0.14's `TestRun` has no flags); returns its wall time.
fn live_test_run(prog_fd: u32, frame: &[u8], ifindex: u32, repeat: u32) -> Result<Duration> {
    // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let attr = TestRunAttr {
        prog_fd,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: size_of_val(&md) as u32,
        ctx_in: md.as_ptr() as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..TestRunAttr::default()
    };
    let started = Instant::now();
    // SAFETY: `attr` and the buffers it points to outlive the call; the
    // kernel writes only into `attr` (no data_out / ctx_out given).
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &attr as *const TestRunAttr, size_of::<TestRunAttr>() as u32) };
    let elapsed = started.elapsed();
    if r != 0 {
        bail!("BPF_PROG_TEST_RUN with live frames: {} (needs a kernel of 5.18 or later)", std::io::Error::last_os_error());
    }
    Ok(elapsed)
}
