//! Flow table fixtures through BPF_PROG_TEST_RUN: a known flow keeps its
//! recorded backend whatever happens to the ring, a TCP SYN takes the ring's
//! choice, a flow whose backend is removed is re-hashed, and a stateless VIP
//! ignores the table; an ACK the table does not know counts as a non-SYN
//! miss (an established flow the table lost), a SYN or a hit does not. Needs root (loading BPF programs); skips otherwise.

use std::net::{IpAddr, Ipv4Addr};

use aya::{maps::Array, Ebpf};
use etherparse::PacketBuilder;
use lb_agent::{
    dataplane,
    plan::{self, Plan},
    dataplane::rings::MappedRings,
};
use lb_tests::bpf::{self, Loaded, Overrides};
use lb_tests::configs::{self, TestVip, BACKENDS_V4};
use lb_common::{
    flows::{member_index, FlowEvent, MEMBER_UNUSABLE},
    maps, programs, Action, BackendEntry,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const STICKY_PORT: u16 = 80;
const STATELESS_PORT: u16 = 81;
const FLOW_TABLE: u32 = 4096;
/// Offset of the outer IPv4 destination in an encapsulated frame.
const OUTER_DST: usize = 14 + 16;

/// One address, two ports: a VIP with the flow table and a stateless one.
fn config() -> String {
    configs::unattached("fixture0")
        .ring_size(1021)
        .max_vips(4)
        .max_backends(16)
        .vip(TestVip::new("sticky", "192.0.2.10:80").backends(BACKENDS_V4))
        .vip(TestVip::new("stateless", "192.0.2.10:81").flow_table(false).backends(BACKENDS_V4))
        .static_macs()
        .to_toml()
}

struct Harness {
    ebpf: Ebpf,
    plan: Plan,
    max_backends: u32,
}

impl Harness {
    fn new() -> Option<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: flow fixtures load BPF programs and need root");
            return None;
        }
        let overrides = Overrides { flow_table_size: Some(FLOW_TABLE), ..Overrides::default() };
        let Loaded { ebpf, plan, config } =
            bpf::load(&config(), "flows.toml", &[programs::BALANCER], overrides).expect("load the fixture object");
        Some(Harness { ebpf, plan, max_backends: config.lb.max_backends })
    }

    /// Runs one packet; returns the backend it was tunnelled to.
    fn backend_of(&self, packet: &[u8]) -> IpAddr {
        let (action, out, _) = bpf::run(&self.ebpf, programs::BALANCER, packet).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, Action::Tx as u32, "the packet is forwarded");
        let d = &out[OUTER_DST..OUTER_DST + 4];
        IpAddr::V4(Ipv4Addr::new(d[0], d[1], d[2], d[3]))
    }

    fn row(&self, port: u16) -> u32 {
        plan::find_vip(&self.plan, VIP.into(), port, lb_common::PROTO_TCP).expect("VIP").row
    }

    fn id(&self, backend: IpAddr) -> u32 {
        self.plan.backend_id(backend).expect("configured backend")
    }

    /// Points every slot of the VIP's ring at `backend` (as a reload or a
    /// health change could, slot by slot).
    fn fill_ring(&self, port: u16, backend: IpAddr) {
        let rings = MappedRings::new(&self.ebpf).expect("mmap RINGS");
        let base = self.row(port) * self.plan.ring_size;
        for slot in 0..self.plan.ring_size {
            rings.set(base + slot, self.id(backend)).unwrap();
        }
    }

    /// What the agent does when a backend leaves a VIP or goes down.
    fn make_unusable(&mut self, port: u16, backend: IpAddr) {
        let index = member_index(self.row(port), self.id(backend), self.max_backends);
        let mut members: Array<_, u32> = Array::try_from(self.ebpf.map_mut(maps::MEMBERS).unwrap()).unwrap();
        members.set(index, MEMBER_UNUSABLE, 0).unwrap();
    }

    /// What the agent does when no VIP uses a backend any more.
    fn erase_backend(&mut self, backend: IpAddr) {
        let id = self.id(backend);
        let mut backends: Array<_, BackendEntry> = Array::try_from(self.ebpf.map_mut(maps::BACKENDS).unwrap()).unwrap();
        backends.set(id, BackendEntry { addr: [0; 4], next_hop_mac: [0; 6], family: 0, _pad: 0 }, 0).unwrap();
    }

    fn flow_events(&self) -> [u64; 3] {
        let c = dataplane::read_counters(&self.ebpf).unwrap();
        [FlowEvent::Hit, FlowEvent::Miss, FlowEvent::Rehash].map(|e| c.flow_event(e).packets)
    }

    /// Misses of TCP packets without SYN: established flows the table lost.
    fn non_syn_misses(&self) -> u64 {
        dataplane::read_counters(&self.ebpf).unwrap().flow_event(FlowEvent::NonSynMiss).packets
    }

    fn other_than(&self, backend: IpAddr) -> IpAddr {
        self.plan.backends.iter().map(|b| b.address).find(|a| *a != backend).unwrap()
    }
}

