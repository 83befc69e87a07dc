//! Encapsulation toward a backend: IPv4 outer header (protocol 4 or 41) for
//! IPv4 backends, IPv6 outer header (next header 41 or 4) for IPv6 backends.
//! The frame goes back out of the NIC it came in on (`XDP_TX`), so the outer
//! source MAC is the MAC the client's frame was addressed to (ours), and any
//! VLAN tag is kept.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{limits::TUNNEL_TTL, BackendEntry, Reason, FAMILY_V4, PROTO_IPIP, PROTO_IPV6};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    addr::words_bytes,
    checksum,
    maps::{tunnel_source_v4, tunnel_source_v6},
    packet::ptr_at_mut,
    parse::Flow,
};

/// Don't-fragment: tunnel packets must not be fragmented on the way.
const IPV4_DF: u16 = 0x4000;
/// Offset of the EtherType field in an Ethernet header (after the two MACs).
const ETHER_TYPE_OFFSET: usize = 12;
/// IPv4 version 4, header length 5 words (we add no options).
const IPV4_VIHL: u8 = 0x45;
const IPV6_FLOW_LABEL_MASK: u32 = 0x000f_ffff;

/// Bytes the outer header adds for `backend` (what the MTU check adds).
#[inline(always)]
pub fn overhead(backend: &BackendEntry) -> usize {
    if backend.family == FAMILY_V4 {
        Ipv4Hdr::LEN
    } else {
        Ipv6Hdr::LEN
    }
}

#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, flow: &Flow, backend: &BackendEntry, flow_hash: u32) -> Result<(), Reason> {
    let inner_proto = if flow.family == FAMILY_V4 { PROTO_IPIP } else { PROTO_IPV6 };
    if backend.family == FAMILY_V4 {
        let source = tunnel_source_v4();
        if source == 0 {
            return Err(Reason::NoTunnelSource);
        }
        let l2 = grow_and_rewrite_l2(ctx, flow, backend, Ipv4Hdr::LEN, EtherType::Ipv4 as u16)?;
        write_ipv4(ctx, l2, flow, backend, source, inner_proto)
    } else {
        let source = tunnel_source_v6();
        if source == [0; 4] {
            return Err(Reason::NoTunnelSource);
        }
        let l2 = grow_and_rewrite_l2(ctx, flow, backend, Ipv6Hdr::LEN, EtherType::Ipv6 as u16)?;
        write_ipv6(ctx, l2, flow, backend, &source, inner_proto, flow_hash)
    }
}

/// Makes room for `outer_len` bytes in front of the IP header and rewrites the
/// L2 header there: next-hop MAC, our MAC, the same VLAN tag, the outer
/// EtherType. Returns the new L2 length (= offset of the outer IP header).
#[inline(always)]
fn grow_and_rewrite_l2(
    ctx: &XdpContext,
    flow: &Flow,
    backend: &BackendEntry,
    outer_len: usize,
    outer_ether_type_be: u16,
) -> Result<usize, Reason> {
    // Our own MAC is where the client's frame was sent.
    // SAFETY: for every dereference in this function: each pointer comes
    // from `ptr_at_mut`, bounds-checked, and none lives across
    // `bpf_xdp_adjust_head`. Not `read` / `write`: with them this function
    // compiles to about 150 more instructions over its call sites (the MACs
    // and tag go through the stack), and the EtherType is an aligned u16
    // (even offset, 2-aligned frame; see `parse::parse_l2`).
    let our_mac = unsafe { *ptr_at_mut::<[u8; 6]>(ctx, 0).ok_or(Reason::EncapFailed)? };
    let vlan_tag = if flow.l2.len > EthHdr::LEN {
        // TPID + TCI, copied as one word.
        // SAFETY: see `our_mac`.
        Some(unsafe { *ptr_at_mut::<[u8; 4]>(ctx, ETHER_TYPE_OFFSET).ok_or(Reason::EncapFailed)? })
    } else {
        None
    };
    // SAFETY: the helper moves `data` within the frame's buffer (into the
    // headroom) or fails; no packet pointer lives across it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        return Err(Reason::EncapFailed);
    }
    let dst_mac = ptr_at_mut::<[u8; 6]>(ctx, 0).ok_or(Reason::EncapFailed)?;
    let src_mac = ptr_at_mut::<[u8; 6]>(ctx, 6).ok_or(Reason::EncapFailed)?;
    let mut type_offset = ETHER_TYPE_OFFSET;
    // SAFETY: see `our_mac`; these pointers are taken after the head moved.
    unsafe {
        *dst_mac = backend.next_hop_mac;
        *src_mac = our_mac;
        if let Some(tag) = vlan_tag {
            *ptr_at_mut::<[u8; 4]>(ctx, ETHER_TYPE_OFFSET).ok_or(Reason::EncapFailed)? = tag;
            type_offset += 4;
        }
        *ptr_at_mut::<u16>(ctx, type_offset).ok_or(Reason::EncapFailed)? = outer_ether_type_be;
    }
    Ok(type_offset + 2)
}

#[inline(always)]
fn write_ipv4(
    ctx: &XdpContext,
    offset: usize,
    flow: &Flow,
    backend: &BackendEntry,
    source: u32,
    inner_proto: u8,
) -> Result<(), Reason> {
    let ip = ptr_at_mut::<Ipv4Hdr>(ctx, offset).ok_or(Reason::EncapFailed)?;
    let total = (flow.ip_len + Ipv4Hdr::LEN) as u16;
    // SAFETY: `ptr_at_mut` checked that the whole header fits. Field by
    // field, not `write` of a header built on the stack: cheaper on every
    // forwarded packet, and the checksum reads the header from the packet.
    unsafe {
        (*ip).vihl = IPV4_VIHL;
        (*ip).tos = flow.tos;
        (*ip).tot_len = total.to_be_bytes();
        (*ip).id = [0, 0];
        (*ip).frags = IPV4_DF.to_be_bytes();
        (*ip).ttl = TUNNEL_TTL;
        (*ip).proto = inner_proto;
        (*ip).check = [0, 0];
        (*ip).src_addr = source.to_ne_bytes();
        (*ip).dst_addr = backend.addr[0].to_ne_bytes();
        (*ip).check = checksum::ipv4_header(ip as *const [u16; 10]).to_ne_bytes();
    }
    Ok(())
}

#[inline(always)]
fn write_ipv6(
    ctx: &XdpContext,
    offset: usize,
    flow: &Flow,
    backend: &BackendEntry,
    source: &[u32; 4],
    inner_proto: u8,
    flow_hash: u32,
) -> Result<(), Reason> {
    let ip = ptr_at_mut::<Ipv6Hdr>(ctx, offset).ok_or(Reason::EncapFailed)?;
    // Flow label from the flow hash: routers and the backend's NIC can spread
    // tunnel traffic by inner flow instead of sending it all one way.
    let label = flow_hash & IPV6_FLOW_LABEL_MASK;
    let vcf = (6u32 << 28) | ((flow.tos as u32) << 20) | label;
    // SAFETY: as in `write_ipv4`.
    unsafe {
        (*ip).vcf = vcf.to_be_bytes();
        (*ip).payload_len = (flow.ip_len as u16).to_be_bytes();
        (*ip).next_hdr = inner_proto;
        (*ip).hop_limit = TUNNEL_TTL;
        (*ip).src_addr = words_bytes(source);
        (*ip).dst_addr = words_bytes(&backend.addr);
    }
    Ok(())
}
