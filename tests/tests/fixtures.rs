//! Packet fixtures: the real BPF object, with maps filled by the agent's own
//! plan-writing code, run on crafted packets through BPF_PROG_TEST_RUN.
//! Each case is data: a name, the input packet, and what must come out.
//!
//! Needs root (loading BPF programs); skips with a message otherwise.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use etherparse::{Ethernet2Header, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder, VlanId};
use lb_agent::{
    config::{self, MacAddr},
    dataplane::{self, LoadOptions, ResolvedBackend},
    plan::{self, Plan},
};
use lb_common::{programs, Action, DecapReason, Reason, PROTO_TCP, PROTO_UDP};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const TUNNEL_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const TUNNEL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x2);
/// Room the kernel must be able to prepend (largest outer header).
const OUT_SLACK: usize = 64;

const CONFIG: &str = r#"
[lb]
interface = "fixture0"
tunnel_source_v4 = "198.51.100.2"
tunnel_source_v6 = "2001:db8::2"
ring_size = 1021
hash_seed = 0x5eed
max_vips = 16
max_backends = 64
bpffs_dir = "/sys/fs/bpf/lb-fixtures-unused"

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "198.51.100.11"
  mac = "02:00:00:00:00:11"
  [[vip.backend]]
  address = "198.51.100.12"
  mac = "02:00:00:00:00:12"
  [[vip.backend]]
  address = "198.51.100.13"
  mac = "02:00:00:00:00:13"

[[vip]]
name = "dns"
address = "192.0.2.10"
port = 53
protocol = "udp"
  [[vip.backend]]
  address = "198.51.100.11"
  mac = "02:00:00:00:00:11"
  [[vip.backend]]
  address = "198.51.100.12"
  mac = "02:00:00:00:00:12"

[[vip]]
name = "any-port"
address = "192.0.2.20"
port = 0
protocol = "tcp"
  [[vip.backend]]
  address = "198.51.100.13"
  mac = "02:00:00:00:00:13"

[[vip]]
name = "sticky"
address = "192.0.2.40"
port = 80
protocol = "tcp"
hash = "source"
  [[vip.backend]]
  address = "198.51.100.11"
  mac = "02:00:00:00:00:11"
  [[vip.backend]]
  address = "198.51.100.12"
  mac = "02:00:00:00:00:12"
  [[vip.backend]]
  address = "198.51.100.13"
  mac = "02:00:00:00:00:13"

[[vip]]
name = "web6"
address = "2001:db8:f::10"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "2001:db8::11"
  mac = "02:00:00:00:01:11"
  [[vip.backend]]
  address = "2001:db8::12"
  mac = "02:00:00:00:01:12"

[[vip]]
name = "v4-to-v6"
address = "192.0.2.30"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "2001:db8::21"
  mac = "02:00:00:00:01:21"

[[vip]]
name = "v6-to-v4"
address = "2001:db8:f::20"
port = 53
protocol = "udp"
  [[vip.backend]]
  address = "198.51.100.21"
  mac = "02:00:00:00:00:21"
"#;

struct Harness {
    ebpf: Ebpf,
    plan: Plan,
    balancer_runs: u64,
    decap_runs: u64,
}

impl Harness {
    fn new() -> Option<Self> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: packet fixtures load BPF programs and need root");
            return None;
        }
        let config = config::parse(CONFIG, "fixtures.toml").expect("fixture config is valid");
        let plan = plan::plan(&config);
        let opts = LoadOptions {
            ring_size: config.lb.ring_size,
            hash_seed: config.lb.hash_seed,
            max_vips: config.lb.max_vips,
            max_backends: config.lb.max_backends,
            tunnel_source_v4: config.lb.tunnel_source_v4,
            tunnel_source_v6: config.lb.tunnel_source_v6,
        };
        let mut ebpf = dataplane::load_balancer_object(&opts).expect("load BPF object");
        dataplane::load_program(&mut ebpf, programs::BALANCER).expect("verifier accepts the balancer");
        dataplane::load_program(&mut ebpf, programs::DECAP).expect("verifier accepts decap");
        let resolved = plan
            .backends
            .iter()
            .map(|b| (b.id, ResolvedBackend { address: b.address, next_hop_mac: b.mac.expect("fixture backends have MACs") }))
            .collect();
        dataplane::write_plan(&mut ebpf, &plan, &resolved).expect("write maps");
        Some(Self { ebpf, plan, balancer_runs: 0, decap_runs: 0 })
    }

    fn run(&mut self, program: &str, input: &[u8]) -> (u32, Vec<u8>) {
        let xdp: &Xdp = self.ebpf.program(program).unwrap().try_into().unwrap();
        let mut out = vec![0u8; input.len() + OUT_SLACK];
        let result = xdp
            .test_run(TestRunOptions { data_in: Some(input), data_out: Some(&mut out), ..TestRunOptions::new() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        if program == programs::BALANCER {
            self.balancer_runs += 1;
        } else {
            self.decap_runs += 1;
        }
        (result.return_value, out)
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
        ("vip address, port not configured", tcp4(vip4, 40000, 443), Reason::NoVip),
        ("vip address and port, other protocol", udp4(vip4, 40000, 80, b"x"), Reason::NoVip),
        ("ipv6 not a vip", tcp6(CLIENT_V6, 1, 80, b""), Reason::NoVip),
        ("arp", arp, Reason::NotIp),
        ("gre to vip", gre, Reason::NotTcpUdp),
        ("ipv6 extension header", hop_by_hop, Reason::NotTcpUdp),
        ("ipv4 first fragment", first_fragment, Reason::Fragment),
        ("ipv4 later fragment", later_fragment, Reason::Fragment),
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