/// A packet of an established connection (ACK), or its first packet (SYN).
fn tcp(sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x10], [2, 0, 0, 0, 0, 2])
        .ipv4(CLIENT.octets(), VIP.octets(), 64)
        .tcp(sport, dport, 1, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write_to_vec(&mut v, b"data").unwrap();
    v
}

#[test]
fn a_known_flow_keeps_its_backend_after_the_ring_changes() {
    let Some(h) = Harness::new() else { return };
    let established = tcp(40_000, STICKY_PORT, false);
    let first = h.backend_of(&established);
    assert_eq!(h.flow_events(), [0, 1, 0], "first packet: a miss, recorded");
    let other = h.other_than(first);
    h.fill_ring(STICKY_PORT, other);
    for _ in 0..3 {
        assert_eq!(h.backend_of(&established), first, "the recorded backend wins over the ring");
    }
    assert_eq!(h.flow_events(), [3, 1, 0], "three hits");
    // A SYN on the same 5-tuple is a new connection: the ring places it.
    assert_eq!(h.backend_of(&tcp(40_000, STICKY_PORT, true)), other, "a SYN follows the ring");
    assert_eq!(h.backend_of(&established), other, "and is recorded");
    assert_eq!(h.flow_events(), [4, 2, 0]);
}

#[test]
fn a_flow_whose_backend_is_removed_is_rehashed() {
    let Some(mut h) = Harness::new() else { return };
    let flow_a = tcp(41_000, STICKY_PORT, false);
    let first = h.backend_of(&flow_a);
    let other = h.other_than(first);
    h.fill_ring(STICKY_PORT, other);
    assert_eq!(h.backend_of(&flow_a), first, "still recorded while usable");
    h.make_unusable(STICKY_PORT, first);
    assert_eq!(h.backend_of(&flow_a), other, "removed from the VIP: re-hashed through the ring");
    assert_eq!(h.backend_of(&flow_a), other, "and recorded again");
    assert_eq!(h.flow_events(), [2, 1, 1], "hit, re-hash, hit after the miss");

    // Erasing the backend entry (no VIP uses it) re-hashes too.
    let flow_b = tcp(41_001, STICKY_PORT, false);
    assert_eq!(h.backend_of(&flow_b), other);
    let third = h.plan.backends.iter().map(|b| b.address).find(|a| *a != first && *a != other).unwrap();
    h.fill_ring(STICKY_PORT, third);
    h.erase_backend(other);
    assert_eq!(h.backend_of(&flow_b), third, "erased backend: re-hashed");
}

#[test]
fn a_stateless_vip_ignores_the_flow_table() {
    let Some(h) = Harness::new() else { return };
    let packet = tcp(42_000, STATELESS_PORT, false);
    let first = h.backend_of(&packet);
    let other = h.other_than(first);
    h.fill_ring(STATELESS_PORT, other);
    assert_eq!(h.backend_of(&packet), other, "every packet follows the ring");
    assert_eq!(h.flow_events(), [0, 0, 0], "the table was not used");
}

#[test]
fn only_an_unknown_established_flow_counts_as_a_non_syn_miss() {
    let Some(h) = Harness::new() else { return };
    h.backend_of(&tcp(43_000, STICKY_PORT, true));
    assert_eq!((h.flow_events(), h.non_syn_misses()), ([0, 1, 0], 0), "a SYN misses, as any new connection does, but is not counted apart");
    h.backend_of(&tcp(43_000, STICKY_PORT, false));
    assert_eq!((h.flow_events(), h.non_syn_misses()), ([1, 1, 0], 0), "an ACK of the recorded flow hits");
    h.backend_of(&tcp(43_001, STICKY_PORT, false));
    assert_eq!((h.flow_events(), h.non_syn_misses()), ([1, 2, 0], 1), "an ACK the table does not know: a miss, and a non-SYN miss");
    h.backend_of(&tcp(43_001, STICKY_PORT, false));
    assert_eq!((h.flow_events(), h.non_syn_misses()), ([2, 2, 0], 1), "recorded by its miss: the next ACK hits");
    h.backend_of(&tcp(43_002, STATELESS_PORT, false));
    assert_eq!(h.non_syn_misses(), 1, "a stateless VIP looks nothing up: no miss of any kind");
}
