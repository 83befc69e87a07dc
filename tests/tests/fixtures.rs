//! Packet fixtures: the real BPF object, with maps filled by the agent's own
//! plan-writing code, run on crafted packets through BPF_PROG_TEST_RUN.
//! Each case is data: a name, the input packet, and what must come out.
//!
//! Needs root (loading BPF programs); skips with a message otherwise.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::Ebpf;
use etherparse::{Ethernet2Header, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder, VlanId};
use lb_agent::{
    config::MacAddr,
    dataplane,
    plan::{self, Plan},
};
use lb_tests::bpf::{self, Loaded, Overrides};
use lb_tests::configs::{self, TestVip, BACKENDS_V4, TUNNEL_V4, TUNNEL_V6};
use lb_common::{programs, Action, DecapReason, Reason, PROTO_TCP, PROTO_UDP};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// The interface MTU the balancer is loaded with.
const FIXTURE_MTU: u32 = 1500;
/// Flows the fixtures' flow table holds (a few hundred are used).
const FIXTURE_FLOW_TABLE: u32 = 4096;

/// Eight VIPs: TCP and UDP on one address, any port, source hash, IPv6,
/// both cross-family tunnels and forwarded fragments; `policy` adds `[lb]`
/// packet policies.
fn config(policy: &[(&str, &str)]) -> String {
    let c = configs::unattached("fixture0").ring_size(1021).hash_seed(0x5eed).max_vips(16).max_backends(64);
    let c = policy.iter().fold(c.lb("bpffs_dir", "/sys/fs/bpf/lb-fixtures-unused"), |c, (key, value)| c.lb(key, *value));
    c.vip(configs::web())
        .vip(configs::dns())
        .vip(TestVip::new("any-port", "192.0.2.20:0").backends(["198.51.100.13"]))
        .vip(TestVip::new("sticky", "192.0.2.40:80").set("hash", "source").backends(BACKENDS_V4))
        .vip(configs::web6())
        .vip(TestVip::new("v4-to-v6", "192.0.2.30:80").backends(["2001:db8::21"]))
        .vip(TestVip::new("frag-dns", "192.0.2.50:53/udp").set("fragments", "forward").backends(BACKENDS_V4))
        .vip(TestVip::new("v6-to-v4", "[2001:db8:f::20]:53/udp").backends(["198.51.100.21"]))
        .static_macs()
        .to_toml()
}

struct Harness {
    ebpf: Ebpf,
    plan: Plan,
    balancer_runs: u64,
    decap_runs: u64,
}

impl Harness {
    fn new() -> Option<Self> {
        Self::with_policy(&[])
    }

    /// A harness whose `[lb]` table also has `policy` (packet policies).
    fn with_policy(policy: &[(&str, &str)]) -> Option<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: packet fixtures load BPF programs and need root");
            return None;
        }
        let text = config(policy);
        let overrides = Overrides { mtu: FIXTURE_MTU, flow_table_size: Some(FIXTURE_FLOW_TABLE), ..Overrides::default() };
        let Loaded { ebpf, plan, .. } =
            bpf::load(&text, "fixtures.toml", &[programs::BALANCER, programs::DECAP], overrides).expect("load the fixture object");
        Some(Self { ebpf, plan, balancer_runs: 0, decap_runs: 0 })
    }

    fn run(&mut self, program: &str, input: &[u8]) -> (u32, Vec<u8>) {
        let (action, out, _) = bpf::run(&self.ebpf, program, input).expect("BPF_PROG_TEST_RUN");
        if program == programs::BALANCER {
            self.balancer_runs += 1;
        } else {
            self.decap_runs += 1;
        }
        (action, out)
    }

    fn balance(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        self.run(programs::BALANCER, input)
    }

    fn decap(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        self.run(programs::DECAP, input)
    }

    fn reason_packets(&self, r: Reason) -> u64 {
        dataplane::read_counters(&self.ebpf).unwrap().reason(r).packets
    }

    /// The backend the agent predicts for a flow (the kernel must agree).
    fn predicted(&self, vip: IpAddr, proto: u8, src: IpAddr, sport: u16, dport: u16) -> (IpAddr, MacAddr) {
        let planned = plan::find_vip(&self.plan, vip, dport, proto).expect("VIP in the fixture config");
        let id = plan::lookup(&self.plan, planned, src, sport, dport);
        let b = self.plan.backends.iter().find(|b| b.id == id).expect("predicted backend exists");
        (b.address, b.mac.unwrap())
    }
}

// ---------------------------------------------------------------- packets

fn eth() -> etherparse::PacketBuilderStep<Ethernet2Header> {
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
}

/// Serialises a finished builder (TCP or UDP step) with its payload.
macro_rules! bytes {
    ($builder:expr, $payload:expr) => {{
        let mut v = Vec::new();
        $builder.write_to_vec(&mut v, $payload).unwrap();
        v
    }};
}

fn tcp4(dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    bytes!(eth().ipv4(CLIENT_V4.octets(), dst.octets(), 64).tcp(sport, dport, 1, 65535).syn(), &[])
}

fn udp4(dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    bytes!(eth().ipv4(CLIENT_V4.octets(), dst.octets(), 64).udp(sport, dport), payload)
}

fn tcp6(dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    bytes!(eth().ipv6(CLIENT_V6.octets(), dst.octets(), 64).tcp(sport, dport, 1, 65535).ack(1), payload)
}

fn udp6(dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    bytes!(eth().ipv6(CLIENT_V6.octets(), dst.octets(), 64).udp(sport, dport), payload)
}

fn vlan_tcp4(dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    bytes!(
        eth().single_vlan(VlanId::try_new(42).unwrap()).ipv4(CLIENT_V4.octets(), dst.octets(), 64).tcp(sport, dport, 7, 1024),
        b"GET / HTTP/1.0\r\n\r\n"
    )
}

/// An IPv4 TCP packet whose header carries 4 bytes of options (IHL 6).
fn tcp4_with_options(dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut ip = Ipv4Header::new(20, 64, IpNumber::TCP, CLIENT_V4.octets(), dst.octets()).unwrap();
    ip.options = [1u8, 1, 1, 0][..].try_into().unwrap(); // NOP NOP NOP EOL
    bytes!(eth().ip(etherparse::IpHeaders::Ipv4(ip, Default::default())).tcp(sport, dport, 1, 1024), &[])
}

const L2: usize = 14;
const L2_VLAN: usize = 18;

