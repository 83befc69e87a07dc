//! Second chance and GUE through BPF_PROG_TEST_RUN: the balancer's GUE
//! header field by field and the previous owner it carries (VIPs configured
//! with `flow_state = "backend"` / `encap = "gue"`, maps written by the
//! agent's reconcile, previous owners by a reload that moves slots, as
//! `lb-agent reload` gives them), and the backend's `xdp_decap` judging GUE
//! packets in a backend namespace of a test topology, against real sockets
//! of that namespace (the socket and FIB lookups of a test run use the
//! netns of the device the run says the packet came in on).
//!
//! Needs root (loading BPF programs, namespaces); skips with a message otherwise.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use aya::Ebpf;
use etherparse::PacketBuilder;
use lb_agent::{
    dataplane::{live::LiveMaps, store::MapStore},
    plan::{self, Plan},
};
use lb_common::{
    flows::FlowEvent,
    programs,
    second_chance::{
        gue_source_port, second_chance_hlen, PreviousOwners, DEFAULT_GUE_PORT, MAX_PREVIOUS_OWNERS, SECOND_CHANCE_HLEN,
        SECOND_CHANCE_KIND, VIP_FLAG_SECOND_CHANCE,
    },
    Action, DecapReason, Reason, NO_BACKEND, PROTO_IPIP, PROTO_IPV6, PROTO_TCP, PROTO_UDP,
};
use lb_tests::{
    bpf::{self, Loaded, Overrides},
    capture::PacketSocket,
    configs::{self, TestVip},
    netns,
    topology::{self, Topology, TopologyOptions, VIP_V4, VIP_V6},
};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const TUNNEL_V4: Ipv4Addr = configs::TUNNEL_V4;
const TUNNEL_V6: Ipv6Addr = configs::TUNNEL_V6;
const MTU: u32 = 1500;
const MIXED_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 30);
const GUE_LB_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const IPIP_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);

/// The backend each second-chance VIP loses in `config(true)`: every slot
/// it owned moves, and it becomes those slots' previous owner.
const LEAVING_SC4: &str = "198.51.100.13";
const LEAVING_SC4_UDP: &str = "198.51.100.12";
const LEAVING_SC6: &str = "2001:db8::12";

/// The fixtures' config (static MACs 02:00:00:00:00:NN for IPv4 backends,
/// 02:00:00:00:01:NN for IPv6). `leaving` = true: without the `LEAVING_*`
/// backends, the config a reload applies to give slots previous owners.
fn config(leaving: bool) -> String {
    let keep = |all: &[&'static str], gone: &str| -> Vec<&'static str> {
        all.iter().copied().filter(|b| !leaving || *b != gone).collect()
    };
    let backend = |name: &str, endpoint: &str| TestVip::new(name, endpoint).set("flow_state", "backend");
    configs::unattached("fixture0")
        .ring_size(1021)
        .hash_seed(0x5eed)
        .max_vips(16)
        .max_backends(64)
        .vip(backend("sc4", "192.0.2.10:80").backends(keep(&configs::BACKENDS_V4, LEAVING_SC4)))
        .vip(
            backend("sc4-udp", "192.0.2.10:53/udp")
                .set("fragments", "forward")
                .backends(keep(&configs::BACKENDS_V4[..2], LEAVING_SC4_UDP)),
        )
        .vip(backend("sc6", "[2001:db8:f::10]:80").backends(keep(&configs::BACKENDS_V6, LEAVING_SC6)))
        // One backend of each family: 4in4 and 4in6 from one VIP (no reload changes it).
        .vip(backend("sc-mixed", &format!("{MIXED_VIP}:80")).backends(["2001:db8::21", "198.51.100.21"]))
        // GUE with the flow table on the LB.
        .vip(
            TestVip::new("gue-lb", &format!("{GUE_LB_VIP}:80"))
                .set("encap", "gue")
                .set("fragments", "forward")
                .backends(&configs::BACKENDS_V4[..2]),
        )
        // IPIP (the default encapsulation), forwarding fragments too.
        .vip(TestVip::new("ipip", &format!("{IPIP_VIP}:53/udp")).set("fragments", "forward").backends(configs::BACKENDS_V4))
        .static_macs()
        .to_toml()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: second-chance fixtures load BPF programs and need root");
    }
    root
}

fn load() -> Loaded {
    let overrides = Overrides { mtu: MTU, flow_table_size: Some(1024), ..Overrides::default() };
    bpf::load(&config(false), "second_chance.toml", &[programs::BALANCER, programs::DECAP], overrides).expect("load the fixture object")
}

/// Reloads `loaded` with the `LEAVING_*` backends gone (reconcile, as
/// `lb-agent reload`); returns the plan from before, whose rings the moved
/// slots' previous owners come from.
fn reload_without_leaving(loaded: &mut Loaded) -> Plan {
    let before = loaded.plan.clone();
    loaded.reload(&config(true), "second_chance_after.toml").expect("reload without the leaving backends");
    before
}

fn vip<'p>(plan: &'p Plan, name: &str) -> &'p plan::PlannedVip {
    plan.vip(name).expect("VIP in the config")
}

/// The first source port from `from` whose flow from `client` to `name`:`dport`
/// the backend at `address` owns in `plan`.
fn port_owned_by(plan: &Plan, name: &str, client: IpAddr, dport: u16, address: &str, from: u16) -> u16 {
    let id = plan.backend_id(address.parse().unwrap()).expect("backend in the plan");
    (from..from + 2000).find(|p| plan::lookup(plan, vip(plan, name), client, *p, dport) == id).expect("a flow of that backend within 2000 ports")
}

/// The first source port from `from` whose slot `after` left as `before` had it.
fn unmoved_port(before: &Plan, after: &Plan, name: &str, client: IpAddr, dport: u16, from: u16) -> u16 {
    let owner_addr = |plan: &Plan, p: u16| backend_addr(plan, plan::lookup(plan, vip(plan, name), client, p, dport));
    (from..from + 2000).find(|p| owner_addr(before, *p) == owner_addr(after, *p)).expect("an unmoved slot within 2000 ports")
}

/// No previous owner (a slot of `PREVIOUS`).
const NONE: PreviousOwners = [NO_BACKEND; MAX_PREVIOUS_OWNERS];

/// One previous owner.
fn only(id: u32) -> PreviousOwners {
    let mut owners = NONE;
    owners[0] = id;
    owners
}

/// What `PREVIOUS` holds for one flow's slot (read through the agent's store).
fn previous_of(loaded: &Loaded, name: &str, client: IpAddr, sport: u16, dport: u16) -> PreviousOwners {
    let v = vip(&loaded.plan, name);
    let slot = plan::slot(&loaded.plan, v, client, sport, dport).expect("a slot for the flow");
    LiveMaps::from_object(&loaded.ebpf).unwrap().previous_row(v.row, loaded.plan.ring_size).unwrap()[slot as usize]
}

/// Writes one flow's slot of `PREVIOUS` through the agent's store, for the
/// states the agent's rule never produces but the kernel must still judge
/// (each caller says which and why).
fn write_previous_of(loaded: &Loaded, name: &str, client: IpAddr, sport: u16, dport: u16, previous: PreviousOwners) {
    let v = vip(&loaded.plan, name);
    let slot = plan::slot(&loaded.plan, v, client, sport, dport).expect("a slot for the flow");
    let mut store = LiveMaps::from_object(&loaded.ebpf).unwrap();
    let mut row = store.previous_row(v.row, loaded.plan.ring_size).unwrap();
    row[slot as usize] = previous;
    store.write_previous_row(v.row, &row).unwrap();
}

/// The agent's drain timer, once the window has passed: every row of a
/// second-chance VIP forgets its previous owners. Returns the rows cleared.
fn drain(loaded: &Loaded) -> Vec<u32> {
    let mut store = LiveMaps::from_object(&loaded.ebpf).unwrap();
    let window = loaded.config.lb.previous_owner_window;
    let rows: BTreeSet<u32> = loaded.plan.vips.iter().filter(|v| v.meta.flags & VIP_FLAG_SECOND_CHANCE != 0).map(|v| v.row).collect();
    store.configure_previous(rows, window, loaded.plan.ring_size).unwrap();
    store.drain_previous(Instant::now() + window).unwrap()
}

