//! Fuzzing the balancer through BPF_PROG_TEST_RUN: a seeded generator builds
//! packets from templates (TCP/UDP/ICMP to VIPs and to other addresses,
//! fragments, extension headers, VLAN, ARP, garbage) and mutates them
//! (truncations, bit flips, lying length fields, random protocols and
//! EtherTypes, TTL 0/1, group MACs), and every result is checked against the
//! invariants of README.md "What happens to every packet":
//!
//! - the action is PASS, DROP or TX, never ABORTED;
//! - a packet not addressed to a VIP address passes unchanged;
//! - a packet that is not transmitted is unchanged unless dropped;
//! - every TX output is a well-formed tunnel packet (valid IPv4 checksum,
//!   consistent lengths, outer destination a configured backend, never larger
//!   than the MTU) or a well-formed ICMP answer from a VIP address;
//! - the per-reason counters add up to the number of packets.
//!
//! `LB_FUZZ_PACKETS` (default 100000) and `LB_FUZZ_SEED` change the run.
//! Needs root (loading BPF programs); skips with a message otherwise.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use aya::Ebpf;
use etherparse::{IpNumber, PacketBuilder, VlanId};
use lb_agent::dataplane;
use lb_tests::bpf::{self, Loaded, Overrides};
use lb_tests::configs::{self, TestVip, BACKENDS_V4};
use lb_tests::packets::{Rng, icmp, inet_checksum};
use lb_common::{programs, Action};

const DEFAULT_PACKETS: u64 = 100_000;
const DEFAULT_SEED: u64 = 0x5eed_f022;
const MTU: u32 = 1500;
const L2: usize = 14;
const L2_VLAN: usize = 18;
/// Largest input: a full-size frame plus some room for appended garbage.
const MAX_INPUT: usize = 1_600;
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_V4: [u8; 4] = [198, 51, 100, 10];
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const TUNNEL_V4: [u8; 4] = configs::TUNNEL_V4.octets();
const TUNNEL_V6: Ipv6Addr = configs::TUNNEL_V6;
const VIP_V4: [[u8; 4]; 3] = [[192, 0, 2, 10], [192, 0, 2, 20], [192, 0, 2, 30]];
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10);
const OTHER_V4: [u8; 4] = [203, 0, 113, 7];

/// Four VIPs: TCP on two backends, any UDP port with source hash and
/// forwarded fragments, IPv4 to an IPv6 backend, IPv6 to both families;
/// `policy` adds `[lb]` packet policies.
fn config(policy: &[(&str, &str)]) -> String {
    let c = configs::unattached("fuzz0").ring_size(251).max_vips(8).max_backends(16);
    policy
        .iter()
        .fold(c, |c, (key, value)| c.lb(key, *value))
        .vip(TestVip::new("web", "192.0.2.10:80").backends(&BACKENDS_V4[..2]))
        .vip(TestVip::new("udp-any", "192.0.2.20:0/udp").set("fragments", "forward").set("hash", "source").backends(["198.51.100.13"]))
        .vip(TestVip::new("to-v6", "192.0.2.30:80").backends(["2001:db8::21"]))
        .vip(TestVip::new("web6", "[2001:db8:f::10]:80").backends(["2001:db8::11", "198.51.100.12"]))
        .static_macs()
        .to_toml()
}

/// Flow table entries of the fuzz target.
const FUZZ_FLOW_TABLE: u32 = 65_536;

struct Target {
    ebpf: Ebpf,
    backends: BTreeSet<IpAddr>,
    runs: u64,
}

impl Target {
    fn load(policy: &[(&str, &str)]) -> Self {
        let text = config(policy);
        // Random flows: the LRU evicts the oldest once full.
        let overrides = Overrides { mtu: MTU, flow_table_size: Some(FUZZ_FLOW_TABLE), ..Overrides::default() };
        let Loaded { ebpf, plan, .. } = bpf::load(&text, "fuzz.toml", &[programs::BALANCER], overrides).expect("load the fuzz object");
        let backends = plan.backends.iter().map(|b| b.address).collect();
        Target { ebpf, backends, runs: 0 }
    }

    fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let (action, out, _) = bpf::run(&self.ebpf, programs::BALANCER, input).expect("BPF_PROG_TEST_RUN");
        self.runs += 1;
        (action, out)
    }

    fn counted(&self) -> u64 {
        dataplane::read_counters(&self.ebpf).unwrap().reasons.iter().map(|c| c.packets).sum()
    }
}

// ---------------------------------------------------------------- generation

fn vip4(rng: &mut Rng) -> [u8; 4] {
    VIP_V4[rng.below(VIP_V4.len())]
}

fn dst4(rng: &mut Rng) -> [u8; 4] {
    if rng.chance(75) { vip4(rng) } else { OTHER_V4 }
}

