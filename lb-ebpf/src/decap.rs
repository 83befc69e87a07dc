//! Backend side: removes the outer header that the balancer added and hands
//! the inner packet to the stack, which owns the VIP on `lo`. These kernels
//! have no ipip/ip6_tunnel/fou modules, so this replaces them.
//!
//! - IPIP / IP6IP6 / 4in6 / 6in4: decapsulated.
//! - UDP to the `GUE_PORT` global: GUE as the balancer sends it, else
//!   dropped (`gue_malformed`: nothing else listens on that port; a
//!   second-chance block with a bad count or hops beyond it: dropped with
//!   its own counter). Without second-chance data, decapsulated; with it,
//!   `second_chance` judges the inner packet: decapsulated (accepted, or the
//!   last previous owner named), or sent on in place to the next previous
//!   owner (`XDP_TX`, or passed for the stack to forward while the neighbour
//!   is unresolved).
//! - Other UDP, and UDP in an IPv4 header with options or fragmented (the
//!   balancer sends neither): not a tunnel, untouched.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    second_chance::{second_chance_hlen, GueHeader, SecondChance, GUE_HLEN_MASK, MAX_PREVIOUS_OWNERS, SECOND_CHANCE_KIND},
    DecapReason, PROTO_IPIP, PROTO_IPV6, PROTO_UDP,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::{
    maps::gue_port_be,
    packet::{ptr_at, ptr_at_mut, read},
    parse::{parse_l2, L2},
    second_chance::{self, Verdict},
};

/// IPv4 "more fragments" flag and fragment offset, in host order.
const IPV4_MF_AND_OFFSET: u16 = 0x3fff;
const GUE_LEN: usize = core::mem::size_of::<GueHeader>();

#[inline(always)]
pub fn decap(ctx: &XdpContext) -> DecapReason {
    match try_decap(ctx) {
        Ok(reason) | Err(reason) => reason,
    }
}

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<DecapReason, DecapReason> {
    let l2 = parse_l2(ctx).map_err(|_| DecapReason::Malformed)?;
    let (outer_len, inner_proto) = if l2.ether_type_be == EtherType::Ipv4 as u16 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, l2.len).ok_or(DecapReason::Malformed)?;
        // SAFETY: for every dereference in this function: each pointer
        // comes from `ptr_at` / `ptr_at_mut`, bounds-checked, and none lives across
        // `bpf_xdp_adjust_head`. Not `read` / `write`: with them this path
        // compiles to 20 more instructions per decapsulated packet, and the
        // EtherType store is an aligned u16 (see `parse::parse_l2`).
        let (vihl, proto, frags) = unsafe { ((*ip).vihl, (*ip).proto, u16::from_be_bytes((*ip).frags)) };
        if proto != PROTO_IPIP && proto != PROTO_IPV6 {
            if proto == PROTO_UDP && vihl == 0x45 && frags & IPV4_MF_AND_OFFSET == 0 {
                return gue(ctx, l2, Ipv4Hdr::LEN, true);
            }
            return Err(DecapReason::NotTunnel);
        }
        if vihl != 0x45 || frags & IPV4_MF_AND_OFFSET != 0 {
            // Options or fragments: the balancer never sends those.
            return Err(DecapReason::Unsupported);
        }
        (Ipv4Hdr::LEN, proto)
    } else if l2.ether_type_be == EtherType::Ipv6 as u16 {
        let ip: *const Ipv6Hdr = ptr_at(ctx, l2.len).ok_or(DecapReason::Malformed)?;
        // SAFETY: see the IPv4 branch.
        let next = unsafe { (*ip).next_hdr };
        if next != PROTO_IPIP && next != PROTO_IPV6 {
            if next == PROTO_UDP {
                return gue(ctx, l2, Ipv6Hdr::LEN, false);
            }
            return Err(DecapReason::NotTunnel);
        }
        (Ipv6Hdr::LEN, next)
    } else {
        return Err(DecapReason::NotTunnel);
    };
    let inner_ether_type_be = if inner_proto == PROTO_IPIP { EtherType::Ipv4 as u16 } else { EtherType::Ipv6 as u16 };
    // The inner header must at least start with a version nibble that matches.
    let inner_version: *const u8 = ptr_at(ctx, l2.len + outer_len).ok_or(DecapReason::Malformed)?;
    let expected_version = if inner_proto == PROTO_IPIP { 4 } else { 6 };
    // SAFETY: see the IPv4 branch.
    if unsafe { *inner_version } >> 4 != expected_version {
        return Err(DecapReason::Malformed);
    }
    strip(ctx, l2, outer_len, inner_ether_type_be)?;
    Ok(DecapReason::Decapsulated)
}

