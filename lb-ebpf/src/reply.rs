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
    packet::{ptr_at, read, write},
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
    // A pointer, not `read`: `sum_words` reads the words where they are.
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
    // Everything read before anything is written: a short packet is left as it came.
    let [ty, code, c0, c1] = read::<[u8; 4]>(ctx, ip.l4_offset).ok_or(Reason::MalformedL4)?;
    let macs = read::<[u8; MACS_LEN]>(ctx, 0).ok_or(Reason::MalformedL3)?;
    let reply_type = if ip.family == FAMILY_V4 { ICMP_ECHO_REPLY } else { ICMPV6_ECHO_REPLY };
    if ip.family == FAMILY_V4 {
        let mut h = read::<Ipv4Hdr>(ctx, ip.l2.len).ok_or(Reason::MalformedL3)?;
        let old = u16::from_ne_bytes([h.ttl, h.proto]);
        let new = u16::from_ne_bytes([REPLY_TTL, h.proto]);
        h.check = checksum::replace_word(u16::from_ne_bytes(h.check), old, new).to_ne_bytes();
        h.ttl = REPLY_TTL;
        core::mem::swap(&mut h.src_addr, &mut h.dst_addr);
        write(ctx, ip.l2.len, h).ok_or(Reason::MalformedL3)?;
    } else {
        let mut h = read::<Ipv6Hdr>(ctx, ip.l2.len).ok_or(Reason::MalformedL3)?;
        h.hop_limit = REPLY_TTL;
        core::mem::swap(&mut h.src_addr, &mut h.dst_addr);
        write(ctx, ip.l2.len, h).ok_or(Reason::MalformedL3)?;
    }
    let check = checksum::replace_word(
        u16::from_ne_bytes([c0, c1]),
        u16::from_ne_bytes([ty, code]),
        u16::from_ne_bytes([reply_type, code]),
    );
    let [n0, n1] = check.to_ne_bytes();
    write(ctx, ip.l4_offset, [reply_type, code, n0, n1]).ok_or(Reason::MalformedL4)?;
    write(ctx, 0, swapped(macs)).ok_or(Reason::MalformedL3)?;
    Ok(())
}

/// The two MACs of an Ethernet header, swapped.
#[inline(always)]
fn swapped(m: [u8; MACS_LEN]) -> [u8; MACS_LEN] {
    let mut out = [0u8; MACS_LEN];
    let mut i = 0;
    while i < MAC_LEN {
        out[i] = m[MAC_LEN + i];
        out[MAC_LEN + i] = m[i];
        i += 1;
    }
    out
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
    let macs = read::<[u8; MACS_LEN]>(ctx, 0).ok_or(Reason::MalformedL3)?;
    // Everything between the MACs and the IP header: VLAN tag (if any) and EtherType.
    let vlan = read::<[u8; 4]>(ctx, MACS_LEN).ok_or(Reason::MalformedL3)?;
    let ip_header_len = if flow.family == FAMILY_V4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    let prepend = ip_header_len + ICMP_HEADER_LEN;
    // The old L2 header ends up where the new IP and ICMP headers go, and the
    // offending packet's IP header right where the quote belongs.
    // SAFETY: the helper moves `data` within the frame's buffer (into the
    // headroom) or fails; no packet pointer lives across it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(prepend as i32)) } != 0 {
        return Err(Reason::TooBigDropped);
    }
    let current = ctx.data_end() - ctx.data();
    let wanted = l2_len + prepend + QUOTE_LEN;
    // SAFETY: the helper moves `data_end` within the frame's buffer or
    // fails (here it only shrinks); no packet pointer lives across it.
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
    write(ctx, 0, swapped(*macs)).ok_or(Reason::TooBigDropped)?;
    if l2_len > MACS_LEN + 2 {
        write(ctx, MACS_LEN, *vlan).ok_or(Reason::TooBigDropped)?;
    }
    let ether_type = if family == FAMILY_V4 { EtherType::Ipv4 as u16 } else { EtherType::Ipv6 as u16 };
    write(ctx, l2_len - 2, ether_type).ok_or(Reason::TooBigDropped)?;
    Ok(())
}