/// (current owner id, flow hash) the agent predicts for a flow.
fn owner(plan: &Plan, vip: &str, src: IpAddr, sport: u16, dport: u16) -> (u32, u32) {
    let v = plan.vips.iter().find(|v| v.name == vip).expect("VIP in the config");
    let (src_words, family) = lb_common::addr_words(src);
    let hash = lb_common::hash::flow_hash(plan.hash_seed, family, &src_words, &v.key.addr, sport.to_be(), dport.to_be(), v.key.proto);
    (plan::lookup(plan, v, src, sport, dport), hash)
}

/// A member of `vip` other than the flow's current owner.
fn other_owner(plan: &Plan, vip: &str, src: IpAddr, sport: u16, dport: u16) -> u32 {
    let (current, _) = owner(plan, vip, src, sport, dport);
    let v = plan.vips.iter().find(|v| v.name == vip).expect("VIP in the config");
    v.members.iter().map(|m| m.0).find(|id| *id != current).expect("a VIP with two backends")
}

fn backend_addr(plan: &Plan, id: u32) -> IpAddr {
    plan.backends.iter().find(|b| b.id == id).expect("backend id in the plan").address
}

// ---------------------------------------------------------------- packets

macro_rules! bytes {
    ($builder:expr, $payload:expr) => {{
        let mut v = Vec::new();
        $builder.write_to_vec(&mut v, $payload).unwrap();
        v
    }};
}

fn tcp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families in one packet"),
    };
    let tcp = ip.tcp(sport, dport, 1000, 65535);
    if syn { bytes!(tcp.syn(), payload) } else { bytes!(tcp.ack(2000), payload) }
}

fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    bytes!(PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv4(src.octets(), dst.octets(), 64).udp(sport, dport), payload)
}

/// An IP packet (no L2) of TCP with the given flags, sequence and acknowledgement numbers.
fn tcp_packet(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families in one packet"),
    };
    let mut tcp = ip.tcp(sport, dport, seq, 65535);
    if flags & TCP_SYN != 0 {
        tcp = tcp.syn();
    }
    if flags & TCP_ACK != 0 {
        tcp = tcp.ack(ack);
    }
    bytes!(tcp, &[])
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The GUE header (and second-chance block) the balancer writes, with one
/// previous owner (`hops` as given).
fn gue_header(inner_v4: bool, previous: Option<(IpAddr, u8)>) -> Vec<u8> {
    match previous {
        Some((addr, hops)) => gue_chain(inner_v4, &[addr], hops),
        None => gue_chain(inner_v4, &[], 0),
    }
}

/// The GUE header naming `previous` (newest first) with `hops`; none: Hlen 0.
fn gue_chain(inner_v4: bool, previous: &[IpAddr], hops: u8) -> Vec<u8> {
    let proto = if inner_v4 { PROTO_IPIP } else { PROTO_IPV6 };
    let mut h = vec![second_chance_hlen(previous.len()), proto, 0, 0];
    if previous.is_empty() {
        return h;
    }
    h.extend(SECOND_CHANCE_KIND.to_be_bytes());
    h.extend([hops, previous.len() as u8]);
    for &addr in previous {
        for w in lb_common::addr_words(addr).0 {
            h.extend(w.to_ne_bytes());
        }
    }
    h
}

/// A GUE frame as a backend receives it: from the LB to `backend`, UDP to
/// the GUE port with checksum 0 (as the balancer sends it), `gue` (header
/// and private data), then `inner`.
fn gue_frame(backend: IpAddr, backend_mac: [u8; 6], gue: &[u8], inner: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(LB_MAC, backend_mac);
    let (ip, udp_at) = match backend {
        IpAddr::V4(b) => (eth.ipv4(TUNNEL_V4.octets(), b.octets(), 64), 14 + 20),
        IpAddr::V6(b) => (eth.ipv6(TUNNEL_V6.octets(), b.octets(), 64), 14 + 40),
    };
    let payload: Vec<u8> = gue.iter().chain(inner).copied().collect();
    let mut frame = bytes!(ip.udp(0xc123, DEFAULT_GUE_PORT), &payload);
    frame[udp_at + 6..udp_at + 8].copy_from_slice(&[0, 0]);
    frame
}

fn ones_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

// ---------------------------------------------------------------- balancer

/// A GUE frame taken apart, every field the balancer writes.
#[derive(Debug)]
struct Gue {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    outer_src: IpAddr,
    outer_dst: IpAddr,
    /// IPv4: (tos, id, flags+offset, ttl, checksum valid); IPv6: (traffic class, flow label, hop limit).
    v4: Option<(u8, u16, u16, u8, bool)>,
    v6: Option<(u8, u32, u8)>,
    /// Outer IPv4 total length or IPv6 payload length.
    outer_len: usize,
    sport: u16,
    dport: u16,
    udp_len: usize,
    udp_check: u16,
    hlen: u8,
    proto: u8,
    flags: u16,
    /// (kind, hops, count, previous owners newest first)
    block: Option<(u16, u8, u8, Vec<IpAddr>)>,
    inner: Vec<u8>,
}

fn parse_gue(out: &[u8]) -> Gue {
    let ether_type = u16::from_be_bytes([out[12], out[13]]);
    let (mut at, outer_src, outer_dst, v4, v6, outer_len);
    if ether_type == 0x0800 {
        let ip = &out[14..34];
        assert_eq!(ip[0], 0x45, "outer IPv4 version and IHL");
        assert_eq!(ip[9], PROTO_UDP, "outer protocol");
        outer_src = IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap());
        outer_dst = IpAddr::from(<[u8; 4]>::try_from(&ip[16..20]).unwrap());
        v4 = Some((
            ip[1],
            u16::from_be_bytes([ip[4], ip[5]]),
            u16::from_be_bytes([ip[6], ip[7]]),
            ip[8],
            ones_sum(ip) == 0xffff,
        ));
        v6 = None;
        outer_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        at = 34;
    } else {
        assert_eq!(ether_type, 0x86dd, "outer EtherType");
        let ip = &out[14..54];
        assert_eq!(ip[0] >> 4, 6, "outer IPv6 version");
        assert_eq!(ip[6], PROTO_UDP, "outer next header");
        let vcf = u32::from_be_bytes([ip[0], ip[1], ip[2], ip[3]]);
        v6 = Some(((vcf >> 20) as u8, vcf & 0xf_ffff, ip[7]));
        v4 = None;
        outer_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        outer_src = IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
        outer_dst = IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
        at = 54;
    }
    let udp = &out[at..at + 8];
    let gue = &out[at + 8..at + 12];
    let hlen = gue[0];
    // The addresses have the outer header's family (the balancer lists no other).
    let block = (hlen > 0).then(|| {
        let b = &out[at + 12..at + 12 + usize::from(hlen) * 4];
        let addrs = b[4..]
            .chunks_exact(16)
            .map(|a| match outer_dst {
                IpAddr::V4(_) => IpAddr::from(<[u8; 4]>::try_from(&a[..4]).unwrap()),
                IpAddr::V6(_) => IpAddr::from(<[u8; 16]>::try_from(a).unwrap()),
            })
            .collect::<Vec<_>>();
        (u16::from_be_bytes([b[0], b[1]]), b[2], b[3], addrs)
    });
    let r = Gue {
        dst_mac: out[0..6].try_into().unwrap(),
        src_mac: out[6..12].try_into().unwrap(),
        outer_src,
        outer_dst,
        v4,
        v6,
        outer_len,
        sport: u16::from_be_bytes([udp[0], udp[1]]),
        dport: u16::from_be_bytes([udp[2], udp[3]]),
        udp_len: usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        udp_check: u16::from_be_bytes([udp[6], udp[7]]),
        hlen,
        proto: gue[1],
        flags: u16::from_be_bytes([gue[2], gue[3]]),
        block,
        inner: Vec::new(),
    };
    at += 12 + usize::from(hlen) * 4;
    Gue { inner: out[at..].to_vec(), ..r }
}