fn dst6(rng: &mut Rng) -> Ipv6Addr {
    if rng.chance(75) { VIP_V6 } else { TUNNEL_V6 }
}

fn port(rng: &mut Rng) -> u16 {
    if rng.chance(70) { 80 } else { rng.next_u64() as u16 }
}

fn payload(rng: &mut Rng) -> Vec<u8> {
    // Mostly small, sometimes around the MTU limit.
    let len = if rng.chance(20) { 1_380 + rng.below(120) } else { rng.below(64) };
    rng.bytes(len)
}

fn template(rng: &mut Rng) -> Vec<u8> {
    let mut v = Vec::new();
    let eth = || PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let c6 = CLIENT_V6.octets();
    match rng.below(12) {
        0 => eth().ipv4(CLIENT_V4, dst4(rng), 64).tcp(rng.next_u64() as u16, port(rng), 1, 100).write(&mut v, &payload(rng)).unwrap(),
        1 => eth().ipv4(CLIENT_V4, dst4(rng), 64).udp(rng.next_u64() as u16, port(rng)).write(&mut v, &payload(rng)).unwrap(),
        2 => eth().ipv6(c6, dst6(rng).octets(), 64).tcp(rng.next_u64() as u16, port(rng), 1, 100).write(&mut v, &payload(rng)).unwrap(),
        3 => eth().ipv6(c6, dst6(rng).octets(), 64).udp(rng.next_u64() as u16, port(rng)).write(&mut v, &payload(rng)).unwrap(),
        4 => {
            let ty = if rng.chance(80) { 8 } else { rng.byte() };
            eth().ipv4(CLIENT_V4, dst4(rng), 64).write(&mut v, IpNumber(1), &icmp(ty, 0, &payload(rng))).unwrap()
        }
        5 => {
            // An error about a backend's reply VIP:80 -> client.
            let vip = vip4(rng);
            let mut quoted = Vec::new();
            PacketBuilder::ipv4(vip, CLIENT_V4, 64).tcp(80, rng.next_u64() as u16, 1, 1).write(&mut quoted, &[]).unwrap();
            quoted.truncate(20 + rng.below(21));
            let ty = [3, 11, 12][rng.below(3)];
            eth().ipv4([198, 51, 100, 1], if rng.chance(80) { vip } else { OTHER_V4 }, 64).write(&mut v, IpNumber(1), &icmp(ty, 4, &quoted)).unwrap()
        }
        6 => {
            let mut quoted = Vec::new();
            PacketBuilder::ipv6(VIP_V6.octets(), c6, 64).tcp(80, rng.next_u64() as u16, 1, 1).write(&mut quoted, &payload(rng)).unwrap();
            let ty = [1, 2, 3, 128, 129][rng.below(5)];
            let mut m = icmp(ty, 0, &quoted);
            m[2..4].copy_from_slice(&[0, 0]); // ICMPv6 checksum covers a pseudo-header; the balancer never checks it
            eth().ipv6(TUNNEL_V6.octets(), dst6(rng).octets(), 64).write(&mut v, IpNumber(58), &m).unwrap()
        }
        7 => {
            // IPv4 fragment (first or later).
            eth().ipv4(CLIENT_V4, dst4(rng), 64).udp(rng.next_u64() as u16, 53).write(&mut v, &payload(rng)).unwrap();
            let frags: u16 = if rng.chance(50) { 0x2000 } else { rng.next_u64() as u16 & 0x3fff };
            v[L2 + 6..L2 + 8].copy_from_slice(&frags.to_be_bytes());
        }
        8 => {
            // IPv6 with 0..6 extension headers (some fragment headers).
            let n = rng.below(7);
            let mut body = Vec::new();
            let kinds: Vec<u8> = (0..n).map(|_| [0, 43, 60, 44][rng.below(4)]).collect();
            for i in 0..n {
                let next = kinds.get(i + 1).copied().unwrap_or(if rng.chance(80) { 6 } else { 17 });
                body.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
            }
            body.extend_from_slice(&[0x9c, 0x40, 0, 80]);
            let n = 16 + rng.below(32);
            body.extend_from_slice(&rng.bytes(n));
            eth().ipv6(c6, dst6(rng).octets(), 64).write(&mut v, IpNumber(59), &body).unwrap();
            v[L2 + 6] = kinds.first().copied().unwrap_or(6);
        }
        9 => eth()
            .single_vlan(VlanId::try_new(rng.below(4000) as u16 + 1).unwrap())
            .ipv4(CLIENT_V4, dst4(rng), 64)
            .tcp(rng.next_u64() as u16, port(rng), 1, 100)
            .write(&mut v, &payload(rng))
            .unwrap(),
        10 => {
            // ARP / LLDP / unknown EtherType.
            v.extend_from_slice(&[0xff; 6]);
            v.extend_from_slice(&CLIENT_MAC);
            v.extend_from_slice(&[[0x08, 0x06], [0x88, 0xcc], [0x12, 0x34]][rng.below(3)]);
            let n = 28 + rng.below(40);
            v.extend_from_slice(&rng.bytes(n));
        }
        _ => {
            v.extend_from_slice(&LB_MAC);
            v.extend_from_slice(&CLIENT_MAC);
            v.extend_from_slice(&[[0x08, 0x00], [0x86, 0xdd], [0x81, 0x00]][rng.below(3)]);
            let n = rng.below(200);
            v.extend_from_slice(&rng.bytes(n));
        }
    }
    v
}

