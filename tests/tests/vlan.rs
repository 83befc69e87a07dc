//! VLAN-tagged clients through the namespace topology (issue 11, finding 10).
//!
//! This kernel has no 802.1Q devices (`CONFIG_VLAN_8021Q` is off), so the
//! client sends tagged frames with an AF_PACKET socket, and what the backends'
//! wires carry is captured on their bridge ports. The bridge ports have TX
//! VLAN offload off (see `topology`), so tags travel inside frames as on a
//! wire, and the agent turns VLAN receive offload off on the LB's interface.
//!
//! - The agent says it turned `rxvlan` off, and it is off (also at a restart
//!   that adopts the pinned balancer after it was turned on again).
//! - An 802.1Q frame to a VIP reaches its backend as a tunnel packet with the
//!   same tag and the client's IP packet unchanged inside; with a priority tag
//!   (VLAN 0, which a stack without VLAN devices accepts) the request is
//!   answered end to end.
//! - A QinQ frame (802.1ad outer tag) is not the one-tag frame the balancer
//!   forwards: it reaches the LB's stack byte for byte, never a backend with
//!   a tag lost.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use etherparse::PacketBuilder;
use lb_tests::agent;
use lb_tests::capture::{Captured, PacketSocket, in_namespace};
use lb_tests::lab::Lab;
use lb_tests::packets::{TPID_CTAG, TPID_STAG, ip_packet, l2_split, with_vlan_tags};
use lb_tests::topology::{self, CLIENT, CLIENT_V4, IFACE, LB, LB_V4, SWITCH, Topology, VIP_V4};

const BACKENDS: usize = 2;
/// (TPID, TCI) of one tag.
type VlanTag = (u16, u16);
const DNS_PORT: u16 = 53;
const QUIET: Duration = Duration::from_millis(300);
const CAPTURE_LIMIT: Duration = Duration::from_secs(3);

fn start_lab() -> Lab {
    let bins = lb_tests::lab_bins!();
    Lab::start(bins, BACKENDS, agent::e2e_config(BACKENDS), &|m| eprintln!("[vlan] {m}")).unwrap_or_else(|e| panic!("starting the lab: {e:#}"))
}

