//! The decap program's second-chance paths, per packet: a SYN accepted, a
//! packet of a connection the backend has a socket for (the socket lookup),
//! an unknown ACK redirected to the previous owner (socket lookup, SYN-cookie
//! check, FIB lookup, outer header rewritten), and that packet accepted at
//! the previous owner. They run in a backend namespace of a one-backend test
//! topology, where the sockets and routes these lookups see exist: a real
//! TCP connection to the VIP, forwarding on (`bpf_fib_lookup` needs it) and
//! neighbour entries for the other backends. Inputs are the balancer's own
//! GUE packets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use etherparse::PacketBuilder;
use lb_common::{programs, Action, DecapReason};
use lb_tests::{
    bpf, netns, sock,
    topology::{self, Topology, TopologyOptions},
};

use crate::{median_ns, set_previous_owner, write, Expect, Flows, PacketCase, CLIENT_MAC, CLIENT_V4, LB_MAC, VIP_V4};

/// The "backend" VIP whose flows get a previous owner.
const PORT: u16 = 84;
/// The topology's only backend: the bench config's first backend.
const B1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
/// The bench config's other backends and their static MACs: the previous
/// owners a redirect goes to.
const OTHERS: [(Ipv4Addr, &str); 2] = [(Ipv4Addr::new(198, 51, 100, 12), "02:00:00:00:00:12"), (Ipv4Addr::new(198, 51, 100, 13), "02:00:00:00:00:13")];

fn ack(src: IpAddr, sport: u16) -> Vec<u8> {
    let IpAddr::V4(src) = src else { unreachable!("IPv4 clients only") };
    write(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv4(src.octets(), VIP_V4.octets(), 64).tcp(sport, PORT, 2, 65535).ack(1).write_to_vec(v, &[]).unwrap()
    })
}

fn syn(src: IpAddr, sport: u16) -> Vec<u8> {
    let IpAddr::V4(src) = src else { unreachable!("IPv4 clients only") };
    write(|v| PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv4(src.octets(), VIP_V4.octets(), 64).tcp(sport, PORT, 1, 65535).syn().write_to_vec(v, &[]).unwrap())
}

/// A source port from `from` on whose flow to the VIP the ring gives to b1
/// (the backend these runs play), so the balancer's packet is addressed to it.
fn port_owned_by_b1(loaded: &bpf::Loaded, src: IpAddr, from: u16) -> Result<u16> {
    let plan = &loaded.plan;
    let vip = lb_agent::plan::find_vip(plan, VIP_V4.into(), PORT, lb_common::PROTO_TCP).context("no bench VIP on that port")?;
    let b1 = plan.backend_id(B1.into()).context("b1 is not in the bench config")?;
    (from..from + 1000).find(|p| lb_agent::plan::lookup(plan, vip, src, *p, PORT) == b1).context("no port of 1000 hashes to b1")
}

/// (path, median ns) of each decap path.
pub(crate) fn measure(runs: usize) -> Result<Vec<(&'static str, f64)>> {
    let topo = Topology::build(TopologyOptions { backends: 1, ..TopologyOptions::default() })?;
    let b1 = topology::backend_name(1);
    topo.exec_ok(&b1, "sh", &["-c", "echo 1 > /proc/sys/net/ipv4/conf/all/forwarding"])?;
    for (addr, mac) in OTHERS {
        topo.exec_ok(&b1, "ip", &["neigh", "replace", &addr.to_string(), "lladdr", mac, "dev", topology::IFACE, "nud", "permanent"])?;
    }
    let ns = topo.ns_name(&b1).to_string();
    let out = netns::run_in(&ns, move || measure_here(runs));
    drop(topo);
    out
}

/// [`measure`], on a thread inside the backend's namespace.
fn measure_here(runs: usize) -> Result<Vec<(&'static str, f64)>> {
    let mut loaded = crate::load_with_plan()?;
    let ifname = std::ffi::CString::new(topology::IFACE)?;
    // SAFETY: a NUL-terminated interface name.
    let eth0 = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    ensure!(eth0 != 0, "no {} in the backend namespace", topology::IFACE);

    // A real connection on the VIP (the VIP is on lo here, so the client
    // is this namespace too): its packets find the established socket.
    let vip: IpAddr = VIP_V4.into();
    let listener = TcpListener::bind((VIP_V4, PORT))?;
    let known_port = port_owned_by_b1(&loaded, vip, 30_000)?;
    let client = sock::tcp_connect(SocketAddr::new(vip, PORT), Some(known_port), Duration::from_secs(2))?;
    let (server, _) = listener.accept()?;
    // An unknown connection from the client: only the listener answers.
    let client_v4: IpAddr = Ipv4Addr::from(CLIENT_V4).into();
    let unknown_port = port_owned_by_b1(&loaded, client_v4, 40_001)?;
    set_previous_owner(&mut loaded, vip, known_port, PORT)?;
    set_previous_owner(&mut loaded, client_v4, unknown_port, PORT)?;
    let ebpf = loaded.ebpf;

    let encapsulate = |inner: &[u8]| -> Result<Vec<u8>> {
        let (action, out, _) = bpf::run(&ebpf, programs::BALANCER, inner)?;
        ensure!(action == Action::Tx as u32, "the balancer did not forward the bench packet");
        Ok(out)
    };
    let (syn_in, known_in, unknown_in) = (syn(client_v4, unknown_port), ack(vip, known_port), ack(client_v4, unknown_port));
    let (syn_gue, known_gue, unknown_gue) = (encapsulate(&syn_in)?, encapsulate(&known_in)?, encapsulate(&unknown_in)?);
    let (action, redirected, _) = bpf::run_from(&ebpf, programs::DECAP, &unknown_gue, Some(eth0))?;
    ensure!(action == Action::Tx as u32, "the unknown ACK was not redirected (action {action}): forwarding or neighbours missing?");

    let cases = [
        (PacketCase { name: "decap gue, syn accepted", flows: Flows::Any, program: programs::DECAP, input: syn_gue, ingress: Some(eth0), expect: Expect::PassWithLen(syn_in.len()) }, DecapReason::AcceptedSyn),
        (
            PacketCase { name: "decap gue, established (socket lookup)", flows: Flows::Any, program: programs::DECAP, input: known_gue, ingress: Some(eth0), expect: Expect::PassWithLen(known_in.len()) },
            DecapReason::AcceptedSocket,
        ),
        (
            PacketCase { name: "decap gue, unknown ack redirected", flows: Flows::Any, program: programs::DECAP, input: unknown_gue, ingress: Some(eth0), expect: Expect::Tx { grows_by: 0 } },
            DecapReason::Redirected,
        ),
        (
            PacketCase { name: "decap gue, redirected ack accepted", flows: Flows::Any, program: programs::DECAP, input: redirected, ingress: Some(eth0), expect: Expect::PassWithLen(unknown_in.len()) },
            DecapReason::AcceptedRedirected,
        ),
    ];
    let count = |r: DecapReason| -> Result<u64> { Ok(lb_agent::dataplane::read_counters(&ebpf)?.decap_reason(r).packets) };
    let mut out = Vec::new();
    for (case, reason) in &cases {
        let before = count(*reason)?;
        let ns = median_ns(&ebpf, case, runs)?;
        let counted = count(*reason)? - before;
        ensure!(counted == runs as u64, "{}: {counted} of {runs} runs counted as {}", case.name, reason.label());
        out.push((case.name, ns));
    }
    drop((client, server, listener));
    Ok(out)
}