fn balance(ebpf: &Ebpf, input: &[u8]) -> (u32, Vec<u8>) {
    let (action, out, _) = bpf::run(ebpf, programs::BALANCER, input).expect("BPF_PROG_TEST_RUN");
    (action, out)
}

fn flow_events(ebpf: &Ebpf) -> u64 {
    let c = lb_agent::dataplane::read_counters(ebpf).unwrap();
    [FlowEvent::Hit, FlowEvent::Miss, FlowEvent::Rehash].iter().map(|e| c.flow_event(*e).packets).sum()
}

fn mac_of(plan: &Plan, addr: IpAddr) -> [u8; 6] {
    plan.backends.iter().find(|b| b.address == addr).and_then(|b| b.mac).expect("backend mac").0
}

#[test]
fn gue_outer_header_field_by_field_in_each_family() {
    if !is_root() {
        return;
    }
    let Loaded { ebpf, plan, .. } = load();
    // (name, VIP name, client, VIP address): 4in4, 6in6, 4in6 / 4in4 (sc-mixed has one backend of each family).
    let vip_mixed: IpAddr = "192.0.2.30".parse().unwrap();
    let mut families_seen = std::collections::BTreeSet::new();
    let mut cases = vec![
        ("4in4", "sc4", IpAddr::V4(CLIENT_V4), IpAddr::V4(VIP_V4), 40_000u16),
        ("6in6", "sc6", IpAddr::V6(CLIENT_V6), IpAddr::V6(VIP_V6), 40_000),
    ];
    for port in 40_000..40_064 {
        cases.push(("mixed", "sc-mixed", IpAddr::V4(CLIENT_V4), vip_mixed, port));
    }
    for (name, vip, client, vip_addr, sport) in cases {
        let input = tcp_frame(client, vip_addr, sport, 80, true, b"");
        let (action, out) = balance(&ebpf, &input);
        assert_eq!(action, Action::Tx as u32, "{name}: forwarded");
        let (id, hash) = owner(&plan, vip, client, sport, 80);
        let backend = backend_addr(&plan, id);
        let g = parse_gue(&out);
        let inner = &input[14..];
        assert_eq!(g.dst_mac, mac_of(&plan, backend), "{name}: next-hop MAC");
        assert_eq!(g.src_mac, LB_MAC, "{name}: our MAC");
        assert_eq!(g.outer_dst, backend, "{name}: outer destination");
        assert_eq!(g.sport, gue_source_port(hash), "{name}: UDP source port from the flow hash");
        assert_eq!(g.dport, DEFAULT_GUE_PORT, "{name}: UDP destination port");
        assert_eq!(g.udp_len, 8 + 4 + inner.len(), "{name}: UDP length");
        assert_eq!(g.udp_check, 0, "{name}: UDP checksum 0 in both families");
        assert_eq!((g.hlen, g.flags), (0, 0), "{name}: no previous owner, no private data");
        assert_eq!(g.proto, if client.is_ipv4() { PROTO_IPIP } else { PROTO_IPV6 }, "{name}: GUE protocol");
        assert_eq!(g.inner, inner, "{name}: the client's packet follows unchanged");
        match backend {
            IpAddr::V4(_) => {
                families_seen.insert(4);
                assert_eq!(g.outer_src, IpAddr::V4(TUNNEL_V4), "{name}: outer source");
                let (tos, id, frags, ttl, checksum_ok) = g.v4.unwrap();
                assert_eq!((tos, id, frags, ttl), (0, 0, 0x4000, 64), "{name}: TOS, id 0, DF, TTL");
                assert!(checksum_ok, "{name}: outer IPv4 header checksum");
                assert_eq!(g.outer_len, 20 + g.udp_len, "{name}: IPv4 total length");
            }
            IpAddr::V6(_) => {
                families_seen.insert(6);
                assert_eq!(g.outer_src, IpAddr::V6(TUNNEL_V6), "{name}: outer source");
                let (tc, label, hop_limit) = g.v6.unwrap();
                assert_eq!((tc, label, hop_limit), (0, hash & 0xf_ffff, 64), "{name}: traffic class, flow label, hop limit");
                assert_eq!(g.outer_len, g.udp_len, "{name}: IPv6 payload length");
            }
        }
    }
    assert_eq!(families_seen.len(), 2, "the mixed VIP's flows reached backends of both families");
}

#[test]
fn gue_source_port_is_stable_per_flow_and_spread_across_flows() {
    if !is_root() {
        return;
    }
    let Loaded { ebpf, .. } = load();
    let mut ports = std::collections::BTreeSet::new();
    for sport in 20_000..20_200u16 {
        let input = tcp_frame(IpAddr::V4(CLIENT_V4), IpAddr::V4(VIP_V4), sport, 80, true, b"");
        let first = parse_gue(&balance(&ebpf, &input).1).sport;
        let again = parse_gue(&balance(&ebpf, &tcp_frame(IpAddr::V4(CLIENT_V4), IpAddr::V4(VIP_V4), sport, 80, false, b"x")).1).sport;
        assert_eq!(first, again, "flow {sport}: the same source port for every packet of a flow");
        assert!(first >= 0xc000, "flow {sport}: source port {first} in the dynamic range");
        ports.insert(first);
    }
    // 200 flows over 16,384 ports: a hash collides a few times at most.
    assert!(ports.len() >= 190, "200 flows used only {} source ports", ports.len());
}

