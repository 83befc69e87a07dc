//! Answers the LB sends back to the client itself, out of the NIC the request
//! came in on (`XDP_TX`): echo replies for VIP addresses, and
//! fragmentation-needed / packet-too-big when a packet would exceed the MTU
//! once encapsulated. Both come from the VIP's address, as the client
//! expects, and go to the MAC the client's frame came from; any VLAN tag is
//! kept.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{limits::TUNNEL_TTL, Reason, FAMILY_V4};
use network_types::{
    eth::EtherType,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    addr::words_bytes,
    checksum,
    maps::mtu,
    icmp_wire::{
        ICMPV6_ECHO_REPLY, ICMPV6_PACKET_TOO_BIG, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_FRAG_NEEDED,
        ICMP_HEADER_LEN, PROTO_ICMP, PROTO_ICMPV6,
    },
    packet::{ptr_at, ptr_at_mut},
    parse::{Flow, Ip},
};

/// TTL / hop limit of our answers (the request's may be nearly spent).
const REPLY_TTL: u8 = TUNNEL_TTL;
/// Bytes of the offending packet quoted in a too-big answer: its IP header
/// and the start of its TCP/UDP header, which is all the client's stack
/// needs to find the socket (RFC 792 asks for 8 bytes past the IP header;
/// this covers IPv4 options too). A too-big packet is always longer.
const QUOTE_LEN: usize = 128;
const IPV4_VIHL: u8 = 0x45;
const MAC_LEN: usize = 6;
/// Both MACs: destination then source.
const MACS_LEN: usize = 2 * MAC_LEN;
/// Offset of the source address in an IPv6 header (addresses follow it).
const IPV6_ADDRS_OFFSET: usize = 8;
const IPV6_VERSION_WORD: u32 = 6 << 28;
/// The ICMP message of a too-big answer, in 16-bit words.
const ICMP_MESSAGE_WORDS: usize = (ICMP_HEADER_LEN + QUOTE_LEN) / 2;

/// Whether an echo request can be answered in place with incremental
/// checksum updates: an IPv4 header without options and with a valid
/// checksum (an update would carry a bad one into the reply), no longer
/// than the MTU. IPv6 has no
/// header checksum; ICMP checksums stay valid exactly when they were.
#[inline(always)]
pub fn echo_request_is_sound(ctx: &XdpContext, ip: &Ip) -> bool {
    // A reply is as long as its request: never answer with more than the MTU.
    let limit = mtu() as usize;
    if limit != 0 && ip.ip_len > limit {
        return false;
    }
    if ip.family != FAMILY_V4 {
        return true;
    }
    match ptr_at::<[u16; 10]>(ctx, ip.l2.len) {
        Some(header) => ip.l4_offset == ip.l2.len + Ipv4Hdr::LEN && checksum::fold(checksum::sum_words(0, header)) == VALID_SUM,
        None => false,
    }
}

/// The folded sum of a header whose checksum is right.
const VALID_SUM: u16 = 0xffff;

/// Turns an echo request into its reply in place: MACs and addresses
/// swapped, type changed, fresh TTL; checksums updated incrementally
/// (swapping addresses changes neither the IPv4 header sum nor the ICMPv6
/// pseudo-header sum).
#[inline(always)]
pub fn echo(ctx: &XdpContext, ip: &Ip) -> Result<(), Reason> {
    let icmp = ptr_at_mut::<[u8; 4]>(ctx, ip.l4_offset).ok_or(Reason::MalformedL4)?;
    let macs = ptr_at_mut::<[u8; MACS_LEN]>(ctx, 0).ok_or(Reason::MalformedL3)?;
    let reply_type = if ip.family == FAMILY_V4 { ICMP_ECHO_REPLY } else { ICMPV6_ECHO_REPLY };
    unsafe {
        if ip.family == FAMILY_V4 {
            let h = ptr_at_mut::<Ipv4Hdr>(ctx, ip.l2.len).ok_or(Reason::MalformedL3)?;
            let old = u16::from_ne_bytes([(*h).ttl, (*h).proto]);
            let new = u16::from_ne_bytes([REPLY_TTL, (*h).proto]);
            (*h).check = checksum::replace_word(u16::from_ne_bytes((*h).check), old, new).to_ne_bytes();
            (*h).ttl = REPLY_TTL;
            core::mem::swap(&mut (*h).src_addr, &mut (*h).dst_addr);
        } else {
            let h = ptr_at_mut::<Ipv6Hdr>(ctx, ip.l2.len).ok_or(Reason::MalformedL3)?;
            (*h).hop_limit = REPLY_TTL;
            core::mem::swap(&mut (*h).src_addr, &mut (*h).dst_addr);
        }
        let [ty, code, c0, c1] = *icmp;
        let check = checksum::replace_word(
            u16::from_ne_bytes([c0, c1]),
            u16::from_ne_bytes([ty, code]),
            u16::from_ne_bytes([reply_type, code]),
        );
        let [n0, n1] = check.to_ne_bytes();
        *icmp = [reply_type, code, n0, n1];
        swap_macs(macs);
    }
    Ok(())
}