fn mac_of(topo: &Topology, host: &str) -> [u8; 6] {
    let text = topo.exec_ok(host, "cat", &[&format!("/sys/class/net/{IFACE}/address")]).unwrap();
    let bytes: Vec<u8> = text.trim().split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

/// A UDP datagram from the client to the VIP's DNS port, untagged.
fn udp_to_vip(client_mac: [u8; 6], lb_mac: [u8; 6], src_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(client_mac, lb_mac)
        .ipv4(CLIENT_V4.octets(), VIP_V4.octets(), 64)
        .udp(src_port, DNS_PORT)
        .write(&mut frame, payload)
        .unwrap();
    frame
}

/// Tunnel packets (IPIP from the LB's address) among frames sent to the backends.
fn tunnels(captured: &[Captured]) -> Vec<&Captured> {
    captured
        .iter()
        .filter(|c| c.outgoing())
        .filter(|c| {
            let Some((_, ty, at)) = l2_split(&c.frame) else { return false };
            ty == 0x0800 && c.frame.len() >= at + 20 && c.frame[at + 9] == 4 && c.frame[at + 12..at + 16] == LB_V4.octets()
        })
        .collect()
}

/// The client's own UDP socket on `port` (replies come straight from a backend).
fn client_udp(topo: &Topology, port: u16) -> UdpSocket {
    let sock = in_namespace(topo.ns_name(CLIENT), move || Ok(UdpSocket::bind(SocketAddr::from((CLIENT_V4, port)))?)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock
}

#[test]
fn tagged_clients_keep_their_tag_through_the_balancer() {
    if !topology::is_root() {
        eprintln!("SKIPPED: namespace tests need root; run them with `cargo xtask test vlan`");
        return;
    }
    let mut lab = start_lab();

    // The agent's decision, visible in its log and on the interface: at the
    // first start (a veth starts with rxvlan on), and at a restart that
    // adopts the pinned balancer after someone turned it on again.
    for start in ["first start", "restart after `ethtool -K eth0 rxvlan on`"] {
        if start != "first start" {
            lab.topo.exec_ok(LB, "ethtool", &["-K", IFACE, "rxvlan", "on"]).unwrap();
            lab.kill_agent().unwrap();
            lab.restart_agent().unwrap();
        }
        let log = std::fs::read_to_string(lab.agent.log_path()).unwrap();
        assert!(
            log.contains("turned VLAN receive offload off on eth0"),
            "{start}: the agent did not say it turned rxvlan off on eth0; log {}:\n{}",
            lab.agent.log_path().display(),
            lab.agent.log_tail(30)
        );
        assert!(log.contains("eth0 is a veth"), "{start}: the agent did not explain what a veth's peer needs:\n{}", lab.agent.log_tail(30));
        let features = lab.topo.exec_ok(LB, "ethtool", &["-k", IFACE]).unwrap();
        assert!(features.contains("rx-vlan-offload: off"), "{start}: rxvlan is still on after the agent started:\n{features}");
    }
    let topo = &lab.topo;

    let (client_mac, lb_mac) = (mac_of(topo, CLIENT), mac_of(topo, LB));
    let sender = PacketSocket::open(topo, CLIENT, IFACE).unwrap();
    let wires: Vec<(String, PacketSocket)> = topo
        .backends()
        .iter()
        .map(|b| (b.clone(), PacketSocket::open(topo, SWITCH, &format!("v-{b}")).unwrap()))
        .collect();
    let lb_stack = PacketSocket::open(topo, LB, IFACE).unwrap();

    let cases: [(&str, &[VlanTag], u16); 3] = [
        ("priority tag (VLAN 0)", &[(TPID_CTAG, 5 << 13)], 41_000),
        ("VLAN 100", &[(TPID_CTAG, 100)], 41_001),
        ("QinQ 200/100", &[(TPID_STAG, 200), (TPID_CTAG, 100)], 41_002),
    ];
    for (name, tags, src_port) in cases {
        let reply_socket = client_udp(topo, src_port);
        let payload = format!("vlan test: {name}");
        let frame = with_vlan_tags(&udp_to_vip(client_mac, lb_mac, src_port, payload.as_bytes()), tags);
        sender.send(&frame).unwrap();

        let mut seen = Vec::new();
        for (backend, wire) in &wires {
            for t in tunnels(&wire.collect(QUIET, CAPTURE_LIMIT).unwrap()) {
                seen.push((backend.clone(), t.frame.clone()));
            }
        }
        let passed: Vec<Captured> = lb_stack.collect(QUIET, CAPTURE_LIMIT).unwrap().into_iter().filter(|c| !c.outgoing()).collect();
        let sent_ip = {
            let (_, _, at) = l2_split(&frame).unwrap();
            ip_packet(&frame[at..]).unwrap().to_vec()
        };

        if tags.len() == 2 {
            assert!(seen.is_empty(), "{name}: the balancer forwards only single-tagged frames, yet a backend got {seen:02x?}");
            assert!(
                passed.iter().any(|c| c.frame == frame),
                "{name}: the frame did not reach the LB's stack unchanged; the stack saw {:02x?}",
                passed.iter().map(|c| &c.frame).collect::<Vec<_>>()
            );
            continue;
        }
        assert_eq!(seen.len(), 1, "{name}: expected one tunnel packet on the backends' wires, saw {seen:02x?}");
        let (backend, tunnel) = &seen[0];
        let (tunnel_tags, _, outer_at) = l2_split(tunnel).unwrap();
        let sent_tags: Vec<[u8; 4]> = l2_split(&frame).unwrap().0;
        assert_eq!(tunnel_tags, sent_tags, "{name}: the tunnel packet to {backend} does not carry the client's tag");
        let inner = ip_packet(&tunnel[outer_at + 20..]).expect("a whole inner packet");
        assert_eq!(inner, &sent_ip[..], "{name}: the inner packet differs from what the client sent");

        if tags[0].1 & 0x0fff == 0 {
            // VLAN 0: the backend's stack takes it; its answer comes straight back.
            let mut buf = [0u8; 512];
            let (n, from) = reply_socket
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("{name}: no answer from the backend ({e}); the request went to {backend}"));
            let answer = String::from_utf8_lossy(&buf[..n]);
            assert_eq!(from, SocketAddr::from((VIP_V4, DNS_PORT)), "{name}: answer from {from}, not the VIP");
            assert!(
                answer.contains(&format!("backend={backend}")) && answer.contains(&format!("client={CLIENT_V4}:{src_port}")),
                "{name}: answer {answer:?} is not from {backend} for {CLIENT_V4}:{src_port}"
            );
        }
    }
    lab.check_running().unwrap();
}