/// Offset of the IPv4 header's fixed fields in a frame without VLAN.
mod v4 {
    pub const IHL: usize = super::L2;
    pub const TOT_LEN: usize = super::L2 + 2;
    pub const FRAGS: usize = super::L2 + 6;
    pub const PROTO: usize = super::L2 + 9;
}

// ---------------------------------------------------------------- checks

/// What an encapsulated frame must look like.
struct Expected<'a> {
    input: &'a [u8],
    input_l2: usize,
    backend: IpAddr,
    backend_mac: MacAddr,
}

/// Checks the outer frame: MACs, VLAN, outer IP header (checksum, lengths,
/// TTL/hop limit, protocol, addresses) and that the inner packet is the input's
/// IP packet byte for byte.
fn assert_encapsulated(name: &str, out: &[u8], e: &Expected) {
    assert_eq!(&out[..6], &e.backend_mac.0, "{name}: outer destination MAC is the backend's next hop");
    assert_eq!(&out[6..12], &LB_MAC, "{name}: outer source MAC is the LB's (the input's destination)");
    assert_eq!(&out[12..e.input_l2 - 2], &e.input[12..e.input_l2 - 2], "{name}: VLAN tag kept");
    let inner = &e.input[e.input_l2..];
    let inner_is_v4 = inner[0] >> 4 == 4;
    let ether_type = u16::from_be_bytes([out[e.input_l2 - 2], out[e.input_l2 - 1]]);
    let outer = &out[e.input_l2..];
    match e.backend {
        IpAddr::V4(backend) => {
            assert_eq!(ether_type, 0x0800, "{name}: outer EtherType IPv4");
            let (h, rest) = Ipv4Header::from_slice(outer).unwrap_or_else(|err| panic!("{name}: outer IPv4: {err}"));
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "{name}: outer IPv4 checksum");
            assert_eq!(h.ihl(), 5, "{name}: no outer options");
            assert_eq!(h.total_len as usize, 20 + inner.len(), "{name}: outer total length");
            assert_eq!(h.time_to_live, lb_common::limits::TUNNEL_TTL, "{name}: outer TTL");
            assert!(h.dont_fragment, "{name}: DF set");
            assert_eq!(h.protocol, if inner_is_v4 { IpNumber(4) } else { IpNumber(41) }, "{name}: outer protocol");
            assert_eq!(h.source, TUNNEL_V4.octets(), "{name}: outer source");
            assert_eq!(h.destination, backend.octets(), "{name}: outer destination = predicted backend");
            assert_eq!(rest, inner, "{name}: inner packet unchanged");
        }
        IpAddr::V6(backend) => {
            assert_eq!(ether_type, 0x86dd, "{name}: outer EtherType IPv6");
            let (h, rest) = Ipv6Header::from_slice(outer).unwrap_or_else(|err| panic!("{name}: outer IPv6: {err}"));
            assert_eq!(h.payload_length as usize, inner.len(), "{name}: outer payload length");
            assert_eq!(h.hop_limit, lb_common::limits::TUNNEL_TTL, "{name}: outer hop limit");
            assert_eq!(h.next_header, if inner_is_v4 { IpNumber(4) } else { IpNumber(41) }, "{name}: next header");
            assert_eq!(h.source, TUNNEL_V6.octets(), "{name}: outer source");
            assert_eq!(h.destination, backend.octets(), "{name}: outer destination = predicted backend");
            assert_eq!(rest, inner, "{name}: inner packet unchanged");
        }
    }
}

struct TxCase {
    name: &'static str,
    input: Vec<u8>,
    l2: usize,
    vip: IpAddr,
    proto: u8,
    src: IpAddr,
    sport: u16,
    dport: u16,
}

fn tx_cases() -> Vec<TxCase> {
    let vip4 = Ipv4Addr::new(192, 0, 2, 10);
    let vip6: Ipv6Addr = "2001:db8:f::10".parse().unwrap();
    let c4 = IpAddr::V4(CLIENT_V4);
    let c6 = IpAddr::V6(CLIENT_V6);
    let case = |name, input, l2, vip: IpAddr, proto, src, sport, dport| TxCase { name, input, l2, vip, proto, src, sport, dport };
    vec![
        case("ipv4 tcp syn", tcp4(vip4, 40000, 80), L2, vip4.into(), PROTO_TCP, c4, 40000, 80),
        case("ipv4 udp", udp4(vip4, 5353, 53, b"query"), L2, vip4.into(), PROTO_UDP, c4, 5353, 53),
        case("ipv4 tcp in vlan 42", vlan_tcp4(vip4, 40001, 80), L2_VLAN, vip4.into(), PROTO_TCP, c4, 40001, 80),
        case("ipv4 tcp with ip options", tcp4_with_options(vip4, 40002, 80), L2, vip4.into(), PROTO_TCP, c4, 40002, 80),
        case("ipv4 port-0 vip", tcp4(Ipv4Addr::new(192, 0, 2, 20), 40003, 4444), L2, Ipv4Addr::new(192, 0, 2, 20).into(), PROTO_TCP, c4, 40003, 4444),
        case("ipv6 tcp", tcp6(vip6, 40004, 80, b"hello"), L2, vip6.into(), PROTO_TCP, c6, 40004, 80),
        case("ipv4 vip to ipv6 backend", tcp4(Ipv4Addr::new(192, 0, 2, 30), 40005, 80), L2, Ipv4Addr::new(192, 0, 2, 30).into(), PROTO_TCP, c4, 40005, 80),
        case("ipv6 vip to ipv4 backend", udp6("2001:db8:f::20".parse().unwrap(), 40006, 53, b"q"), L2, "2001:db8:f::20".parse().unwrap(), PROTO_UDP, c6, 40006, 53),
    ]
}

// ---------------------------------------------------------------- tests

#[test]
fn vip_packets_are_encapsulated_to_the_predicted_backend_and_decap_restores_them() {
    let Some(mut h) = Harness::new() else { return };
    for c in tx_cases() {
        let (action, out) = h.balance(&c.input);
        assert_eq!(action, Action::Tx as u32, "{}: action", c.name);
        let (backend, backend_mac) = h.predicted(c.vip, c.proto, c.src, c.sport, c.dport);
        assert_encapsulated(c.name, &out, &Expected { input: &c.input, input_l2: c.l2, backend, backend_mac });

        // The backend's decap program must give back the client's IP packet.
        let (action, restored) = h.decap(&out);
        assert_eq!(action, Action::Pass as u32, "{}: decap action", c.name);
        assert_eq!(&restored[c.l2..], &c.input[c.l2..], "{}: decap restores the inner packet byte for byte", c.name);
        assert_eq!(&restored[..12], &out[..12], "{}: decap keeps the frame's MACs", c.name);
        assert_eq!(&restored[12..c.l2], &c.input[12..c.l2], "{}: decap restores VLAN tag and EtherType", c.name);
    }
    let counters = dataplane::read_counters(&h.ebpf).unwrap();
    assert_eq!(counters.reason(Reason::Forwarded).packets, tx_cases().len() as u64);
    assert_eq!(counters.decap_reason(DecapReason::Decapsulated).packets, tx_cases().len() as u64);
}

