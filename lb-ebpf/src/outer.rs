//! The outer headers every tunnel we send starts with: room in front of the
//! packet with the L2 header rewritten, then an outer IPv4 or IPv6 header.
//! Shared by IPIP / IP6IP6 (`encap`) and GUE (`gue`). The frame goes back out
//! of the NIC it came in on (`XDP_TX`), so the outer source MAC is the MAC
//! the client's frame was addressed to (ours), and any VLAN tag is kept.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{limits::TUNNEL_TTL, Reason};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{addr::words_bytes, checksum, packet::ptr_at_mut};

/// Don't-fragment: tunnel packets must not be fragmented on the way.
const IPV4_DF: u16 = 0x4000;
/// Offset of the EtherType field in an Ethernet header (after the two MACs).
const ETHER_TYPE_OFFSET: usize = 12;
/// IPv4 version 4, header length 5 words (we add no options).
const IPV4_VIHL: u8 = 0x45;
const IPV6_FLOW_LABEL_MASK: u32 = 0x000f_ffff;

/// Makes room for `outer_len` bytes in front of the IP header (the L2 header
/// is `l2_len` bytes) and rewrites the L2 header there: next-hop MAC, our
/// MAC, the same VLAN tag, the outer EtherType. Returns the new L2 length
/// (= offset of the outer IP header).
#[inline(always)]
pub fn push_l2(ctx: &XdpContext, l2_len: usize, next_hop_mac: [u8; 6], outer_len: usize, outer_ether_type_be: u16) -> Result<usize, Reason> {
    // Our own MAC is where the client's frame was sent.
    // SAFETY: for every dereference in this function: each pointer comes
    // from `ptr_at_mut`, bounds-checked, and none lives across
    // `bpf_xdp_adjust_head`. Not `read` / `write`: with them this function
    // compiles to about 150 more instructions over its call sites (the MACs
    // and tag go through the stack), and the EtherType is an aligned u16
    // (even offset, 2-aligned frame; see `parse::parse_l2`).
    let our_mac = unsafe { *ptr_at_mut::<[u8; 6]>(ctx, 0).ok_or(Reason::EncapFailed)? };
    let vlan_tag = if l2_len > ETHER_TYPE_OFFSET + 2 {
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
        *dst_mac = next_hop_mac;
        *src_mac = our_mac;
        if let Some(tag) = vlan_tag {
            *ptr_at_mut::<[u8; 4]>(ctx, ETHER_TYPE_OFFSET).ok_or(Reason::EncapFailed)? = tag;
            type_offset += 4;
        }
        *ptr_at_mut::<u16>(ctx, type_offset).ok_or(Reason::EncapFailed)? = outer_ether_type_be;
    }
    Ok(type_offset + 2)
}

/// An outer IPv4 header at `offset` carrying `payload_len` bytes of `proto`:
/// DF, id 0, TTL `TUNNEL_TTL`, header checksum.
#[inline(always)]
pub fn write_ipv4(ctx: &XdpContext, offset: usize, tos: u8, payload_len: usize, source: u32, destination: u32, proto: u8) -> Result<(), Reason> {
    let ip = ptr_at_mut::<[u16; 10]>(ctx, offset).ok_or(Reason::EncapFailed)?;
    let total = (payload_len + Ipv4Hdr::LEN) as u16;
    let (s, d) = (source.to_ne_bytes(), destination.to_ne_bytes());
    // The header's ten words as the packet holds them, read natively (the
    // checksum is byte-order independent, RFC 1071 2(B)): summed from
    // registers, where reading the written header back costs ten loads.
    let mut words = [
        u16::from_ne_bytes([IPV4_VIHL, tos]),
        total.to_be(),
        0,
        IPV4_DF.to_be(),
        u16::from_ne_bytes([TUNNEL_TTL, proto]),
        0,
        u16::from_ne_bytes([s[0], s[1]]),
        u16::from_ne_bytes([s[2], s[3]]),
        u16::from_ne_bytes([d[0], d[1]]),
        u16::from_ne_bytes([d[2], d[3]]),
    ];
    let mut sum = 0u32;
    let mut i = 0;
    while i < words.len() {
        sum += words[i] as u32;
        i += 1;
    }
    words[5] = !checksum::fold(sum);
    // SAFETY: `ptr_at_mut` checked that all ten words fit; the header starts
    // at an even offset of a 2-aligned frame (see `parse::parse_l2`), so the
    // u16 stores are aligned (byte-array fields would be stored byte by byte).
    unsafe { *ip = words };
    Ok(())
}

/// An outer IPv6 header at `offset` carrying `payload_len` bytes of `proto`,
/// hop limit `TUNNEL_TTL`.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "each is one header field; a struct would go through the stack on every packet")]
pub fn write_ipv6(
    ctx: &XdpContext,
    offset: usize,
    tos: u8,
    payload_len: usize,
    source: &[u32; 4],
    destination: &[u32; 4],
    proto: u8,
    flow_hash: u32,
) -> Result<(), Reason> {
    let ip = ptr_at_mut::<Ipv6Hdr>(ctx, offset).ok_or(Reason::EncapFailed)?;
    // Flow label from the flow hash: routers and the backend's NIC can spread
    // tunnel traffic by inner flow instead of sending it all one way.
    let label = flow_hash & IPV6_FLOW_LABEL_MASK;
    let vcf = (6u32 << 28) | ((tos as u32) << 20) | label;
    // SAFETY: as in `write_ipv4`.
    unsafe {
        (*ip).vcf = vcf.to_be_bytes();
        (*ip).payload_len = (payload_len as u16).to_be_bytes();
        (*ip).next_hdr = proto;
        (*ip).hop_limit = TUNNEL_TTL;
        (*ip).src_addr = words_bytes(source);
        (*ip).dst_addr = words_bytes(destination);
    }
    Ok(())
}