/// Where the IP header starts, per EtherType (one VLAN tag), if IP.
fn ip_offset(p: &[u8]) -> Option<(usize, u8)> {
    let (l2, ether_type) = match u16::from_be_bytes([p[12], p[13]]) {
        0x8100 if p.len() >= L2_VLAN => (L2_VLAN, u16::from_be_bytes([p[16], p[17]])),
        0x8100 => return None,
        t => (L2, t),
    };
    match ether_type {
        0x0800 => Some((l2, 4)),
        0x86dd => Some((l2, 6)),
        _ => None,
    }
}

fn mutate(rng: &mut Rng, mut p: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.below(4) {
        let ip = ip_offset(&p).map(|(o, _)| o).unwrap_or(L2);
        let at = |rng: &mut Rng, p: &Vec<u8>| rng.below(p.len().max(1));
        match rng.below(9) {
            0 => {
                let len = L2 + rng.below(p.len().saturating_sub(L2) + 1);
                p.truncate(len);
            }
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let i = at(rng, &p);
                    p[i] ^= 1 << rng.below(8);
                }
            }
            2 if p.len() > ip + 6 => {
                // IPv4 total length / IPv6 payload length (offsets 2 and 4) lie.
                let off = ip + if p[ip] >> 4 == 6 { 4 } else { 2 };
                let v = rng.next_u64() as u16;
                p[off..off + 2].copy_from_slice(&v.to_be_bytes());
            }
            3 if p.len() > ip => p[ip] = (p[ip] & 0xf0) | rng.below(16) as u8,
            4 if p.len() > ip + 9 => {
                let off = ip + if p[ip] >> 4 == 6 { 6 } else { 9 };
                p[off] = [1, 4, 6, 17, 41, 44, 47, 58, 0, 60, rng.byte()][rng.below(11)];
            }
            5 => {
                let t = [[0x08, 0x00], [0x86, 0xdd], [0x81, 0x00], [0x08, 0x06], [rng.byte(), rng.byte()]][rng.below(5)];
                p[12..14].copy_from_slice(&t);
            }
            6 if p.len() < MAX_INPUT => {
                let n = rng.below(MAX_INPUT - p.len()).min(64);
                p.extend(rng.bytes(n));
            }
            7 if p.len() > ip + 8 => {
                let off = ip + if p[ip] >> 4 == 6 { 7 } else { 8 };
                p[off] = rng.below(3) as u8; // TTL / hop limit 0, 1, 2
            }
            8 => p[0] |= 1, // group MAC
            _ => {}
        }
    }
    p
}

// ---------------------------------------------------------------- invariants

fn destination(p: &[u8]) -> Option<IpAddr> {
    let (ip, version) = ip_offset(p)?;
    match version {
        4 if p.len() >= ip + 20 => Some(IpAddr::V4(Ipv4Addr::new(p[ip + 16], p[ip + 17], p[ip + 18], p[ip + 19]))),
        6 if p.len() >= ip + 40 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[ip + 24..ip + 40]).unwrap()))),
        _ => None,
    }
}

fn is_vip_address(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => VIP_V4.contains(&v4.octets()),
        IpAddr::V6(v6) => v6 == VIP_V6,
    }
}

/// Length of the IP packet at `p` according to its header.
fn ip_len(p: &[u8]) -> Option<usize> {
    match p.first()? >> 4 {
        4 => Some(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]) as usize),
        6 => Some(40 + u16::from_be_bytes([*p.get(4)?, *p.get(5)?]) as usize),
        _ => None,
    }
}