#[test]
fn flows_spread_over_backends_exactly_as_the_agent_predicts() {
    let Some(mut h) = Harness::new() else { return };
    let vip = Ipv4Addr::new(192, 0, 2, 10);
    let mut seen = std::collections::BTreeMap::new();
    for sport in 20000..20300u16 {
        let input = tcp4(vip, sport, 80);
        let (action, out) = h.balance(&input);
        assert_eq!(action, Action::Tx as u32);
        let (backend, _) = h.predicted(vip.into(), PROTO_TCP, CLIENT_V4.into(), sport, 80);
        let got = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
        assert_eq!(IpAddr::V4(got), backend, "source port {sport}");
        *seen.entry(got).or_insert(0u32) += 1;
    }
    assert_eq!(seen.len(), 3, "300 flows reach all 3 backends: {seen:?}");
    // Per-VIP and per-backend counters follow the packets.
    let counters = dataplane::read_counters(&h.ebpf).unwrap();
    let web = h.plan.vips.iter().find(|v| v.name == "web").unwrap();
    assert_eq!(counters.vips[web.row as usize].packets, 300);
    for (addr, n) in &seen {
        let id = h.plan.backends.iter().find(|b| b.address == IpAddr::V4(*addr)).unwrap().id;
        assert_eq!(counters.backends[id as usize].packets, *n as u64, "backend {addr}");
    }
}

#[test]
fn source_hash_vip_keeps_a_client_on_one_backend() {
    let Some(mut h) = Harness::new() else { return };
    let vip = Ipv4Addr::new(192, 0, 2, 40);
    let mut backends = std::collections::BTreeSet::new();
    for sport in 30000..30050u16 {
        let (action, out) = h.balance(&tcp4(vip, sport, 80));
        assert_eq!(action, Action::Tx as u32);
        backends.insert([out[30], out[31], out[32], out[33]]);
    }
    assert_eq!(backends.len(), 1, "one client, one backend");
    let (predicted, _) = h.predicted(vip.into(), PROTO_TCP, CLIENT_V4.into(), 1, 80);
    assert_eq!(IpAddr::V4(Ipv4Addr::from(*backends.first().unwrap())), predicted);
}

/// Cases that must leave the packet untouched, with the reason counted.
#[test]
fn packets_not_for_a_vip_pass_untouched_with_a_reason() {
    let Some(mut h) = Harness::new() else { return };
    let vip4 = Ipv4Addr::new(192, 0, 2, 10);
    let mut bad_ihl = tcp4(vip4, 1, 80);
    bad_ihl[v4::IHL] = 0x44;
    let mut long_tot_len = tcp4(vip4, 1, 80);
    long_tot_len[v4::TOT_LEN..v4::TOT_LEN + 2].copy_from_slice(&200u16.to_be_bytes());
    let mut first_fragment = tcp4(vip4, 1, 80);
    first_fragment[v4::FRAGS] = 0x20; // MF
    let mut later_fragment = tcp4(vip4, 1, 80);
    later_fragment[v4::FRAGS + 1] = 0x10; // offset 16 * 8
    // A consistent IPv4 header whose payload is too short for a TCP header.
    let mut short_tcp = tcp4(vip4, 1, 80);
    short_tcp.truncate(L2 + 20 + 10);
    short_tcp[v4::TOT_LEN..v4::TOT_LEN + 2].copy_from_slice(&30u16.to_be_bytes());
    let mut gre = tcp4(vip4, 1, 80);
    gre[v4::PROTO] = 47;
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0u8; 20]);
    let hop_by_hop = {
        let mut p = tcp6("2001:db8:f::10".parse().unwrap(), 1, 80, b"");
        p[L2 + 6] = 0; // next header: hop-by-hop options
        p
    };

    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        ("tcp to a host address", tcp4(TUNNEL_V4, 40000, 22), Reason::NoVip),
        ("vip address, port not configured", tcp4(vip4, 40000, 443), Reason::UnknownPortPassed),
        ("vip address and port, other protocol", udp4(vip4, 40000, 80, b"x"), Reason::UnknownPortPassed),
        ("ipv6 not a vip", tcp6(CLIENT_V6, 1, 80, b""), Reason::NoVip),
        ("arp", arp, Reason::NotIp),
        ("gre to vip", gre, Reason::NotTcpUdp),
        ("ipv6 hop-by-hop header running past the packet", hop_by_hop, Reason::MalformedL3),
        ("ipv4 first fragment to a vip address (fragments = drop)", first_fragment, Reason::FragmentDropped),
        ("ipv4 later fragment to a vip address (fragments = drop)", later_fragment, Reason::FragmentDropped),
        ("ipv4 ihl 4", bad_ihl, Reason::MalformedL3),
        ("ipv4 total length beyond frame", long_tot_len, Reason::MalformedL3),
        ("tcp header cut short inside a consistent ip packet", short_tcp, Reason::MalformedL4),
    ];
    for (name, input, reason) in cases {
        let before = h.reason_packets(reason);
        let (action, out) = h.balance(&input);
        assert_eq!(action, reason.action() as u32, "{name}: action");
        assert_eq!(out, input, "{name}: packet unchanged");
        assert_eq!(h.reason_packets(reason), before + 1, "{name}: counted as {}", reason.label());
    }
}

