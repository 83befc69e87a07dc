//! GUE encapsulation toward a backend (see `lb_common::second_chance` for
//! the wire format): outer IPv4 or IPv6 header, UDP from
//! `gue_source_port(flow hash)` to the `GUE_PORT` global, the GUE header,
//! and the second-chance block when the slot has a previous owner.
//!
//! The UDP checksum is 0 for both families: RFC 6935/6936 allow a zero
//! checksum over IPv6 for tunnel protocols, the receiver is our own decap
//! program (which never lets the stack see the outer UDP header), and the
//! inner packet keeps its own checksums (Katran's GUE does the same).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    second_chance::{gue_source_port, GueHeader, SecondChance, SECOND_CHANCE_HLEN, SECOND_CHANCE_KIND},
    BackendEntry, Reason, FAMILY_V4, PROTO_IPIP, PROTO_IPV6, PROTO_UDP,
};
use network_types::{
    eth::EtherType,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::{
    maps::{gue_port_be, tunnel_source_v4, tunnel_source_v6},
    outer::{push_l2, write_ipv4, write_ipv6},
    packet::ptr_at_mut,
    parse::Flow,
};

const GUE_LEN: usize = core::mem::size_of::<GueHeader>();
const SECOND_CHANCE_LEN: usize = core::mem::size_of::<SecondChance>();

/// Bytes after the outer IP header: UDP, GUE and the optional second-chance block.
#[inline(always)]
fn tunnel_len(previous: Option<&BackendEntry>) -> usize {
    UdpHdr::LEN + GUE_LEN + if previous.is_some() { SECOND_CHANCE_LEN } else { 0 }
}

/// Bytes the whole GUE encapsulation adds for `backend` (what the MTU check adds).
#[inline(always)]
pub fn overhead(backend: &BackendEntry, previous: Option<&BackendEntry>) -> usize {
    let ip = if backend.family == FAMILY_V4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    ip + tunnel_len(previous)
}

/// Encapsulates toward `backend`; `previous` (the slot's previous owner)
/// goes into the second-chance block with hops 0.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    flow: &Flow,
    backend: &BackendEntry,
    previous: Option<&BackendEntry>,
    flow_hash: u32,
) -> Result<(), Reason> {
    let inner_proto = if flow.family == FAMILY_V4 { PROTO_IPIP } else { PROTO_IPV6 };
    let udp_len = tunnel_len(previous) + flow.ip_len;
    let udp_at = if backend.family == FAMILY_V4 {
        let source = tunnel_source_v4();
        if source == 0 {
            return Err(Reason::NoTunnelSource);
        }
        let l2 = push_l2(ctx, flow.l2.len, backend.next_hop_mac, Ipv4Hdr::LEN + tunnel_len(previous), EtherType::Ipv4 as u16)?;
        write_ipv4(ctx, l2, flow.tos, udp_len, source, backend.addr[0], PROTO_UDP)?;
        l2 + Ipv4Hdr::LEN
    } else {
        let source = tunnel_source_v6();
        if source == [0; 4] {
            return Err(Reason::NoTunnelSource);
        }
        let l2 = push_l2(ctx, flow.l2.len, backend.next_hop_mac, Ipv6Hdr::LEN + tunnel_len(previous), EtherType::Ipv6 as u16)?;
        write_ipv6(ctx, l2, flow.tos, udp_len, &source, &backend.addr, PROTO_UDP, flow_hash)?;
        l2 + Ipv6Hdr::LEN
    };
    let udp = ptr_at_mut::<[u16; 4]>(ctx, udp_at).ok_or(Reason::EncapFailed)?;
    let gue = ptr_at_mut::<[u16; 2]>(ctx, udp_at + UdpHdr::LEN).ok_or(Reason::EncapFailed)?;
    let hlen = if previous.is_some() { SECOND_CHANCE_HLEN } else { 0 };
    // SAFETY: for every dereference here: the pointers come from
    // `ptr_at_mut`, bounds-checked for the whole array, and every offset is
    // even in a 2-aligned frame (see `parse::parse_l2`), so the u16 stores
    // are aligned. Stores of u16 words rather than `write` of the header
    // structs: those are built on the stack first, and the balancer's stack
    // is full.
    unsafe {
        *udp = [gue_source_port(flow_hash).to_be(), gue_port_be(), (udp_len as u16).to_be(), 0];
        *gue = [u16::from_ne_bytes([hlen, inner_proto]), 0];
    }
    if let Some(p) = previous {
        let block = ptr_at_mut::<[u16; SECOND_CHANCE_LEN / 2]>(ctx, udp_at + UdpHdr::LEN + GUE_LEN).ok_or(Reason::EncapFailed)?;
        let mut words = [0u16; SECOND_CHANCE_LEN / 2];
        words[0] = SECOND_CHANCE_KIND.to_be();
        // hops 0, then the family.
        words[1] = u16::from_ne_bytes([0, p.family]);
        let mut i = 0;
        while i < 4 {
            let b = p.addr[i].to_ne_bytes();
            words[2 + i * 2] = u16::from_ne_bytes([b[0], b[1]]);
            words[3 + i * 2] = u16::from_ne_bytes([b[2], b[3]]);
            i += 1;
        }
        // SAFETY: see `udp` above.
        unsafe { *block = words };
    }
    Ok(())
}