#[inline(always)]
unsafe fn swap_macs(macs: *mut [u8; MACS_LEN]) {
    let m = unsafe { *macs };
    let mut out = [0u8; MACS_LEN];
    let mut i = 0;
    while i < MAC_LEN {
        out[i] = m[MAC_LEN + i];
        out[MAC_LEN + i] = m[i];
        i += 1;
    }
    unsafe { *macs = out };
}

/// Replaces the packet with an ICMP fragmentation-needed (IPv4) or ICMPv6
/// packet-too-big telling the client to send at most `next_hop_mtu` bytes.
/// `flow` is the offending packet's own flow (client -> VIP).
#[inline(always)]
pub fn too_big(ctx: &XdpContext, flow: &Flow, next_hop_mtu: u32) -> Result<(), Reason> {
    if flow.ip_len < QUOTE_LEN {
        // Cannot happen with a sane MTU; never build a short quote.
        return Err(Reason::TooBigDropped);
    }
    let l2_len = flow.l2.len;
    let macs = unsafe { *ptr_at::<[u8; MACS_LEN]>(ctx, 0).ok_or(Reason::MalformedL3)? };
    // Everything between the MACs and the IP header: VLAN tag (if any) and EtherType.
    let vlan = unsafe { *ptr_at::<[u8; 4]>(ctx, MACS_LEN).ok_or(Reason::MalformedL3)? };
    let ip_header_len = if flow.family == FAMILY_V4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    let prepend = ip_header_len + ICMP_HEADER_LEN;
    // The old L2 header ends up where the new IP and ICMP headers go, and the
    // offending packet's IP header right where the quote belongs.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(prepend as i32)) } != 0 {
        return Err(Reason::TooBigDropped);
    }
    let current = ctx.data_end() - ctx.data();
    let wanted = l2_len + prepend + QUOTE_LEN;
    if current < wanted || unsafe { bpf_xdp_adjust_tail(ctx.ctx, wanted as i32 - current as i32) } != 0 {
        return Err(Reason::TooBigDropped);
    }
    write_l2(ctx, l2_len, &macs, &vlan, flow.family)?;
    if flow.family == FAMILY_V4 {
        write_frag_needed(ctx, l2_len, flow, next_hop_mtu)
    } else {
        write_packet_too_big(ctx, l2_len, flow, next_hop_mtu)
    }
}

/// Destination = where the request came from, source = us (the request's
/// destination), the same VLAN tag, the answer's EtherType.
#[inline(always)]
fn write_l2(ctx: &XdpContext, l2_len: usize, macs: &[u8; MACS_LEN], vlan: &[u8; 4], family: u8) -> Result<(), Reason> {
    let out = ptr_at_mut::<[u8; MACS_LEN]>(ctx, 0).ok_or(Reason::TooBigDropped)?;
    let ether_type = ptr_at_mut::<u16>(ctx, l2_len - 2).ok_or(Reason::TooBigDropped)?;
    unsafe {
        *out = *macs;
        swap_macs(out);
        if l2_len > MACS_LEN + 2 {
            *ptr_at_mut::<[u8; 4]>(ctx, MACS_LEN).ok_or(Reason::TooBigDropped)? = *vlan;
        }
        *ether_type = if family == FAMILY_V4 { EtherType::Ipv4 as u16 } else { EtherType::Ipv6 as u16 };
    }
    Ok(())
}