/// The VIP address filter (`lb_common::vip_filter`): the kernel's holds
/// exactly the bits of the VIP addresses, and an address that shares a VIP's
/// bit (a hash collision) is still only passed, untouched, after the VIP
/// table says it is no VIP; a VIP on the same bit is still forwarded.
#[test]
fn vip_filter_holds_the_vip_bits_and_collisions_still_pass() {
    use lb_common::vip_filter::{bit, word_and_mask, FilterEntry};
    let Some(mut h) = Harness::new() else { return };
    let filter: aya::maps::Array<_, FilterEntry> = aya::maps::Array::try_from(h.ebpf.map(lb_common::maps::VIP_FILTER).unwrap()).unwrap();
    let kernel: Vec<FilterEntry> = (0..filter.len()).map(|i| filter.get(&i, 0).unwrap()).collect();
    assert_eq!(kernel, lb_agent::dataplane::vip_filter::words(&h.plan), "the kernel's filter is the plan's");

    let vip: Ipv6Addr = "2001:db8:f::10".parse().unwrap();
    let vip_bit = bit(&lb_common::v6_words(vip), lb_common::FAMILY_V6);
    // An address in 2001:db8:1::/48 with the same bit (about 1 in 65,536).
    let collision = (0u64..1 << 24)
        .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, (i >> 16) as u16, (i >> 8) as u16 & 0xff, i as u16 & 0xff))
        .find(|a| bit(&lb_common::v6_words(*a), lb_common::FAMILY_V6) == vip_bit)
        .expect("a colliding address within 2^24 candidates");
    let (word, mask) = word_and_mask(vip_bit);
    assert_ne!(kernel[word as usize].bits & mask, 0, "the VIP's bit is set");

    let input = tcp6(collision, 40000, 80, b"x");
    let before = h.reason_packets(Reason::NoVip);
    let (action, out) = h.balance(&input);
    assert_eq!(action, Action::Pass as u32, "{collision} shares the VIP's filter bit but is no VIP");
    assert_eq!(out, input, "passed untouched");
    assert_eq!(h.reason_packets(Reason::NoVip), before + 1);
    let (action, _) = h.balance(&tcp6(vip, 40000, 80, b"x"));
    assert_eq!(action, Action::Tx as u32, "the VIP itself is forwarded");
}

/// An IPv4 VIP address is listed in its filter word, so a packet to a port
/// no VIP configures is told from a collision by the listing; a word with
/// more IPv4 VIP addresses than it lists leaves that to the VIP table, with
/// the same outcomes.
#[test]
fn vip_filter_lists_ipv4_vip_addresses_and_collisions_still_pass() {
    use lb_common::vip_filter::{bit, word_and_mask, FilterEntry, Listed, LISTED_V4};
    let Some(mut h) = Harness::new() else { return };
    let words = |a: Ipv4Addr| lb_common::v4_words(a);
    let vip_bit = bit(&words(VIP4), lb_common::FAMILY_V4);
    // Any IPv4 address with the VIP's bit (a fixture packet never leaves the kernel).
    let collision = (0u32..u32::MAX)
        .map(|i| Ipv4Addr::from(i.wrapping_mul(0x9E37_79B9)))
        .find(|a| *a != VIP4 && bit(&words(*a), lb_common::FAMILY_V4) == vip_bit)
        .expect("a colliding IPv4 address");
    let (word, _) = word_and_mask(vip_bit);
    let filter: aya::maps::Array<_, FilterEntry> = aya::maps::Array::try_from(h.ebpf.map(lb_common::maps::VIP_FILTER).unwrap()).unwrap();
    let listed = filter.get(&word, 0).unwrap();
    assert_eq!(listed.lists_v4(words(VIP4)[0]), Listed::Yes, "{VIP4} is listed in its word");
    assert_eq!(listed.lists_v4(words(collision)[0]), Listed::No, "{collision} is not");

    let check = |h: &mut Harness, how: &str| {
        for (what, input, reason) in [
            (format!("{collision}, a VIP port"), tcp4(collision, 40000, 80), Reason::NoVip),
            (format!("{collision}, another port"), tcp4(collision, 40000, 443), Reason::NoVip),
            (format!("{VIP4}, another port"), tcp4(VIP4, 40000, 443), Reason::UnknownPortPassed),
        ] {
            let before = h.reason_packets(reason);
            let (action, out) = h.balance(&input);
            assert_eq!((action, &out), (Action::Pass as u32, &input), "{what} ({how}): passed untouched");
            assert_eq!(h.reason_packets(reason), before + 1, "{what} ({how}): counted {}", reason.label());
        }
        let (action, _) = h.balance(&tcp4(VIP4, 40000, 80));
        assert_eq!(action, Action::Tx as u32, "the VIP itself is forwarded ({how})");
    };
    check(&mut h, "listed");
    // A word with unlisted addresses: the VIP table's address entries decide.
    let mut full = listed;
    full.v4_count = LISTED_V4 as u32 + 1;
    let mut filter: aya::maps::Array<_, FilterEntry> = aya::maps::Array::try_from(h.ebpf.map_mut(lb_common::maps::VIP_FILTER).unwrap()).unwrap();
    filter.set(word, full, 0).unwrap();
    check(&mut h, "the word overflows");
    // The listing, not the table, answers for a word that lists all: one
    // that (wrongly) lists the collision makes it a VIP address.
    let mut lying = listed;
    lying.add_v4(words(collision)[0]);
    let mut filter: aya::maps::Array<_, FilterEntry> = aya::maps::Array::try_from(h.ebpf.map_mut(lb_common::maps::VIP_FILTER).unwrap()).unwrap();
    filter.set(word, lying, 0).unwrap();
    let before = h.reason_packets(Reason::UnknownPortPassed);
    assert_eq!(h.balance(&tcp4(collision, 40000, 443)).0, Action::Pass as u32);
    assert_eq!(h.reason_packets(Reason::UnknownPortPassed), before + 1, "the kernel read the listing");
}

/// Every truncation of every VIP packet gets a defined action, is never
/// modified unless forwarded, and is counted exactly once.
#[test]
fn truncated_packets_get_a_counted_action() {
    let Some(mut h) = Harness::new() else { return };
    let mut runs = 0u64;
    for c in tx_cases() {
        // BPF_PROG_TEST_RUN rejects XDP input shorter than an Ethernet header.
        for len in L2..c.input.len() {
            let input = &c.input[..len];
            let (action, out) = h.balance(input);
            runs += 1;
            assert!(
                action == Action::Pass as u32 || action == Action::Drop as u32,
                "{} cut at {len}: action {action} (only PASS or DROP allowed)",
                c.name
            );
            assert_eq!(out, input, "{} cut at {len}: unchanged", c.name);
        }
    }
    let counters = dataplane::read_counters(&h.ebpf).unwrap();
    let total: u64 = counters.reasons.iter().map(|c| c.packets).sum();
    assert_eq!(total, runs, "every run counted once");
    assert_eq!(counters.reason(Reason::Forwarded).packets, 0);
    assert!(counters.reason(Reason::MalformedL3).packets > 0);
}

