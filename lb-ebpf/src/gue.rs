//! GUE encapsulation toward a backend (see `lb_common::second_chance` for
//! the wire format): outer IPv4 or IPv6 header, UDP from
//! `gue_source_port(flow hash)` to the `GUE_PORT` global, the GUE header,
//! and the second-chance block when the slot has previous owners.
//!
//! The UDP checksum is 0 for both families: RFC 6935/6936 allow a zero
//! checksum over IPv6 for tunnel protocols, the receiver is our own decap
//! program (which never lets the stack see the outer UDP header), and the
//! inner packet keeps its own checksums (Katran's GUE does the same).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    second_chance::{
        gue_source_port, named, second_chance_hlen, GueHeader, PreviousOwners, SecondChance, PREVIOUS_ADDR_LEN, SECOND_CHANCE_KIND,
    },
    BackendEntry, Reason, FAMILY_V4, PROTO_IPIP, PROTO_IPV6, PROTO_UDP,
};
use network_types::{
    eth::EtherType,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::{
    maps::{gue_port_be, tunnel_source_v4, tunnel_source_v6, BACKENDS},
    outer::{push_l2, write_ipv4, write_ipv6},
    packet::ptr_at_mut,
    parse::Flow,
};

const GUE_LEN: usize = core::mem::size_of::<GueHeader>();
const HEAD_LEN: usize = core::mem::size_of::<SecondChance>();

/// Bytes after the outer IP header: UDP, GUE and the second-chance block
/// (`Hlen` words: none without previous owners).
#[inline(always)]
fn tunnel_len(previous: &PreviousOwners) -> usize {
    UdpHdr::LEN + GUE_LEN + second_chance_hlen(named(previous)) as usize * 4
}

/// Bytes the whole GUE encapsulation adds for `backend` (what the MTU check adds).
#[inline(always)]
pub fn overhead(backend: &BackendEntry, previous: &PreviousOwners) -> usize {
    let ip = if backend.family == FAMILY_V4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    ip + tunnel_len(previous)
}

/// Encapsulates toward `backend`; `previous` (the slot's previous owners,
/// newest first) goes into the second-chance block with hops 0.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    flow: &Flow,
    backend: &BackendEntry,
    previous: &PreviousOwners,
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
    let count = named(previous);
    let hlen = second_chance_hlen(count);
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
    if count == 0 {
        return Ok(());
    }
    let block_at = udp_at + UdpHdr::LEN + GUE_LEN;
    let head = ptr_at_mut::<[u16; HEAD_LEN / 2]>(ctx, block_at).ok_or(Reason::EncapFailed)?;
    // SAFETY: see `udp` above. hops 0, then the count.
    unsafe { *head = [SECOND_CHANCE_KIND.to_be(), u16::from_ne_bytes([0, count as u8])] };
    // Constant offsets per entry (the loop unrolls), which the verifier checks cheaply.
    for (k, &id) in previous.iter().enumerate() {
        if k >= count {
            break;
        }
        let at = block_at + HEAD_LEN + k * PREVIOUS_ADDR_LEN;
        let words = ptr_at_mut::<[u16; PREVIOUS_ADDR_LEN / 2]>(ctx, at).ok_or(Reason::EncapFailed)?;
        // Looked up again (an array lookup the verifier inlines): an entry
        // cleared since reads as the unspecified address, which the decap
        // program refuses to send to (`unknown_no_previous`).
        let addr = BACKENDS.get(id).map_or([0; 4], |b| b.addr);
        let mut out = [0u16; PREVIOUS_ADDR_LEN / 2];
        let mut i = 0;
        while i < 4 {
            let b = addr[i].to_ne_bytes();
            out[i * 2] = u16::from_ne_bytes([b[0], b[1]]);
            out[i * 2 + 1] = u16::from_ne_bytes([b[2], b[3]]);
            i += 1;
        }
        // SAFETY: see `udp` above.
        unsafe { *words = out };
    }
    Ok(())
}