#[test]
fn previous_owner_is_carried_when_and_only_when_the_slot_has_one() {
    if !is_root() {
        return;
    }
    let mut loaded = load();
    let client = IpAddr::V4(CLIENT_V4);
    let leaving: IpAddr = LEAVING_SC4.parse().unwrap();
    // A flow of the backend the reload removes: its slot moves.
    let sport = port_owned_by(&loaded.plan, "sc4", client, 80, LEAVING_SC4, 41_000);
    let input = tcp_frame(client, IpAddr::V4(VIP_V4), sport, 80, false, b"data");
    let flows_before = flow_events(&loaded.ebpf);

    let g = parse_gue(&balance(&loaded.ebpf, &input).1);
    assert_eq!(g.hlen, 0, "no previous owner yet");
    assert_eq!(g.outer_dst, leaving, "sent to the backend that will leave");

    let before = reload_without_leaving(&mut loaded);
    let (current, _) = owner(&loaded.plan, "sc4", client, sport, 80);
    let g = parse_gue(&balance(&loaded.ebpf, &input).1);
    assert_eq!(g.outer_dst, backend_addr(&loaded.plan, current), "sent to the slot's new owner");
    assert_ne!(g.outer_dst, leaving, "the removed backend owns no slot");
    assert_eq!(g.hlen, SECOND_CHANCE_HLEN, "a previous owner: the second-chance block");
    assert_eq!(g.block, Some((SECOND_CHANCE_KIND, 0, 1, vec![leaving])), "kind, hops 0, count 1, previous owner (the removed backend)");
    assert_eq!(g.udp_len, 8 + 4 + 20 + input.len() - 14, "UDP length counts the block");
    assert_eq!(g.outer_len, 20 + g.udp_len, "IPv4 total length counts the block");
    assert!(g.v4.unwrap().4, "checksum with the block");
    assert_eq!(g.inner, &input[14..], "the client's packet after the block");
    let other_port = unmoved_port(&before, &loaded.plan, "sc4", client, 80, sport + 1);
    let other_flow = parse_gue(&balance(&loaded.ebpf, &tcp_frame(client, IpAddr::V4(VIP_V4), other_port, 80, false, b"")).1);
    assert_eq!(other_flow.hlen, 0, "a slot the reload did not change has no previous owner");

    // The agent writes a slot's previous owner before the slot itself
    // (`MapStore::set_ring`), so for an instant a moving slot's previous
    // owner is its current one: too short for a reload to show, so written here.
    write_previous_of(&loaded, "sc4", client, sport, 80, only(current));
    assert_eq!(parse_gue(&balance(&loaded.ebpf, &input).1).hlen, 0, "previous == current: nothing to carry");
    // The agent keeps a previous owner's BACKENDS entry until its slots
    // drain, so only a map written otherwise (by hand, or an older agent's
    // pins) names one without an entry: written here.
    let unused = 60; // below max_backends, never given to a backend here
    assert!(loaded.plan.backend(unused).is_none() && before.backend(unused).is_none());
    write_previous_of(&loaded, "sc4", client, sport, 80, only(unused));
    assert_eq!(parse_gue(&balance(&loaded.ebpf, &input).1).hlen, 0, "a previous owner without a backend entry is not carried");
    assert_eq!(flow_events(&loaded.ebpf), flows_before, "TCP on a second-chance VIP never touches the flow table");

    // UDP on a second-chance VIP: the flow table, GUE without the block,
    // though the reload gave its slot a previous owner.
    let udp_port = port_owned_by(&before, "sc4-udp", client, 53, LEAVING_SC4_UDP, 41_500);
    assert_eq!(previous_of(&loaded, "sc4-udp", client, udp_port, 53), only(before.backend_id(LEAVING_SC4_UDP.parse().unwrap()).unwrap()));
    let (action, out) = balance(&loaded.ebpf, &udp_frame(CLIENT_V4, VIP_V4, udp_port, 53, b"query"));
    assert_eq!(action, Action::Tx as u32);
    let g = parse_gue(&out);
    assert_eq!(g.hlen, 0, "UDP carries no previous owner");
    assert_eq!(flow_events(&loaded.ebpf), flows_before + 1, "UDP on a second-chance VIP goes through the flow table");

    // A GUE VIP without second chance: flow table, no block, even with
    // PREVIOUS set. The agent never gives such a row previous owners (it
    // clears them, plan/previous.rs), so it is written here.
    let lb_client_port = 42_000;
    write_previous_of(&loaded, "gue-lb", client, lb_client_port, 80, only(other_owner(&loaded.plan, "gue-lb", client, lb_client_port, 80)));
    let g = parse_gue(&balance(&loaded.ebpf, &tcp_frame(client, IpAddr::V4(GUE_LB_VIP), lb_client_port, 80, true, b"")).1);
    assert_eq!((g.hlen, g.dport), (0, DEFAULT_GUE_PORT), "GUE, no private data");
    assert_eq!(flow_events(&loaded.ebpf), flows_before + 2, "a GUE VIP without second chance keeps its flow table");

    // The drain window passes: the agent's timer clears the rows.
    let sc_rows: Vec<u32> = ["sc4", "sc4-udp", "sc6"].iter().map(|n| vip(&loaded.plan, n).row).collect();
    let drained = drain(&loaded);
    assert!(sc_rows.iter().all(|r| drained.contains(r)), "rows {sc_rows:?} drained, got {drained:?}");
    assert_eq!(previous_of(&loaded, "sc4", client, sport, 80), NONE);
    assert_eq!(parse_gue(&balance(&loaded.ebpf, &input).1).hlen, 0, "cleared");
    assert_eq!(flow_events(&loaded.ebpf), flows_before + 2, "TCP on a second-chance VIP never touches the flow table");
}

#[test]
fn previous_owners_are_carried_newest_first_and_only_those_the_owner_can_send_to() {
    if !is_root() {
        return;
    }
    let loaded = load();
    let client = IpAddr::V4(CLIENT_V4);
    let sport = 49_000;
    let (current, _) = owner(&loaded.plan, "sc4", client, sport, 80);
    let id_of = |a: &str| loaded.plan.backend_id(a.parse().unwrap()).unwrap();
    let others: Vec<u32> = configs::BACKENDS_V4.iter().map(|a| id_of(a)).filter(|&id| id != current).collect();
    let addr = |id: u32| backend_addr(&loaded.plan, id);
    let input = tcp_frame(client, IpAddr::V4(VIP_V4), sport, 80, false, b"data");

    // A slot that changed twice, as the agent writes it (plan/previous.rs).
    write_previous_of(&loaded, "sc4", client, sport, 80, [others[0], others[1]]);
    let g = parse_gue(&balance(&loaded.ebpf, &input).1);
    assert_eq!(g.outer_dst, addr(current), "to the current owner");
    assert_eq!(g.hlen, 9, "Hlen: the 4-byte head and two 16-byte addresses");
    assert_eq!(g.block, Some((SECOND_CHANCE_KIND, 0, 2, vec![addr(others[0]), addr(others[1])])), "hops 0, count 2, newest first");
    assert_eq!(g.udp_len, 8 + 4 + 36 + input.len() - 14, "UDP length counts both addresses");
    assert_eq!(g.outer_len, 20 + g.udp_len, "IPv4 total length counts both addresses");
    assert!(g.v4.unwrap().4, "checksum with the longer block");
    assert_eq!(g.inner, &input[14..], "the client's packet after the block");

    // States the agent never writes (each says why it is skipped): the rest keep their order.
    let v6 = id_of(configs::BACKENDS_V6[0]);
    let unused = 60; // below max_backends, never given to a backend here
    let cases: [(&str, PreviousOwners, Vec<IpAddr>); 5] = [
        ("an IPv6 previous owner of an IPv4 current owner (no in-place send-on)", [v6, others[1]], vec![addr(others[1])]),
        ("the current owner", [current, others[0]], vec![addr(others[0])]),
        ("a previous owner without a BACKENDS entry", [unused, others[1]], vec![addr(others[1])]),
        ("nothing usable", [v6, current], vec![]),
        ("a gap ends the list", [NO_BACKEND, others[0]], vec![]),
    ];
    for (name, owners, carried) in cases {
        write_previous_of(&loaded, "sc4", client, sport, 80, owners);
        let g = parse_gue(&balance(&loaded.ebpf, &input).1);
        assert_eq!(g.hlen, second_chance_hlen(carried.len()), "{name}: Hlen");
        let expected = (!carried.is_empty()).then(|| (SECOND_CHANCE_KIND, 0, carried.len() as u8, carried.clone()));
        assert_eq!(g.block, expected, "{name}");
        assert_eq!(g.inner, &input[14..], "{name}: the client's packet after the block");
    }
}

#[test]
fn the_mtu_check_counts_the_whole_gue_overhead() {
    if !is_root() {
        return;
    }
    let mut loaded = load();
    let client = IpAddr::V4(CLIENT_V4);
    // A flow whose slot the reload below moves (then it carries the block).
    let sport = port_owned_by(&loaded.plan, "sc4", client, 80, LEAVING_SC4, 43_000);
    // Inner IP length L: GUE without the block adds 32 bytes (IPv4 20, UDP 8, GUE 4), with it 52.
    let frame_of = |ip_len: usize| tcp_frame(client, IpAddr::V4(VIP_V4), sport, 80, false, &vec![0u8; ip_len - 40]);
    let limit = MTU as usize;
    let reasons = |ebpf: &Ebpf| lb_agent::dataplane::read_counters(ebpf).unwrap();
    assert_eq!(balance(&loaded.ebpf, &frame_of(limit - 32)).0, Action::Tx as u32, "exactly the MTU once in GUE");
    let before = reasons(&loaded.ebpf).reason(Reason::TooBigIcmp).packets;
    assert_eq!(balance(&loaded.ebpf, &frame_of(limit - 31)).0, Action::Tx as u32, "answered with ICMP (TX)");
    assert_eq!(reasons(&loaded.ebpf).reason(Reason::TooBigIcmp).packets, before + 1, "one byte over the MTU in GUE: too big");
    reload_without_leaving(&mut loaded);
    let (_, out) = balance(&loaded.ebpf, &frame_of(limit - 52));
    assert_eq!(parse_gue(&out).hlen, SECOND_CHANCE_HLEN, "exactly the MTU with the block");
    balance(&loaded.ebpf, &frame_of(limit - 51));
    assert_eq!(reasons(&loaded.ebpf).reason(Reason::TooBigIcmp).packets, before + 2, "the block counts toward the MTU");
}