#[test]
fn decap_passes_other_traffic_untouched() {
    let Some(mut h) = Harness::new() else { return };
    let plain = tcp4(Ipv4Addr::new(192, 0, 2, 10), 1, 80);
    let (action, out) = h.decap(&plain);
    assert_eq!(action, Action::Pass as u32);
    assert_eq!(out, plain);
    // A tunnel header whose inner version does not match is not stripped.
    let mut lying = plain.clone();
    lying[v4::PROTO] = 4; // claims IPIP, but carries TCP
    let (action, out) = h.decap(&lying);
    assert_eq!(action, Action::Pass as u32);
    assert_eq!(out, lying);
    let counters = dataplane::read_counters(&h.ebpf).unwrap();
    assert_eq!(counters.decap_reason(DecapReason::NotTunnel).packets, 1);
    assert_eq!(counters.decap_reason(DecapReason::Malformed).packets, 1);
    assert_eq!(h.decap_runs, 2);
    assert_eq!(h.balancer_runs, 0);
}

// ---------------------------------------------------------------- hardening: ICMP, MTU, fragments, extension headers

const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const FRAG_VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10);
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
/// Bytes of the offending packet a too-big answer quotes (`reply.rs`).
const QUOTE_LEN: usize = 128;

/// RFC 1071 sum of `data` (big-endian words), not yet complemented.
fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

fn checksum(data: &[u8]) -> u16 {
    !(ones_sum(data, 0) as u16)
}

/// ICMPv6 checksum of `message` between `src` and `dst` (RFC 8200 8.1).
fn icmpv6_checksum(src: &[u8], dst: &[u8], message: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(src);
    pseudo.extend_from_slice(dst);
    pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, ICMPV6]);
    !(ones_sum(message, ones_sum(&pseudo, 0)) as u16)
}