#[inline(always)]
fn write_frag_needed(ctx: &XdpContext, l2_len: usize, flow: &Flow, next_hop_mtu: u32) -> Result<(), Reason> {
    let ip = ptr_at_mut::<Ipv4Hdr>(ctx, l2_len).ok_or(Reason::TooBigDropped)?;
    let icmp_at = l2_len + Ipv4Hdr::LEN;
    let icmp = ptr_at_mut::<[u8; ICMP_HEADER_LEN]>(ctx, icmp_at).ok_or(Reason::TooBigDropped)?;
    let message = ptr_at::<[u16; ICMP_MESSAGE_WORDS]>(ctx, icmp_at).ok_or(Reason::TooBigDropped)?;
    let [m0, m1] = (next_hop_mtu as u16).to_be_bytes();
    unsafe {
        (*ip).vihl = IPV4_VIHL;
        (*ip).tos = 0;
        (*ip).tot_len = ((Ipv4Hdr::LEN + ICMP_HEADER_LEN + QUOTE_LEN) as u16).to_be_bytes();
        (*ip).id = [0, 0];
        (*ip).frags = [0, 0];
        (*ip).ttl = REPLY_TTL;
        (*ip).proto = PROTO_ICMP;
        (*ip).check = [0, 0];
        (*ip).src_addr = flow.dst[0].to_ne_bytes();
        (*ip).dst_addr = flow.src[0].to_ne_bytes();
        (*ip).check = checksum::ipv4_header(ip as *const [u16; 10]).to_ne_bytes();
        // type, code, checksum, unused, next-hop MTU (RFC 1191).
        *icmp = [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, 0, 0, m0, m1];
        let check = !checksum::fold(checksum::sum_words(0, message));
        let [c0, c1] = check.to_ne_bytes();
        *icmp = [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, c0, c1, 0, 0, m0, m1];
    }
    Ok(())
}

#[inline(always)]
fn write_packet_too_big(ctx: &XdpContext, l2_len: usize, flow: &Flow, next_hop_mtu: u32) -> Result<(), Reason> {
    let ip = ptr_at_mut::<Ipv6Hdr>(ctx, l2_len).ok_or(Reason::TooBigDropped)?;
    let icmp_at = l2_len + Ipv6Hdr::LEN;
    let icmp = ptr_at_mut::<[u8; ICMP_HEADER_LEN]>(ctx, icmp_at).ok_or(Reason::TooBigDropped)?;
    let message = ptr_at::<[u16; ICMP_MESSAGE_WORDS]>(ctx, icmp_at).ok_or(Reason::TooBigDropped)?;
    let addrs = ptr_at::<[u16; 16]>(ctx, l2_len + IPV6_ADDRS_OFFSET).ok_or(Reason::TooBigDropped)?;
    let message_len = (ICMP_HEADER_LEN + QUOTE_LEN) as u32;
    let [m0, m1, m2, m3] = next_hop_mtu.to_be_bytes();
    unsafe {
        (*ip).vcf = IPV6_VERSION_WORD.to_be_bytes();
        (*ip).payload_len = (message_len as u16).to_be_bytes();
        (*ip).next_hdr = PROTO_ICMPV6;
        (*ip).hop_limit = REPLY_TTL;
        (*ip).src_addr = words_bytes(&flow.dst);
        (*ip).dst_addr = words_bytes(&flow.src);
        *icmp = [ICMPV6_PACKET_TOO_BIG, 0, 0, 0, m0, m1, m2, m3];
        // Pseudo-header (RFC 8200 8.1): addresses, upper-layer length, next header.
        let [l0, l1, l2b, l3] = message_len.to_be_bytes();
        let mut sum = checksum::sum_words(0, addrs);
        sum += u16::from_ne_bytes([l0, l1]) as u32 + u16::from_ne_bytes([l2b, l3]) as u32;
        sum += u16::from_ne_bytes([0, PROTO_ICMPV6]) as u32;
        let check = !checksum::fold(checksum::sum_words(sum, message));
        let [c0, c1] = check.to_ne_bytes();
        *icmp = [ICMPV6_PACKET_TOO_BIG, 0, c0, c1, m0, m1, m2, m3];
    }
    Ok(())
}