/// A frame's IPv4 packet made a first fragment (MF set), checksum fixed.
fn first_fragment(mut frame: Vec<u8>) -> Vec<u8> {
    frame[14 + 6] = 0x20;
    frame[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let check = !ones_sum(&frame[14..34]);
    frame[14 + 10..14 + 12].copy_from_slice(&check.to_be_bytes());
    frame
}

/// Checks that `out` is `input`'s IP packet in the tunnel of its VIP toward
/// `backend`: GUE (no private data) or IPIP.
fn assert_tunnel(name: &str, out: &[u8], input: &[u8], backend: IpAddr, gue: bool) {
    assert_eq!(out[12..14], [0x08, 0x00], "{name}: outer IPv4");
    if gue {
        let g = parse_gue(out);
        assert_eq!((g.outer_dst, g.dport, g.hlen), (backend, DEFAULT_GUE_PORT, 0), "{name}: GUE to the backend, no private data");
        assert_eq!(g.inner, &input[14..], "{name}: the packet follows GUE unchanged");
    } else {
        assert_eq!(out[14 + 9], PROTO_IPIP, "{name}: outer protocol IPIP");
        assert_eq!(IpAddr::from(<[u8; 4]>::try_from(&out[30..34]).unwrap()), backend, "{name}: outer destination");
        assert_eq!(&out[34..], &input[14..], "{name}: the packet follows the IPIP header unchanged");
    }
}

#[test]
fn fragments_and_icmp_errors_travel_in_their_vips_tunnel() {
    if !is_root() {
        return;
    }
    let Loaded { ebpf, plan, .. } = load();
    let client = IpAddr::V4(CLIENT_V4);
    let count = |r: Reason| lb_agent::dataplane::read_counters(&ebpf).unwrap().reason(r).packets;
    // The fragment path knows the VIP only by its address entry: it must carry the VIP's tunnel.
    for (name, vip_name, vip_addr, gue) in [
        ("TCP fragment to a GUE VIP", "gue-lb", GUE_LB_VIP, true),
        ("UDP fragment to a flow_state = \"backend\" VIP", "sc4-udp", VIP_V4, true),
        ("UDP fragment to an IPIP VIP", "ipip", IPIP_VIP, false),
    ] {
        let v = vip(&plan, vip_name);
        let whole = if v.key.proto == PROTO_TCP {
            tcp_frame(client, IpAddr::V4(vip_addr), 44_000, v.port(), false, &[7; 64])
        } else {
            udp_frame(CLIENT_V4, vip_addr, 44_000, v.port(), &[7; 64])
        };
        let input = first_fragment(whole);
        let before = count(Reason::FragmentForwarded);
        let (action, out) = balance(&ebpf, &input);
        assert_eq!((action, count(Reason::FragmentForwarded)), (Action::Tx as u32, before + 1), "{name}: fragment_forwarded");
        // Fragments hash addresses and protocol only (ports 0).
        let backend = backend_addr(&plan, plan::lookup(&plan, v, client, 0, 0));
        assert_tunnel(name, &out, &input, backend, gue);
    }
    // ICMP errors find their VIP by the quoted flow, and its entry decides the tunnel.
    for (name, vip_name, vip_addr, gue) in [
        ("ICMP error about a GUE VIP's flow", "gue-lb", GUE_LB_VIP, true),
        ("ICMP error about a flow_state = \"backend\" VIP's flow", "sc4", VIP_V4, true),
        ("ICMP error about an IPIP VIP's flow", "ipip", IPIP_VIP, false),
    ] {
        let v = vip(&plan, vip_name);
        let cport = 44_100;
        // What the backend sent (VIP -> client), quoted by a router's fragmentation-needed.
        let reply = match v.key.proto {
            PROTO_TCP => bytes!(PacketBuilder::ipv4(vip_addr.octets(), CLIENT_V4.octets(), 64).tcp(v.port(), cport, 1, 1000), &[0; 8]),
            _ => bytes!(PacketBuilder::ipv4(vip_addr.octets(), CLIENT_V4.octets(), 64).udp(v.port(), cport), &[0; 8]),
        };
        let icmp = lb_tests::packets::icmp(3, 4, &reply[..28]);
        let mut input = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4([203, 0, 113, 1], vip_addr.octets(), 64)
            .write_to_vec(&mut input, etherparse::IpNumber(1), &icmp)
            .unwrap();
        let before = count(Reason::IcmpErrorForwarded);
        let (action, out) = balance(&ebpf, &input);
        assert_eq!((action, count(Reason::IcmpErrorForwarded)), (Action::Tx as u32, before + 1), "{name}: icmp_error_forwarded");
        // The backend of the client's flow.
        let backend = backend_addr(&plan, plan::lookup(&plan, v, client, cport, v.port()));
        assert_tunnel(name, &out, &input, backend, gue);
    }
}

// ---------------------------------------------------------------- decap

/// The backend's view: b1 of a one-backend topology (eth0 198.51.100.11,
/// 2001:db8::11, the VIPs on lo), with forwarding on (the FIB lookup of a
/// redirect needs it), static neighbour entries for the previous owners,
/// and TCP listeners on the VIPs.
struct Backend {
    topo: Topology,
    ns: String,
    eth0_mac: [u8; 6],
}

const PREVIOUS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);
const PREVIOUS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x12);
const PREVIOUS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
/// The older previous owner of a slot that changed twice (A of A -> B -> C).
const OLDEST_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 13);
const OLDEST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x13);
const OLDEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x13];
/// Previous owners on eth0's link with no neighbour entry in b1.
const NO_NEIGHBOUR_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
const NO_NEIGHBOUR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x77);
/// A client address nobody in the topology has: the backend's SYN-ACKs to
/// it go to [`GHOST_MAC`] and are never answered (no RST ends a handshake early).
const GHOST_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);
const GHOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const B1_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const B1_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11);

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl Backend {
    fn build() -> Backend {
        let topo = Topology::build(TopologyOptions { backends: 1, ..TopologyOptions::default() }).expect("topology");
        let b1 = topology::backend_name(1);
        let sysctls = "echo 1 > /proc/sys/net/ipv4/conf/all/forwarding && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding";
        topo.exec_ok(&b1, "sh", &["-c", sysctls]).unwrap();
        let neighbours = [
            (IpAddr::V4(PREVIOUS_V4), PREVIOUS_MAC),
            (IpAddr::V6(PREVIOUS_V6), PREVIOUS_MAC),
            (IpAddr::V4(OLDEST_V4), OLDEST_MAC),
            (IpAddr::V6(OLDEST_V6), OLDEST_MAC),
            (IpAddr::V4(GHOST_V4), GHOST_MAC),
        ];
        for (addr, mac) in neighbours {
            let (a, m) = (addr.to_string(), mac_text(mac));
            topo.exec_ok(&b1, "ip", &["neigh", "replace", &a, "lladdr", &m, "dev", topology::IFACE, "nud", "permanent"]).unwrap();
        }
        let mac = topo.exec_ok(&b1, "cat", &[&format!("/sys/class/net/{}/address", topology::IFACE)]).unwrap();
        let bytes: Vec<u8> = mac.trim().split(':').map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
        let ns = topo.ns_name(&b1).to_string();
        Backend { topo, ns, eth0_mac: bytes.try_into().unwrap() }
    }

    fn syncookies(&self, mode: u8) {
        let cmd = format!("echo {mode} > /proc/sys/net/ipv4/tcp_syncookies");
        self.topo.exec_ok(&topology::backend_name(1), "sh", &["-c", &cmd]).unwrap();
    }

    /// The backend's SYN-ACK to a SYN from [`GHOST_V4`]:`sport` to VIP:`port`,
    /// sent into eth0 from the switch as from the wire and captured leaving
    /// eth0: (server ISN, client ISN + 1).
    fn handshake_seq(&self, sport: u16, port: u16) -> (u32, u32) {
        let b1 = topology::backend_name(1);
        let inject = PacketSocket::open(&self.topo, topology::SWITCH, &format!("v-{b1}")).expect("switch port socket");
        let capture = PacketSocket::open(&self.topo, &b1, topology::IFACE).expect("eth0 capture");
        let client_isn = 7_000_000;
        let syn = bytes!(
            PacketBuilder::ethernet2(GHOST_MAC, self.eth0_mac).ipv4(GHOST_V4.octets(), VIP_V4.octets(), 64).tcp(sport, port, client_isn, 65535).syn(),
            &[]
        );
        inject.send(&syn).unwrap();
        for c in capture.collect(Duration::from_millis(300), Duration::from_secs(3)).unwrap() {
            let f = &c.frame;
            if c.outgoing() && f.len() >= 54 && f[12..14] == [0x08, 0x00] && f[23] == PROTO_TCP {
                let tcp = &f[14 + usize::from(f[14] & 0x0f) * 4..];
                let (src_port, dst_port, flags) = (u16::from_be_bytes([tcp[0], tcp[1]]), u16::from_be_bytes([tcp[2], tcp[3]]), tcp[13]);
                if src_port == port && dst_port == sport && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                    return (u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), client_isn + 1);
                }
            }
        }
        panic!("no SYN-ACK from VIP port {port} to {GHOST_V4}:{sport} left eth0 within 3 s");
    }
}