#[inline(always)]
fn write_frag_needed(ctx: &XdpContext, l2_len: usize, flow: &Flow, next_hop_mtu: u32) -> Result<(), Reason> {
    let icmp_at = l2_len + Ipv4Hdr::LEN;
    let mut header = Ipv4Hdr {
        vihl: IPV4_VIHL,
        tos: 0,
        tot_len: ((Ipv4Hdr::LEN + ICMP_HEADER_LEN + QUOTE_LEN) as u16).to_be_bytes(),
        id: [0, 0],
        frags: [0, 0],
        ttl: REPLY_TTL,
        proto: PROTO_ICMP,
        check: [0, 0],
        src_addr: flow.dst[0].to_ne_bytes(),
        dst_addr: flow.src[0].to_ne_bytes(),
    };
    write(ctx, l2_len, header).ok_or(Reason::TooBigDropped)?;
    // Pointers, not `read`: the checksums sum the words where they are.
    let words = ptr_at::<[u16; 10]>(ctx, l2_len).ok_or(Reason::TooBigDropped)?;
    header.check = checksum::ipv4_header(words).to_ne_bytes();
    write(ctx, l2_len, header).ok_or(Reason::TooBigDropped)?;
    // type, code, checksum, unused, next-hop MTU (RFC 1191).
    let [m0, m1] = (next_hop_mtu as u16).to_be_bytes();
    write(ctx, icmp_at, [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, 0, 0, m0, m1]).ok_or(Reason::TooBigDropped)?;
    let message = ptr_at::<[u16; ICMP_MESSAGE_WORDS]>(ctx, icmp_at).ok_or(Reason::TooBigDropped)?;
    let [c0, c1] = (!checksum::fold(checksum::sum_words(0, message))).to_ne_bytes();
    write(ctx, icmp_at, [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, c0, c1, 0, 0, m0, m1]).ok_or(Reason::TooBigDropped)?;
    Ok(())
}

#[inline(always)]
fn write_packet_too_big(ctx: &XdpContext, l2_len: usize, flow: &Flow, next_hop_mtu: u32) -> Result<(), Reason> {
    let icmp_at = l2_len + Ipv6Hdr::LEN;
    let message_len = (ICMP_HEADER_LEN + QUOTE_LEN) as u32;
    let header = Ipv6Hdr {
        vcf: IPV6_VERSION_WORD.to_be_bytes(),
        payload_len: (message_len as u16).to_be_bytes(),
        next_hdr: PROTO_ICMPV6,
        hop_limit: REPLY_TTL,
        src_addr: words_bytes(&flow.dst),
        dst_addr: words_bytes(&flow.src),
    };
    write(ctx, l2_len, header).ok_or(Reason::TooBigDropped)?;
    let [m0, m1, m2, m3] = next_hop_mtu.to_be_bytes();
    write(ctx, icmp_at, [ICMPV6_PACKET_TOO_BIG, 0, 0, 0, m0, m1, m2, m3]).ok_or(Reason::TooBigDropped)?;
    // Pointers, not `read`: the checksum sums the words where they are.
    let message = ptr_at::<[u16; ICMP_MESSAGE_WORDS]>(ctx, icmp_at).ok_or(Reason::TooBigDropped)?;
    let addrs = ptr_at::<[u16; 16]>(ctx, l2_len + IPV6_ADDRS_OFFSET).ok_or(Reason::TooBigDropped)?;
    // Pseudo-header (RFC 8200 8.1): addresses, upper-layer length, next header.
    let [l0, l1, l2b, l3] = message_len.to_be_bytes();
    let mut sum = checksum::sum_words(0, addrs);
    sum += u16::from_ne_bytes([l0, l1]) as u32 + u16::from_ne_bytes([l2b, l3]) as u32;
    sum += u16::from_ne_bytes([0, PROTO_ICMPV6]) as u32;
    let [c0, c1] = (!checksum::fold(checksum::sum_words(sum, message))).to_ne_bytes();
    write(ctx, icmp_at, [ICMPV6_PACKET_TOO_BIG, 0, c0, c1, m0, m1, m2, m3]).ok_or(Reason::TooBigDropped)?;
    Ok(())
}
