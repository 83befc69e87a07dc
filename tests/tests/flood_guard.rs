//! The new-flow guard through BPF_PROG_TEST_RUN (`lb.new_flow_guard`, see
//! `lb_common::flow_guard`): a burst of new flows past the per-CPU limit is
//! forwarded by the ring but not recorded, the unrecorded counter matches
//! exactly, recorded flows stay in the table and keep hitting, `"off"` records
//! every flow, and a reload changes the limit in place. Needs root (loading
//! BPF programs); skips otherwise.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use aya::maps::HashMap as BpfHashMap;
use etherparse::PacketBuilder;
use lb_agent::{dataplane, plan};
use lb_common::{
    flows::{FlowEntry, FlowEvent, FlowKey},
    maps, programs, Action, PROTO_TCP,
};
use lb_tests::bpf::{self, Loaded, Overrides};
use lb_tests::configs::{self, TestVip, BACKENDS_V4};
use toml::Value;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const PORT: u16 = 80;
/// New flows each CPU may record per second in these tests.
const LIMIT: u16 = 100;
/// New flows of the burst past the limit.
const EXTRA: u16 = 37;
/// Offset of the outer IPv4 destination in an encapsulated frame.
const OUTER_DST: usize = 14 + 16;
/// The guard counts over one second: a burst must fit in it to be one window.
const WINDOW: Duration = Duration::from_secs(1);

fn config(guard: impl Into<Value>) -> String {
    configs::unattached("guard0")
        .ring_size(1021)
        .max_vips(4)
        .max_backends(16)
        .lb("new_flow_guard", guard)
        .vip(TestVip::new("web", "192.0.2.10:80").backends(BACKENDS_V4))
        .static_macs()
        .to_toml()
}

/// Loads the balancer with `guard`, or `None` without root.
fn load(guard: impl Into<Value>) -> Option<Loaded> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: flood guard fixtures load BPF programs and need root");
        return None;
    }
    pin_to_cpu0();
    let overrides = Overrides { flow_table_size: Some(4096), ..Overrides::default() };
    Some(bpf::load(&config(guard), "guard.toml", &[programs::BALANCER], overrides).expect("load the fixture object"))
}

/// The guard's window and the test runs are per CPU: every run of a test on one CPU.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set), 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
    }
}

fn tcp(sport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x10], [2, 0, 0, 0, 0, 2]).ipv4(CLIENT.octets(), VIP.octets(), 64).tcp(sport, PORT, 1, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write_to_vec(&mut v, b"data").unwrap();
    v
}

/// Runs one packet; it must be forwarded. Returns the backend it went to.
fn forward(l: &Loaded, packet: &[u8]) -> IpAddr {
    let (action, out, _) = bpf::run(&l.ebpf, programs::BALANCER, packet).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, Action::Tx as u32, "every new flow is forwarded, recorded or not");
    let d = &out[OUTER_DST..OUTER_DST + 4];
    IpAddr::V4(Ipv4Addr::new(d[0], d[1], d[2], d[3]))
}

/// The ring's backend for the flow from source port `sport`.
fn ring_choice(l: &Loaded, sport: u16) -> IpAddr {
    let vip = plan::find_vip(&l.plan, VIP.into(), PORT, PROTO_TCP).expect("VIP");
    let slot = plan::slot(&l.plan, vip, CLIENT.into(), sport, PORT).expect("slot");
    let id = vip.ring()[slot as usize];
    l.plan.backends.iter().find(|b| b.id == id).expect("backend of the slot").address
}

fn flow_event(l: &Loaded, e: FlowEvent) -> u64 {
    dataplane::read_counters(&l.ebpf).unwrap().flow_event(e).packets
}

/// Source ports of the flows the table holds.
fn recorded_ports(l: &Loaded) -> Vec<u16> {
    let flows: BpfHashMap<_, FlowKey, FlowEntry> = BpfHashMap::try_from(l.ebpf.map(maps::FLOWS).unwrap()).unwrap();
    let mut ports: Vec<u16> = flows.keys().map(|k| u16::from_be(k.unwrap().src_port_be)).collect();
    ports.sort_unstable();
    ports
}