/// One decap run inside the backend's namespace, as if received on eth0
/// (`ingress` None: on lo, whose routes lead nowhere).
fn decap(ebpf: &Ebpf, input: &[u8], ingress: Option<u32>) -> (u32, Vec<u8>) {
    let (action, out, _) = bpf::run_from(ebpf, programs::DECAP, input, ingress).expect("BPF_PROG_TEST_RUN");
    (action, out)
}

fn decap_count(ebpf: &Ebpf, r: DecapReason) -> u64 {
    lb_agent::dataplane::read_counters(ebpf).unwrap().decap_reason(r).packets
}

/// Runs `input` through the decap program and checks the reason, the
/// action, and for a pass that the output is L2 + `inner`.
fn expect_decap(ebpf: &Ebpf, name: &str, input: &[u8], inner: &[u8], ingress: Option<u32>, reason: DecapReason) -> Vec<u8> {
    let before = decap_count(ebpf, reason);
    let (action, out) = decap(ebpf, input, ingress);
    assert_eq!(decap_count(ebpf, reason), before + 1, "{name}: counted as {}", reason.label());
    assert_eq!(action, reason.action() as u32, "{name}: action of {}", reason.label());
    if reason.action() == Action::Pass && !inner.is_empty() {
        assert_eq!(&out[..12], &input[..12], "{name}: MACs kept");
        let ether_type = if inner[0] >> 4 == 4 { [0x08, 0x00] } else { [0x86, 0xdd] };
        assert_eq!(out[12..14], ether_type, "{name}: inner EtherType");
        assert_eq!(&out[14..], inner, "{name}: exactly the inner packet");
    }
    out
}