/// Checks a TX output; returns what it is, for the summary.
fn check_tx(t: &Target, input: &[u8], out: &[u8]) -> Result<&'static str, String> {
    let (l2, version) = ip_offset(out).ok_or("TX output is not IP")?;
    let ip = &out[l2..];
    if version == 4 {
        if ip.len() < 20 || ip[0] != 0x45 {
            return Err("outer IPv4 header has options or is short".into());
        }
        if inet_checksum(&ip[..20]) != 0 {
            return Err("outer IPv4 checksum".into());
        }
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        if total > ip.len() || total > MTU as usize {
            return Err(format!("IPv4 total length {total} vs frame {} / MTU", ip.len()));
        }
        let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
        match ip[9] {
            4 | 41 => {
                if ip[12..16] != TUNNEL_V4 || !t.backends.contains(&dst) {
                    return Err(format!("tunnel to {dst}, not a backend, or wrong source"));
                }
                let inner = &ip[20..];
                if ip_len(inner) != Some(total - 20) {
                    return Err(format!("outer length {total} but inner {:?}", ip_len(inner)));
                }
                Ok("tunnel")
            }
            1 => {
                let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
                if !is_vip_address(src) {
                    return Err(format!("ICMP answer from {src}, not a VIP"));
                }
                match ip.get(20) {
                    Some(0) => Ok("echo reply"),
                    Some(3) if inet_checksum(&ip[20..total]) == 0 && ip[21] == 4 => Ok("frag needed"),
                    other => Err(format!("ICMP answer type {other:?} or bad checksum")),
                }
            }
            other => Err(format!("TX IPv4 protocol {other}")),
        }
    } else {
        if ip.len() < 40 {
            return Err("outer IPv6 header short".into());
        }
        let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
        if 40 + payload > ip.len() || 40 + payload > MTU as usize {
            return Err(format!("IPv6 payload length {payload} vs frame {} / MTU", ip.len()));
        }
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
        let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap()));
        match ip[6] {
            4 | 41 => {
                if src != TUNNEL_V6 || !t.backends.contains(&dst) {
                    return Err(format!("tunnel to {dst}, not a backend, or wrong source"));
                }
                if ip_len(&ip[40..]) != Some(payload) {
                    return Err("outer payload length does not match the inner packet".into());
                }
                Ok("tunnel")
            }
            _ if src == VIP_V6 => {
                // Echo replies keep the request's extension headers; too-big answers have none.
                if ip[6] == 58 && ip[40] == 2 && ip.len() != 40 + 8 + 128 {
                    return Err("packet-too-big of the wrong size".into());
                }
                let _ = input;
                Ok("icmpv6 answer")
            }
            other => Err(format!("TX IPv6 next header {other} from {src}")),
        }
    }
}

fn packets() -> u64 {
    std::env::var("LB_FUZZ_PACKETS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_PACKETS)
}

#[test]
fn fuzzed_packets_keep_the_invariants() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: fuzzing loads BPF programs and needs root");
        return;
    }
    let seed = std::env::var("LB_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SEED);
    let total = packets();
    let mut rng = Rng(seed);
    // Defaults, and every policy switched the other way.
    let mut targets = [
        Target::load(&[]),
        Target::load(&[("icmp_echo", "pass"), ("too_big", "drop"), ("unknown_port", "drop")]),
    ];
    let started = Instant::now();
    let mut seen = std::collections::BTreeMap::<(&str, u32), u64>::new();
    for n in 0..total {
        let t = &mut targets[(n % 5 == 4) as usize];
        let mut input = template(&mut rng);
        if rng.chance(70) {
            input = mutate(&mut rng, input);
        }
        input.truncate(MAX_INPUT);
        let (action, out) = t.run(&input);
        let fail = |why: String| -> ! {
            panic!("seed {seed} packet {n}: {why}\ninput  {input:02x?}\noutput {out:02x?}")
        };
        let kind = match action {
            a if a == Action::Pass as u32 => {
                if out != input {
                    fail("PASS modified the packet".into());
                }
                "pass"
            }
            a if a == Action::Drop as u32 => "drop",
            a if a == Action::Tx as u32 => check_tx(t, &input, &out).unwrap_or_else(|e| fail(e)),
            other => fail(format!("action {other} (only PASS, DROP, TX allowed)")),
        };
        let for_vip = destination(&input).is_some_and(is_vip_address) && input[0] & 1 == 0;
        if !for_vip && action != Action::Pass as u32 {
            fail(format!("not addressed to a VIP address, yet {kind}"));
        }
        *seen.entry((kind, for_vip as u32)).or_default() += 1;
    }
    let elapsed = started.elapsed();
    for t in &targets {
        assert_eq!(t.counted(), t.runs, "per-reason counters add up to the packets run");
    }
    eprintln!("fuzz: {total} packets, seed {seed}, {elapsed:.2?}; (outcome, for a VIP address): {seen:?}");
    assert!(seen.keys().any(|(k, _)| *k == "tunnel"), "the generator reaches forwarding");
    assert!(seen.keys().any(|(k, _)| *k == "frag needed"), "the generator reaches the too-big answer");
    assert!(seen.keys().any(|(k, _)| *k == "echo reply"), "the generator reaches echo replies");
}