/// Sends one SYN from each of `ports` within one window; returns the
/// backends they went to.
fn burst(l: &Loaded, ports: std::ops::Range<u16>) -> Vec<(u16, IpAddr)> {
    let started = Instant::now();
    let sent = ports.map(|p| (p, forward(l, &tcp(p, true)))).collect();
    assert!(started.elapsed() < WINDOW, "the burst took {:?}, more than the guard's window: the machine is too loaded for this test", started.elapsed());
    sent
}

#[test]
fn a_burst_past_the_limit_is_forwarded_but_not_recorded() {
    let Some(l) = load(i64::from(LIMIT)) else { return };
    let first = 40_000;
    let sent = burst(&l, first..first + LIMIT + EXTRA);
    for (port, backend) in &sent {
        assert_eq!(*backend, ring_choice(&l, *port), "flow from port {port}: the ring places it, recorded or not");
    }
    assert_eq!(recorded_ports(&l), (first..first + LIMIT).collect::<Vec<_>>(), "the first LIMIT new flows are recorded, no other");
    assert_eq!(flow_event(&l, FlowEvent::Unrecorded), u64::from(EXTRA), "each new flow past the limit is counted once");
    assert_eq!(flow_event(&l, FlowEvent::Miss), u64::from(LIMIT + EXTRA), "unrecorded flows are misses too");

    // Established flows stay: each recorded flow's next packet hits, even
    // though this CPU is still over its limit.
    for port in first..first + LIMIT {
        forward(&l, &tcp(port, false));
    }
    assert_eq!(flow_event(&l, FlowEvent::Hit), u64::from(LIMIT), "every recorded flow hits");
    assert_eq!(recorded_ports(&l).len(), usize::from(LIMIT), "hits record nothing new");
}

#[test]
fn a_new_window_records_again() {
    let Some(l) = load(i64::from(LIMIT)) else { return };
    burst(&l, 1_000..1_000 + LIMIT + EXTRA);
    assert_eq!(flow_event(&l, FlowEvent::Unrecorded), u64::from(EXTRA));
    // The guard reads the coarse clock (as of the last tick, a few ms behind).
    std::thread::sleep(WINDOW + Duration::from_millis(50));
    let later = 2_000;
    burst(&l, later..later + 5);
    assert_eq!(flow_event(&l, FlowEvent::Unrecorded), u64::from(EXTRA), "a second later the CPU is under its limit again");
    assert!(recorded_ports(&l).ends_with(&(later..later + 5).collect::<Vec<_>>()), "the new window's flows are recorded");
}

#[test]
fn off_records_every_new_flow() {
    let Some(l) = load("off") else { return };
    let n = 3 * LIMIT;
    burst(&l, 3_000..3_000 + n);
    assert_eq!(recorded_ports(&l).len(), usize::from(n));
    assert_eq!(flow_event(&l, FlowEvent::Unrecorded), 0);
}

#[test]
fn a_reload_changes_the_limit_in_place() {
    let Some(mut l) = load(i64::from(LIMIT)) else { return };
    burst(&l, 4_000..4_000 + LIMIT + EXTRA);
    assert_eq!(flow_event(&l, FlowEvent::Unrecorded), u64::from(EXTRA));
    l.reload(&config("off"), "guard.toml").expect("reload with the guard off");
    burst(&l, 5_000..5_000 + EXTRA);
    assert_eq!(flow_event(&l, FlowEvent::Unrecorded), u64::from(EXTRA), "off after the reload: nothing more goes unrecorded");
    assert_eq!(recorded_ports(&l).len(), usize::from(LIMIT + EXTRA));
    l.reload(&config(5i64), "guard.toml").expect("reload with a limit of 5");
    burst(&l, 6_000..6_010);
    assert_eq!(flow_event(&l, FlowEvent::Unrecorded), u64::from(EXTRA) + 5, "the new limit (5) applies from a fresh window");
}