#[test]
fn decap_accepts_known_connections_and_redirects_the_rest_once() {
    if !is_root() {
        return;
    }
    let backend = Backend::build();
    let eth0_mac = backend.eth0_mac;
    let ns = backend.ns.clone();
    // Everything that looks up sockets or routes runs in b1's namespace.
    netns::run_in(&ns, move || {
        let Loaded { ebpf, .. } = load();
        let ifname = std::ffi::CString::new(topology::IFACE).unwrap();
        // SAFETY: a NUL-terminated interface name.
        let eth0 = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
        assert_ne!(eth0, 0, "eth0 in b1");
        let b1 = IpAddr::V4(B1_V4);
        let b1_6 = IpAddr::V6(B1_V6);
        let (vip, vip6) = (IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6));
        let prev = Some((IpAddr::V4(PREVIOUS_V4), 0u8));
        let prev6 = Some((IpAddr::V6(PREVIOUS_V6), 0u8));

        // Real connections in this namespace, on both VIPs.
        let listener = TcpListener::bind((VIP_V4, 7001))?;
        let client = TcpStream::connect((VIP_V4, 7001))?;
        let (_server, _) = listener.accept()?;
        let listener6 = TcpListener::bind((VIP_V6, 7001))?;
        let client6 = TcpStream::connect((VIP_V6, 7001))?;
        let (_server6, _) = listener6.accept()?;
        let cport = client.local_addr()?.port();
        let cport6 = client6.local_addr()?.port();
        let known = tcp_packet(vip, vip, cport, 7001, TCP_ACK, 1, 1);
        let known6 = tcp_packet(vip6, vip6, cport6, 7001, TCP_ACK, 1, 1);
        let unknown = tcp_packet(IpAddr::V4(CLIENT_V4), vip, 45_000, 7001, TCP_ACK, 1, 1);
        let unknown6 = tcp_packet(IpAddr::V6(CLIENT_V6), vip6, 45_000, 7001, TCP_ACK, 1, 1);
        let syn = tcp_packet(IpAddr::V4(CLIENT_V4), vip, 45_001, 7001, TCP_SYN, 1, 0);
        let udp = bytes!(PacketBuilder::ipv4(CLIENT_V4.octets(), VIP_V4.octets(), 64).udp(5000, 53), b"q");
        let mut fragment = unknown.clone();
        fragment[6] = 0x20; // more fragments
        fragment[10..12].copy_from_slice(&[0, 0]);
        let check = !ones_sum(&fragment[..20]);
        fragment[10..12].copy_from_slice(&check.to_be_bytes());

        let cases: Vec<(&str, Vec<u8>, &[u8], DecapReason)> = vec![
            ("SYN", gue_frame(b1, eth0_mac, &gue_header(true, prev), &syn), &syn, DecapReason::AcceptedSyn),
            ("established IPv4", gue_frame(b1, eth0_mac, &gue_header(true, prev), &known), &known, DecapReason::AcceptedSocket),
            ("established IPv6", gue_frame(b1_6, eth0_mac, &gue_header(false, prev6), &known6), &known6, DecapReason::AcceptedSocket),
            ("established IPv6 in IPv4", gue_frame(b1, eth0_mac, &gue_header(false, prev), &known6), &known6, DecapReason::AcceptedSocket),
            ("established IPv4 in IPv6", gue_frame(b1_6, eth0_mac, &gue_header(true, prev6), &known), &known, DecapReason::AcceptedSocket),
            ("not TCP", gue_frame(b1, eth0_mac, &gue_header(true, prev), &udp), &udp, DecapReason::AcceptedOther),
            ("IPv4 fragment", gue_frame(b1, eth0_mac, &gue_header(true, prev), &fragment), &fragment, DecapReason::AcceptedOther),
            ("already redirected", gue_frame(b1, eth0_mac, &gue_header(true, Some((IpAddr::V4(PREVIOUS_V4), 1))), &unknown), &unknown, DecapReason::AcceptedRedirected),
            ("no second-chance block", gue_frame(b1, eth0_mac, &gue_header(true, None), &unknown), &unknown, DecapReason::Decapsulated),
            ("unspecified previous owner", gue_frame(b1, eth0_mac, &gue_header(true, Some((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))), &unknown), &unknown, DecapReason::UnknownNoPrevious),
            ("unspecified previous owner, IPv6", gue_frame(b1_6, eth0_mac, &gue_header(true, Some((IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0))), &unknown), &unknown, DecapReason::UnknownNoPrevious),
        ];
        for (name, input, inner, reason) in &cases {
            expect_decap(&ebpf, name, input, inner, Some(eth0), *reason);
        }

        // Unknown non-SYN (only a listener on the port): redirected, in place.
        for (name, outer, inner, previous) in [
            ("IPv4", b1, &unknown, IpAddr::V4(PREVIOUS_V4)),
            ("IPv6", b1_6, &unknown6, IpAddr::V6(PREVIOUS_V6)),
            ("IPv6 in IPv4", b1, &unknown6, IpAddr::V4(PREVIOUS_V4)),
        ] {
            let input = gue_frame(outer, eth0_mac, &gue_header(inner[0] >> 4 == 4, Some((previous, 0))), inner);
            let out = expect_decap(&ebpf, name, &input, &[], Some(eth0), DecapReason::Redirected);
            assert_eq!(out.len(), input.len(), "{name}: same size");
            assert_eq!(out[..6], PREVIOUS_MAC, "{name}: to the previous owner's MAC (neighbour table)");
            assert_eq!(out[6..12], eth0_mac, "{name}: from eth0's MAC");
            let g = parse_gue(&out);
            assert_eq!((g.outer_src, g.outer_dst), (outer, previous), "{name}: from this backend to the previous owner");
            assert_eq!(g.block.as_ref().map(|b| b.1), Some(1), "{name}: hops 1");
            if let Some(v4) = g.v4 {
                assert!(v4.4, "{name}: outer IPv4 checksum after the rewrite");
            }
            let udp_at = if outer.is_ipv4() { 34 } else { 54 };
            let mut expected = input[udp_at..].to_vec();
            expected[8 + 4 + 2] = 1; // hops, in the second-chance block after UDP and GUE
            assert_eq!(out[udp_at..], expected[..], "{name}: UDP, GUE, the block but its hops, and the inner packet unchanged");
            // The previous owner receives it with hops 1: accepted whatever it knows.
            expect_decap(&ebpf, &format!("{name} at the previous owner"), &out, inner, Some(eth0), DecapReason::AcceptedRedirected);
        }

        // A slot that changed twice (A -> B -> C) names B then A. Each hop is
        // run here as the host it stands for (this namespace knows `known`,
        // not `unknown`): C sends an unknown packet to B (hops 1), B accepts
        // a connection it has and sends the rest on to A (hops 2), and A,
        // the last one named, takes whatever it gets.
        for (family, outer, inner, chain, macs) in [
            ("IPv4", b1, &unknown, [IpAddr::V4(PREVIOUS_V4), IpAddr::V4(OLDEST_V4)], [PREVIOUS_MAC, OLDEST_MAC]),
            ("IPv6", b1_6, &unknown6, [IpAddr::V6(PREVIOUS_V6), IpAddr::V6(OLDEST_V6)], [PREVIOUS_MAC, OLDEST_MAC]),
        ] {
            let inner_v4 = inner[0] >> 4 == 4;
            let udp_at = if outer.is_ipv4() { 34 } else { 54 };
            for hops in 0..2u8 {
                let name = format!("{family} chain, hop {hops}");
                let input = gue_frame(outer, eth0_mac, &gue_chain(inner_v4, &chain, hops), inner);
                let out = expect_decap(&ebpf, &name, &input, &[], Some(eth0), DecapReason::Redirected);
                let to = usize::from(hops);
                assert_eq!(out[..6], macs[to], "{name}: to previous[{hops}]'s MAC");
                let g = parse_gue(&out);
                assert_eq!((g.outer_src, g.outer_dst), (outer, chain[to]), "{name}: from this host to previous[{hops}]");
                assert_eq!(g.block, Some((SECOND_CHANCE_KIND, hops + 1, 2, chain.to_vec())), "{name}: hops + 1, the list unchanged");
                let mut expected = input[udp_at..].to_vec();
                expected[8 + 4 + 2] = hops + 1;
                assert_eq!(out[udp_at..], expected[..], "{name}: only hops changes after the outer IP header");
                if let Some(v4) = g.v4 {
                    assert!(v4.4, "{name}: outer IPv4 checksum after the rewrite");
                }
            }
            let known_here = if inner_v4 { &known } else { &known6 };
            let at_b = gue_frame(outer, eth0_mac, &gue_chain(inner_v4, &chain, 1), known_here);
            expect_decap(&ebpf, &format!("{family} chain: B has the connection"), &at_b, known_here, Some(eth0), DecapReason::AcceptedSocket);
            let at_a = gue_frame(chain[1], eth0_mac, &gue_chain(inner_v4, &chain, 2), inner);
            expect_decap(&ebpf, &format!("{family} chain: A, the last named"), &at_a, inner, Some(eth0), DecapReason::AcceptedRedirected);
        }

        // No route out of the receiving interface (a run on lo): decapsulated, counted.
        let input = gue_frame(b1, eth0_mac, &gue_header(true, prev), &unknown);
        expect_decap(&ebpf, "redirect from lo", &input, &unknown, None, DecapReason::RedirectFailed);
        // A previous owner on eth0's link without a neighbour entry (the
        // usual case: backends rarely talk to each other): rewritten toward
        // it and passed for the kernel to forward, which resolves the
        // neighbour. Exactly the frame the LB would have sent the previous
        // owner with hops 1: the LB's source (the stack drops a packet from
        // its own address as a martian), the MACs as received (eth0's is
        // the destination, so the stack takes it), the IPv4 checksum anew.
        let unresolved = [IpAddr::V4(NO_NEIGHBOUR_V4), IpAddr::V6(NO_NEIGHBOUR_V6)];
        for (name, outer, inner, previous) in [
            ("no neighbour, IPv4", b1, &unknown, unresolved[0]),
            ("no neighbour, IPv6", b1_6, &unknown6, unresolved[1]),
            ("no neighbour, IPv6 in IPv4", b1, &unknown6, unresolved[0]),
        ] {
            let inner_v4 = inner[0] >> 4 == 4;
            let input = gue_frame(outer, eth0_mac, &gue_header(inner_v4, Some((previous, 0))), inner);
            let out = expect_decap(&ebpf, name, &input, &[], Some(eth0), DecapReason::RedirectedViaStack);
            let expected = gue_frame(previous, eth0_mac, &gue_header(inner_v4, Some((previous, 1))), inner);
            assert_eq!(out, expected, "{name}: the LB's frame to the previous owner, hops 1");
            let g = parse_gue(&out);
            let lb_source = if outer.is_ipv4() { IpAddr::V4(TUNNEL_V4) } else { IpAddr::V6(TUNNEL_V6) };
            assert_eq!((g.outer_src, g.outer_dst), (lb_source, previous), "{name}: from the LB to the previous owner");
            if let Some(v4) = g.v4 {
                assert!(v4.4, "{name}: outer IPv4 checksum after the rewrite");
            }
            // Where the kernel sends it, the previous owner accepts it whatever it knows.
            expect_decap(&ebpf, &format!("{name} at the previous owner"), &out, inner, Some(eth0), DecapReason::AcceptedRedirected);
        }

        // The FIB lookup is a forwarding lookup: with forwarding off on the
        // receiving interface a backend cannot redirect, neighbour known or
        // not, and the kernel would not forward either (`lb-agent decap`
        // hosts need it on). (This thread is in b1: /proc/sys/net is its namespace's.)
        std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "0")?;
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "0")?;
        for (name, outer, inner, previous) in [
            ("forwarding off", b1, &unknown, prev),
            ("forwarding off, no neighbour", b1, &unknown, Some((unresolved[0], 0))),
            ("forwarding off, no neighbour, IPv6", b1_6, &unknown6, Some((unresolved[1], 0))),
        ] {
            let input = gue_frame(outer, eth0_mac, &gue_header(inner[0] >> 4 == 4, previous), inner);
            expect_decap(&ebpf, name, &input, inner, Some(eth0), DecapReason::RedirectFailed);
        }

        drop((client, client6));
        Ok(())
    })
    .unwrap();
}