/// An ICMP message: type, code, checksum (filled in), 4 more header bytes, body.
fn icmp_message(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn icmpv6_message(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = icmpv6_checksum(&src.octets(), &dst.octets(), &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn ip4_raw(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    eth().ipv4(src.octets(), dst.octets(), ttl).write_to_vec(&mut v, IpNumber(proto), payload).unwrap();
    v
}

fn ip6_raw(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    eth().ipv6(src.octets(), dst.octets(), hop_limit).write_to_vec(&mut v, IpNumber(proto), payload).unwrap();
    v
}

/// The IP packet (no L2) a backend sends back to the client: VIP:vport -> client:cport.
fn backend_reply4(vip: Ipv4Addr, vport: u16, cport: u16, len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(vip.octets(), CLIENT_V4.octets(), 64).tcp(vport, cport, 9, 1000).write(&mut v, &vec![0u8; len]).unwrap();
    v
}

fn backend_reply6(vip: Ipv6Addr, vport: u16, cport: u16, len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv6(vip.octets(), CLIENT_V6.octets(), 64).tcp(vport, cport, 9, 1000).write(&mut v, &vec![0u8; len]).unwrap();
    v
}

/// A router's ICMP error to the VIP about a backend's reply to the client.
fn icmp4_error(router: Ipv4Addr, vip: Ipv4Addr, ty: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    ip4_raw(router, vip, 64, ICMP, &icmp_message(ty, code, rest, quoted))
}

fn icmp6_error(router: Ipv6Addr, vip: Ipv6Addr, ty: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    ip6_raw(router, vip, 64, ICMPV6, &icmpv6_message(router, vip, ty, 0, rest, quoted))
}

/// Marks an IPv4 frame as a fragment (`flags_offset` in host order) and fixes its checksum.
fn fragment4(mut p: Vec<u8>, flags_offset: u16) -> Vec<u8> {
    p[v4::FRAGS..v4::FRAGS + 2].copy_from_slice(&flags_offset.to_be_bytes());
    p[L2 + 10..L2 + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&p[L2..L2 + IPV4_HEADER]);
    p[L2 + 10..L2 + 12].copy_from_slice(&c.to_be_bytes());
    p
}

/// IPv6 to `dst` with the given extension headers (8 bytes each, PadN
/// options) in front of a TCP header from `sport` to `dport`.
fn ip6_with_ext(dst: Ipv6Addr, exts: &[u8], sport: u16, dport: u16) -> Vec<u8> {
    let mut tcp = Vec::new();
    etherparse::TcpHeader::new(sport, dport, 1, 1024).write(&mut tcp).unwrap();
    let mut payload = Vec::new();
    for (i, _) in exts.iter().enumerate() {
        let next = exts.get(i + 1).copied().unwrap_or(PROTO_TCP);
        if exts[i] == 44 {
            // Fragment header: next, reserved, offset 0 + M flag, identification.
            payload.extend_from_slice(&[next, 0, 0, 1, 0, 0, 0, 7]);
        } else {
            payload.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
    }
    payload.extend_from_slice(&tcp);
    // etherparse insists on building extension headers itself: write "no next
    // header" and patch the first next-header field.
    let mut p = ip6_raw(CLIENT_V6, dst, 64, NO_NEXT_HEADER, &payload);
    p[L2 + 6] = exts.first().copied().unwrap_or(PROTO_TCP);
    p
}

const NO_NEXT_HEADER: u8 = 59;

impl Harness {
    /// Runs the balancer and checks the action and the reason counted.
    fn expect(&mut self, name: &str, input: &[u8], reason: Reason) -> Vec<u8> {
        let before = self.reason_packets(reason);
        let (action, out) = self.balance(input);
        assert_eq!(action, reason.action() as u32, "{name}: action");
        assert_eq!(self.reason_packets(reason), before + 1, "{name}: counted as {}", reason.label());
        if reason.action() != Action::Tx {
            assert_eq!(out, input, "{name}: not forwarded, so unchanged");
        }
        out
    }

    /// The backend of a fragment: the VIP's ring at the hash of the addresses and protocol.
    fn predicted_fragment_backend(&self, vip: Ipv4Addr, proto: u8) -> IpAddr {
        let planned = plan::find_vip(&self.plan, vip.into(), 53, proto).unwrap();
        let (src, family) = lb_common::addr_words(CLIENT_V4.into());
        let (dst, _) = lb_common::addr_words(vip.into());
        let h = lb_common::hash::flow_hash(self.plan.hash_seed, family, &src, &dst, 0, 0, proto);
        let id = planned.ring()[(h % self.plan.ring_size) as usize];
        self.plan.backend(id).unwrap().address
    }
}

/// Checks an echo reply made from `request` in place.
fn assert_echo_reply(name: &str, request: &[u8], reply: &[u8], v6: bool) {
    assert_eq!(reply.len(), request.len(), "{name}: same length");
    assert_eq!(&reply[..6], &request[6..12], "{name}: back to the sender's MAC");
    assert_eq!(&reply[6..12], &request[..6], "{name}: from our MAC");
    if v6 {
        assert_eq!(&reply[L2 + 8..L2 + 24], &request[L2 + 24..L2 + 40], "{name}: source = the VIP");
        assert_eq!(&reply[L2 + 24..L2 + 40], &request[L2 + 8..L2 + 24], "{name}: destination = the client");
        assert_eq!(reply[L2 + 7], 64, "{name}: fresh hop limit");
        let m = &reply[L2 + IPV6_HEADER..];
        assert_eq!(m[0], 129, "{name}: echo reply type");
        assert_eq!(icmpv6_checksum(&reply[L2 + 8..L2 + 24], &reply[L2 + 24..L2 + 40], m), 0, "{name}: ICMPv6 checksum");
        assert_eq!(&m[4..], &request[L2 + IPV6_HEADER + 4..], "{name}: id, sequence and data echoed");
    } else {
        assert_eq!(&reply[L2 + 12..L2 + 16], &request[L2 + 16..L2 + 20], "{name}: source = the VIP");
        assert_eq!(&reply[L2 + 16..L2 + 20], &request[L2 + 12..L2 + 16], "{name}: destination = the client");
        assert_eq!(reply[L2 + 8], 64, "{name}: fresh TTL");
        assert_eq!(checksum(&reply[L2..L2 + IPV4_HEADER]), 0, "{name}: IPv4 checksum");
        let m = &reply[L2 + IPV4_HEADER..];
        assert_eq!(m[0], 0, "{name}: echo reply type");
        assert_eq!(checksum(m), 0, "{name}: ICMP checksum");
        assert_eq!(&m[4..], &request[L2 + IPV4_HEADER + 4..], "{name}: id, sequence and data echoed");
    }
}

#[test]
fn icmp_echo_to_a_vip_is_answered_and_other_echo_passes() {
    let Some(mut h) = Harness::new() else { return };
    let echo4 = ip4_raw(CLIENT_V4, VIP4, 1, ICMP, &icmp_message(8, 0, [0x12, 0x34, 0, 1], b"ping data"));
    let out = h.expect("icmp echo to a vip (ttl 1)", &echo4, Reason::IcmpEchoReply);
    assert_echo_reply("icmp echo to a vip", &echo4, &out, false);

    let echo6 = ip6_raw(CLIENT_V6, VIP6, 64, ICMPV6, &icmpv6_message(CLIENT_V6, VIP6, 128, 0, [0, 7, 0, 1], b"ping6"));
    let out = h.expect("icmpv6 echo to a vip", &echo6, Reason::IcmpEchoReply);
    assert_echo_reply("icmpv6 echo to a vip", &echo6, &out, true);

    let vlan_echo = {
        let mut v = Vec::new();
        eth()
            .single_vlan(VlanId::try_new(42).unwrap())
            .ipv4(CLIENT_V4.octets(), VIP4.octets(), 64)
            .write_to_vec(&mut v, IpNumber(ICMP), &icmp_message(8, 0, [0, 1, 0, 1], b"x"))
            .unwrap();
        v
    };
    let out = h.expect("icmp echo to a vip in vlan 42", &vlan_echo, Reason::IcmpEchoReply);
    assert_eq!(&out[12..16], &vlan_echo[12..16], "vlan tag kept");

    let to_host = ip4_raw(CLIENT_V4, TUNNEL_V4, 64, ICMP, &icmp_message(8, 0, [0, 1, 0, 1], b"x"));
    h.expect("icmp echo to a host address", &to_host, Reason::NoVip);
    let ttl0 = ip4_raw(CLIENT_V4, VIP4, 0, ICMP, &icmp_message(8, 0, [0, 1, 0, 1], b"x"));
    h.expect("icmp echo to a vip with ttl 0", &ttl0, Reason::TtlZero);
    let unreach_other = ip4_raw(CLIENT_V4, VIP4, 64, ICMP, &icmp_message(13, 0, [0; 4], &[0; 12]));
    h.expect("icmp timestamp to a vip", &unreach_other, Reason::IcmpToVip);
    let short = ip4_raw(CLIENT_V4, VIP4, 64, ICMP, &[8, 0, 0]);
    h.expect("icmp header cut short", &short, Reason::IcmpToVip);

    let Some(mut pass) = Harness::with_policy(&[("icmp_echo", "pass")]) else { return };
    pass.expect("icmp echo to a vip, icmp_echo = pass", &echo4, Reason::IcmpToVip);
    pass.expect("icmpv6 echo to a vip, icmp_echo = pass", &echo6, Reason::IcmpToVip);
}

#[test]
fn icmp_errors_about_vip_flows_reach_the_flows_backend() {
    let Some(mut h) = Harness::new() else { return };
    let router4 = Ipv4Addr::new(198, 51, 100, 1);
    let router6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let mtu = 1400u32.to_be_bytes();
    let cases: Vec<(&str, Vec<u8>, IpAddr, u16)> = vec![
        (
            "ipv4 fragmentation needed",
            icmp4_error(router4, VIP4, 3, 4, [0, 0, mtu[2], mtu[3]], &backend_reply4(VIP4, 80, 41000, 100)[..28]),
            VIP4.into(),
            41000,
        ),
        ("ipv4 time exceeded", icmp4_error(router4, VIP4, 11, 0, [0; 4], &backend_reply4(VIP4, 80, 41001, 10)), VIP4.into(), 41001),
        ("ipv4 port unreachable", icmp4_error(router4, VIP4, 3, 3, [0; 4], &backend_reply4(VIP4, 80, 41002, 10)[..28]), VIP4.into(), 41002),
        ("ipv6 packet too big", icmp6_error(router6, VIP6, 2, mtu, &backend_reply6(VIP6, 80, 41003, 100)), VIP6.into(), 41003),
        ("ipv6 time exceeded", icmp6_error(router6, VIP6, 3, [0; 4], &backend_reply6(VIP6, 80, 41004, 0)[..48]), VIP6.into(), 41004),
        ("ipv6 destination unreachable", icmp6_error(router6, VIP6, 1, [0; 4], &backend_reply6(VIP6, 80, 41005, 0)), VIP6.into(), 41005),
    ];
    for (name, input, vip, cport) in cases {
        let out = h.expect(name, &input, Reason::IcmpErrorForwarded);
        let client = if vip.is_ipv4() { IpAddr::V4(CLIENT_V4) } else { IpAddr::V6(CLIENT_V6) };
        // Exactly the backend of the client's flow client:cport -> VIP:80.
        let (backend, backend_mac) = h.predicted(vip, PROTO_TCP, client, cport, 80);
        assert_encapsulated(name, &out, &Expected { input: &input, input_l2: L2, backend, backend_mac });
        let (action, restored) = h.decap(&out);
        assert_eq!(action, Action::Pass as u32, "{name}: decap");
        assert_eq!(&restored[L2..], &input[L2..], "{name}: decap gives back the ICMP packet");
    }

    // Not ours: errors about flows that are not VIP flows, or not sent from the VIP.
    let other_port = icmp4_error(router4, VIP4, 3, 4, [0; 4], &backend_reply4(VIP4, 8080, 41000, 10)[..28]);
    h.expect("icmp error about a non-vip port of a vip address", &other_port, Reason::IcmpToVip);
    let to_host = icmp4_error(router4, TUNNEL_V4, 3, 4, [0; 4], &backend_reply4(TUNNEL_V4, 80, 41000, 10)[..28]);
    h.expect("icmp error about the host's own flow", &to_host, Reason::NoVip);
    let not_from_vip = icmp4_error(router4, VIP4, 3, 4, [0; 4], &backend_reply4(Ipv4Addr::new(198, 51, 100, 99), 80, 41000, 10)[..28]);
    h.expect("icmp error to a vip quoting another source", &not_from_vip, Reason::IcmpToVip);
    let short_quote = icmp4_error(router4, VIP4, 3, 4, [0; 4], &backend_reply4(VIP4, 80, 41000, 10)[..22]);
    h.expect("icmp error quoting too little to find ports", &short_quote, Reason::IcmpToVip);
}

#[test]
fn packets_too_big_for_the_tunnel_get_an_icmp_answer_or_a_drop() {
    let Some(mut h) = Harness::new() else { return };
    // IPv4: 1480 + 20 fits the 1500 MTU exactly; one byte more does not.
    let fits = bytes!(eth().ipv4(CLIENT_V4.octets(), VIP4.octets(), 64).tcp(42000, 80, 1, 1000), &vec![7u8; 1440]);
    h.expect("ipv4 encapsulated to exactly the mtu", &fits, Reason::Forwarded);
    let big = bytes!(eth().ipv4(CLIENT_V4.octets(), VIP4.octets(), 64).tcp(42000, 80, 1, 1000), &vec![7u8; 1441]);
    let out = h.expect("ipv4 one byte too big once encapsulated", &big, Reason::TooBigIcmp);
    assert_eq!(out.len(), L2 + IPV4_HEADER + 8 + QUOTE_LEN, "answer length");
    assert_eq!(&out[..6], &CLIENT_MAC, "to the client's MAC");
    assert_eq!(&out[6..12], &LB_MAC, "from ours");
    let (ip, rest) = Ipv4Header::from_slice(&out[L2..]).unwrap();
    assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "IPv4 checksum");
    assert_eq!((ip.source, ip.destination), (VIP4.octets(), CLIENT_V4.octets()), "from the VIP to the client");
    assert_eq!(ip.protocol, IpNumber(ICMP));
    assert_eq!(ip.total_len as usize, IPV4_HEADER + 8 + QUOTE_LEN);
    assert_eq!(&rest[..2], &[3, 4], "fragmentation needed");
    assert_eq!(u16::from_be_bytes([rest[6], rest[7]]), 1500 - 20, "next-hop MTU = MTU - IPIP header");
    assert_eq!(checksum(rest), 0, "ICMP checksum");
    assert_eq!(&rest[8..], &big[L2..L2 + QUOTE_LEN], "quotes the start of the client's packet");

    // IPv6 VIP with IPv6 backends: 40 bytes of tunnel.
    let big6 = tcp6(VIP6, 42001, 80, &vec![7u8; 1500 - 40 - 20 - 40 + 1]);
    let out = h.expect("ipv6 too big once encapsulated", &big6, Reason::TooBigIcmp);
    assert_eq!(out.len(), L2 + IPV6_HEADER + 8 + QUOTE_LEN);
    let (ip, rest) = Ipv6Header::from_slice(&out[L2..]).unwrap();
    assert_eq!((ip.source, ip.destination), (VIP6.octets(), CLIENT_V6.octets()));
    assert_eq!(ip.next_header, IpNumber(ICMPV6));
    assert_eq!(ip.payload_length as usize, 8 + QUOTE_LEN);
    assert_eq!(&rest[..2], &[2, 0], "packet too big");
    assert_eq!(u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]), 1500 - 40, "MTU = MTU - IP6IP6 header");
    assert_eq!(icmpv6_checksum(&ip.source, &ip.destination, rest), 0, "ICMPv6 checksum");
    assert_eq!(&rest[8..], &big6[L2..L2 + QUOTE_LEN]);
    let fits6 = tcp6(VIP6, 42001, 80, &vec![7u8; 1500 - 40 - 20 - 40]);
    h.expect("ipv6 encapsulated to exactly the mtu", &fits6, Reason::Forwarded);

    // A too-big ICMP error is never answered with ICMP.
    let big_error = icmp4_error(Ipv4Addr::new(198, 51, 100, 1), VIP4, 11, 0, [0; 4], &backend_reply4(VIP4, 80, 41000, 1460));
    h.expect("too-big icmp error", &big_error, Reason::TooBigDropped);

    let Some(mut drop) = Harness::with_policy(&[("too_big", "drop")]) else { return };
    drop.expect("too big, too_big = drop", &big, Reason::TooBigDropped);
    drop.expect("fits, too_big = drop", &fits, Reason::Forwarded);
}

#[test]
fn fragments_follow_the_vip_policy_and_other_fragments_pass() {
    let Some(mut h) = Harness::new() else { return };
    let first = fragment4(udp4(FRAG_VIP4, 5353, 53, &[1u8; 64]), 0x2000);
    let later = fragment4(ip4_raw(CLIENT_V4, FRAG_VIP4, 64, PROTO_UDP, &[2u8; 48]), 0x0009);
    let predicted = h.predicted_fragment_backend(FRAG_VIP4, PROTO_UDP);
    let mut backends = Vec::new();
    for (name, input) in [("first fragment (fragments = forward)", &first), ("later fragment (fragments = forward)", &later)] {
        let out = h.expect(name, input, Reason::FragmentForwarded);
        let mac = h.plan.backends.iter().find(|b| b.address == predicted).unwrap().mac.unwrap();
        assert_encapsulated(name, &out, &Expected { input, input_l2: L2, backend: predicted, backend_mac: mac });
        backends.push(out[30..34].to_vec());
    }
    assert_eq!(backends[0], backends[1], "both fragments of the datagram reach one backend");
    let tcp_frag = fragment4(tcp4(FRAG_VIP4, 1, 53), 0x2000);
    h.expect("tcp fragment to an address forwarding udp fragments", &tcp_frag, Reason::FragmentDropped);
    h.expect("fragment to a vip with fragments = drop", &fragment4(udp4(VIP4, 5353, 53, &[0; 16]), 0x2000), Reason::FragmentDropped);
    h.expect("fragment to a host address", &fragment4(udp4(TUNNEL_V4, 5353, 53, &[0; 16]), 0x2000), Reason::NoVip);
    h.expect("later fragment to a host address", &fragment4(udp4(TUNNEL_V4, 5353, 53, &[0; 16]), 0x0020), Reason::NoVip);
    h.expect("ipv6 fragment to a vip", &ip6_with_ext(VIP6, &[44], 1, 80), Reason::FragmentDropped);
    h.expect("ipv6 fragment to a host", &ip6_with_ext(TUNNEL_V6, &[44], 1, 80), Reason::NoVip);
}

#[test]
fn ipv6_extension_headers_are_skipped_up_to_the_bound() {
    let Some(mut h) = Harness::new() else { return };
    let max = lb_common::limits::MAX_IPV6_EXT_HEADERS;
    for exts in [vec![0u8], vec![0, 60], vec![0, 43, 60], vec![60; max]] {
        let name = format!("ipv6 tcp behind extension headers {exts:?}");
        let input = ip6_with_ext(VIP6, &exts, 43000, 80);
        let out = h.expect(&name, &input, Reason::Forwarded);
        let (backend, backend_mac) = h.predicted(VIP6.into(), PROTO_TCP, CLIENT_V6.into(), 43000, 80);
        assert_encapsulated(&name, &out, &Expected { input: &input, input_l2: L2, backend, backend_mac });
    }
    h.expect("one extension header beyond the bound", &ip6_with_ext(VIP6, &vec![60; max + 1], 43000, 80), Reason::TooManyExtHeaders);
    h.expect("extension headers to a host", &ip6_with_ext(TUNNEL_V6, &[0, 60], 43000, 80), Reason::NoVip);
}

#[test]
fn unknown_ports_ttl_multicast_and_other_protocols_get_defined_actions() {
    let Some(mut h) = Harness::new() else { return };
    h.expect("vip address, unknown port (pass)", &tcp4(VIP4, 1, 443), Reason::UnknownPortPassed);
    let ttl0 = {
        let mut p = bytes!(eth().ipv4(CLIENT_V4.octets(), VIP4.octets(), 0).tcp(44000, 80, 1, 1000), &[]);
        p[L2 + 10..L2 + 12].copy_from_slice(&[0, 0]);
        p
    };
    h.expect("ttl 0 to a vip", &ttl0, Reason::TtlZero);
    let ttl1 = bytes!(eth().ipv4(CLIENT_V4.octets(), VIP4.octets(), 1).tcp(44000, 80, 1, 1000), &[]);
    h.expect("ttl 1 to a vip: we are its destination", &ttl1, Reason::Forwarded);
    h.expect("hop limit 0 to a vip", &bytes!(eth().ipv6(CLIENT_V6.octets(), VIP6.octets(), 0).tcp(1, 80, 1, 1), &[]), Reason::TtlZero);
    h.expect("ttl 0 to a host", &bytes!(eth().ipv4(CLIENT_V4.octets(), TUNNEL_V4.octets(), 0).tcp(1, 22, 1, 1), &[]), Reason::NoVip);
    let mut broadcast = tcp4(VIP4, 44001, 80);
    broadcast[..6].copy_from_slice(&[0xff; 6]);
    h.expect("broadcast frame to a vip", &broadcast, Reason::L2Multicast);
    let mut multicast = tcp6(VIP6, 44002, 80, b"");
    multicast[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    h.expect("multicast frame to a vip", &multicast, Reason::L2Multicast);
    let mut lldp = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
    lldp.extend_from_slice(&CLIENT_MAC);
    lldp.extend_from_slice(&[0x88, 0xcc]);
    lldp.extend_from_slice(&[0u8; 46]);
    h.expect("lldp", &lldp, Reason::NotIp);
    h.expect("esp to a vip", &ip4_raw(CLIENT_V4, VIP4, 64, 50, &[0; 32]), Reason::NotTcpUdp);
    h.expect("ipv6 udp to a tcp vip", &udp6(VIP6, 1, 80, b"x"), Reason::UnknownPortPassed);

    let Some(mut strict) = Harness::with_policy(&[("unknown_port", "drop")]) else { return };
    strict.expect("vip address, unknown port (drop)", &tcp4(VIP4, 1, 443), Reason::UnknownPortDropped);
    strict.expect("vip address, other protocol on a vip port (drop)", &udp4(VIP4, 1, 80, b"x"), Reason::UnknownPortDropped);
    strict.expect("host address, unknown port", &tcp4(TUNNEL_V4, 1, 443), Reason::NoVip);
    strict.expect("vip port still forwarded", &tcp4(VIP4, 1, 80), Reason::Forwarded);
}

#[test]
fn decap_leaves_what_the_balancer_never_sends() {
    let Some(mut h) = Harness::new() else { return };
    let (_, tunnelled) = h.balance(&tcp4(VIP4, 45000, 80));
    // Outer IPv4 header with options (IHL 6): not stripped.
    let mut options = tunnelled.clone();
    options[L2] = 0x46;
    let (action, out) = h.decap(&options);
    assert_eq!((action, &out), (Action::Pass as u32, &options));
    // Outer header marked as a fragment: not stripped.
    let mut fragment = tunnelled.clone();
    fragment[L2 + 6] = 0x20;
    let (action, out) = h.decap(&fragment);
    assert_eq!((action, &out), (Action::Pass as u32, &fragment));
    let truncated = &tunnelled[..L2 + IPV4_HEADER];
    let (action, out) = h.decap(truncated);
    assert_eq!((action, out.as_slice()), (Action::Pass as u32, truncated));
    let counters = dataplane::read_counters(&h.ebpf).unwrap();
    assert_eq!(counters.decap_reason(DecapReason::Unsupported).packets, 2);
    assert_eq!(counters.decap_reason(DecapReason::Malformed).packets, 1);
}