/// UDP in an outer header of `ip_len` bytes: GUE if it is to our port.
#[inline(always)]
fn gue(ctx: &XdpContext, l2: L2, ip_len: usize, outer_v4: bool) -> Result<DecapReason, DecapReason> {
    let udp_at = l2.len + ip_len;
    let udp = read::<UdpHdr>(ctx, udp_at).ok_or(DecapReason::Malformed)?;
    if u16::from_ne_bytes(udp.dst) != gue_port_be() {
        return Err(DecapReason::NotTunnel);
    }
    let gue_at = udp_at + UdpHdr::LEN;
    let header = read::<GueHeader>(ctx, gue_at).ok_or(DecapReason::GueMalformed)?;
    // Version 0, C = 0: the top three bits clear.
    let hlen = header.version_hlen & GUE_HLEN_MASK;
    if header.version_hlen != hlen || header.flags_be != 0 {
        return Err(DecapReason::GueMalformed);
    }
    let (inner_ether_type_be, inner_v4) = match header.proto {
        PROTO_IPIP => (EtherType::Ipv4 as u16, true),
        PROTO_IPV6 => (EtherType::Ipv6 as u16, false),
        _ => return Err(DecapReason::GueMalformed),
    };
    let block_at = gue_at + GUE_LEN;
    let head = if hlen == 0 {
        None
    } else {
        let head = read::<SecondChance>(ctx, block_at).ok_or(DecapReason::GueMalformed)?;
        if head.kind_be != SECOND_CHANCE_KIND.to_be() {
            return Err(DecapReason::GueMalformed);
        }
        let count = head.count as usize;
        if count == 0 || count > MAX_PREVIOUS_OWNERS || second_chance_hlen(count) != hlen {
            return Err(DecapReason::SecondChanceBadCount);
        }
        if head.hops > head.count {
            return Err(DecapReason::SecondChanceHopsBeyondCount);
        }
        Some(head)
    };
    let inner_at = block_at + hlen as usize * 4;
    // Two bytes, not one: at this variable offset the compiler turns a
    // one-byte bounds check into a form the verifier cannot follow.
    let version = read::<[u8; 2]>(ctx, inner_at).ok_or(DecapReason::GueMalformed)?[0] >> 4;
    if version != if inner_v4 { 4 } else { 6 } {
        return Err(DecapReason::GueMalformed);
    }
    let Some(head) = head else {
        strip(ctx, l2, inner_at - l2.len, inner_ether_type_be)?;
        return Ok(DecapReason::Decapsulated);
    };
    let reason = match second_chance::judge(ctx, inner_at, inner_v4, &head) {
        Verdict::Accept(reason) => reason,
        Verdict::SendOn => match second_chance::send_on(ctx, l2.len, outer_v4, block_at, &head) {
            Ok(sent) => return Ok(sent),
            Err(reason) => reason,
        },
    };
    strip(ctx, l2, inner_at - l2.len, inner_ether_type_be)?;
    Ok(reason)
}

/// Removes the `outer_len` bytes after the L2 header, keeping the L2
/// header (MACs and VLAN tag) with the inner packet's EtherType.
#[inline(always)]
fn strip(ctx: &XdpContext, l2: L2, outer_len: usize, inner_ether_type_be: u16) -> Result<(), DecapReason> {
    // SAFETY: see `try_decap`'s IPv4 branch.
    let l2_bytes = unsafe { *ptr_at::<[u8; EthHdr::LEN + 4]>(ctx, 0).ok_or(DecapReason::Malformed)? };
    // SAFETY: the helper moves `data` within the frame's buffer or fails;
    // the pointers taken before it are not used after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(DecapReason::AdjustFailed);
    }
    let macs = ptr_at_mut::<[u8; 12]>(ctx, 0).ok_or(DecapReason::AdjustFailed)?;
    let mut mac_bytes = [0u8; 12];
    mac_bytes.copy_from_slice(&l2_bytes[..12]);
    // SAFETY: see `try_decap`'s IPv4 branch; these pointers are taken after the move.
    unsafe {
        *macs = mac_bytes;
        if l2.len > EthHdr::LEN {
            *ptr_at_mut::<[u8; 4]>(ctx, 12).ok_or(DecapReason::AdjustFailed)? = [l2_bytes[12], l2_bytes[13], l2_bytes[14], l2_bytes[15]];
        }
        *ptr_at_mut::<u16>(ctx, l2.len - 2).ok_or(DecapReason::AdjustFailed)? = inner_ether_type_be;
    }
    Ok(())
}