#[test]
fn decap_accepts_a_handshake_in_syn_recv_and_a_syn_cookie_ack() {
    if !is_root() {
        return;
    }
    let backend = Backend::build();
    let ns = backend.ns.clone();
    let listener = netns::run_in(&ns, || Ok(TcpListener::bind((VIP_V4, 7002))?)).unwrap();
    let prev = Some((IpAddr::V4(PREVIOUS_V4), 0u8));
    let (ghost, vip) = (IpAddr::V4(GHOST_V4), IpAddr::V4(VIP_V4));

    // Cookies off: the SYN leaves a request socket (SYN-RECV), which counts as a connection.
    backend.syncookies(0);
    let (server_isn, seq) = backend.handshake_seq(46_000, 7002);
    let pending = tcp_packet(ghost, vip, 46_000, 7002, TCP_ACK, seq, server_isn.wrapping_add(1));
    // Cookies always: no request socket, only the listener and the cookie.
    backend.syncookies(2);
    let (cookie, seq2) = backend.handshake_seq(46_001, 7002);
    let cookie_ack = tcp_packet(ghost, vip, 46_001, 7002, TCP_ACK, seq2, cookie.wrapping_add(1));
    // Not `cookie + 1` plus one: the low bits hold the MSS index, and a
    // neighbouring index is a valid cookie too. These bits hold the hash.
    let wrong_cookie = tcp_packet(ghost, vip, 46_001, 7002, TCP_ACK, seq2, (cookie ^ 0x00aa_aa00).wrapping_add(1));
    let eth0_mac = backend.eth0_mac;
    netns::run_in(&ns, move || {
        let Loaded { ebpf, .. } = load();
        let ifname = std::ffi::CString::new(topology::IFACE).unwrap();
        // SAFETY: a NUL-terminated interface name.
        let eth0 = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
        let b1 = IpAddr::V4(B1_V4);
        let frame = |inner: &[u8]| gue_frame(b1, eth0_mac, &gue_header(true, prev), inner);
        expect_decap(&ebpf, "ACK of a handshake in SYN-RECV", &frame(&pending), &pending, Some(eth0), DecapReason::AcceptedSocket);
        expect_decap(&ebpf, "ACK with a valid SYN cookie", &frame(&cookie_ack), &cookie_ack, Some(eth0), DecapReason::AcceptedSyncookie);
        expect_decap(&ebpf, "ACK with a wrong SYN cookie", &frame(&wrong_cookie), &[], Some(eth0), DecapReason::Redirected);
        Ok(())
    })
    .unwrap();
    drop(listener);
}

#[test]
fn malformed_gue_is_dropped_and_counted_and_other_udp_passes() {
    if !is_root() {
        return;
    }
    let Loaded { ebpf, .. } = load();
    let b1 = IpAddr::V4(B1_V4);
    let mac = [0x02, 0, 0, 0, 0, 0x11];
    let inner = tcp_packet(IpAddr::V4(CLIENT_V4), IpAddr::V4(VIP_V4), 47_000, 80, TCP_SYN, 1, 0);
    let inner6 = tcp_packet(IpAddr::V6(CLIENT_V6), IpAddr::V6(VIP_V6), 47_000, 80, TCP_SYN, 1, 0);
    let good = gue_header(true, Some((IpAddr::V4(PREVIOUS_V4), 0)));
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut h = good.clone();
        f(&mut h);
        h
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("version 1", gue_frame(b1, mac, &with(&|h| h[0] |= 0x40), &inner)),
        ("control bit", gue_frame(b1, mac, &with(&|h| h[0] |= 0x20), &inner)),
        ("flags set", gue_frame(b1, mac, &with(&|h| h[2] = 0x80), &inner)),
        ("inner protocol UDP", gue_frame(b1, mac, &with(&|h| h[1] = PROTO_UDP), &inner)),
        ("unknown private kind", gue_frame(b1, mac, &with(&|h| h[4] = b'X'), &inner)),
        ("Hlen beyond the packet", gue_frame(b1, mac, &good[..12], &[])),
        ("inner version not the announced one", gue_frame(b1, mac, &good, &inner6)),
        ("inner version, no block", gue_frame(b1, mac, &gue_header(false, None), &inner)),
        ("no GUE header", gue_frame(b1, mac, &[], &[])),
    ];
    for (name, input) in &cases {
        expect_decap(&ebpf, name, input, &[], None, DecapReason::GueMalformed);
    }
    // Our block, but a count that does not fit: dropped with its own counter.
    let prev2 = [IpAddr::V4(PREVIOUS_V4), IpAddr::V4(B1_V4)];
    let three = gue_chain(true, &[prev2[0], prev2[1], prev2[0]], 0);
    let bad_counts: Vec<(&str, Vec<u8>)> = vec![
        ("Hlen not a whole block", gue_frame(b1, mac, &with(&|h| h[0] = 3), &inner)),
        ("count 0", gue_frame(b1, mac, &with(&|h| h[7] = 0), &inner)),
        ("count 2 in the Hlen of 1", gue_frame(b1, mac, &with(&|h| h[7] = 2), &inner)),
        ("count 1 in the Hlen of 2", gue_frame(b1, mac, &{ let mut h = gue_chain(true, &prev2, 0); h[7] = 1; h }, &inner)),
        ("count beyond MAX_PREVIOUS_OWNERS", gue_frame(b1, mac, &three, &inner)),
    ];
    for (name, input) in &bad_counts {
        expect_decap(&ebpf, name, input, &[], None, DecapReason::SecondChanceBadCount);
    }
    // Sent on more often than it names previous owners: dropped, counted.
    for (name, header) in [("hops 2 of 1", gue_chain(true, &prev2[..1], 2)), ("hops 3 of 2", gue_chain(true, &prev2, 3))] {
        expect_decap(&ebpf, name, &gue_frame(b1, mac, &header, &inner), &[], None, DecapReason::SecondChanceHopsBeyondCount);
    }
    // UDP to another port is not ours, GUE port or not: untouched.
    let dns = bytes!(PacketBuilder::ethernet2(LB_MAC, mac).ipv4(TUNNEL_V4.octets(), B1_V4.octets(), 64).udp(0xc123, 53), &good);
    let (action, out) = decap(&ebpf, &dns, None);
    assert_eq!((action, decap_count(&ebpf, DecapReason::NotTunnel)), (Action::Pass as u32, 1), "UDP to another port: not_tunnel");
    assert_eq!(out, dns, "untouched");
    // And a well-formed one passes the same checks (the cases above differ from it in one field each).
    expect_decap(&ebpf, "well-formed", &gue_frame(b1, mac, &good, &inner), &inner, None, DecapReason::AcceptedSyn);
}

#[test]
fn balancer_output_decapsulates_to_the_clients_packet() {
    if !is_root() {
        return;
    }
    let mut loaded = load();
    let before = reload_without_leaving(&mut loaded);
    // (VIP, client, VIP address, the backend the reload removed from it):
    // a flow of that backend has it as its previous owner, of its family.
    // sc-mixed keeps its backends (one per family): no previous owner.
    for (vip, client, vip_addr, leaving) in [
        ("sc4", IpAddr::V4(CLIENT_V4), IpAddr::V4(VIP_V4), Some(LEAVING_SC4)),
        ("sc6", IpAddr::V6(CLIENT_V6), IpAddr::V6(VIP_V6), Some(LEAVING_SC6)),
        ("sc-mixed", IpAddr::V4(CLIENT_V4), IpAddr::V4(MIXED_VIP), None),
    ] {
        let sport = leaving.map_or(48_000, |gone| port_owned_by(&before, vip, client, 80, gone, 48_000));
        let input = tcp_frame(client, vip_addr, sport, 80, true, b"hello");
        let (_, out) = balance(&loaded.ebpf, &input);
        let expected_block = leaving.map(|gone| {
            let addr: IpAddr = gone.parse().unwrap();
            (SECOND_CHANCE_KIND, 0, 1, vec![addr])
        });
        assert_eq!(parse_gue(&out).block, expected_block, "{vip}: the block names the previous owner");
        let reason = if leaving.is_some() { DecapReason::AcceptedSyn } else { DecapReason::Decapsulated };
        expect_decap(&loaded.ebpf, vip, &out, &input[14..], None, reason);
    }
}
