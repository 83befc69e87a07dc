//! Backend side: removes the outer IPv4/IPv6 header that the balancer added
//! and hands the inner packet to the stack, which owns the VIP on `lo`. These
//! kernels have no ipip/ip6_tunnel modules, so this replaces them.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{DecapReason, PROTO_IPIP, PROTO_IPV6};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    packet::{ptr_at, ptr_at_mut},
    parse::parse_l2,
};

/// IPv4 "more fragments" flag and fragment offset, in host order.
const IPV4_MF_AND_OFFSET: u16 = 0x3fff;

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

    // Keep the L2 header (MACs and VLAN tag), move it forward over the outer header.
    // SAFETY: see the IPv4 branch.
    let l2_bytes = unsafe { *ptr_at::<[u8; EthHdr::LEN + 4]>(ctx, 0).ok_or(DecapReason::Malformed)? };
    // SAFETY: the helper moves `data` within the frame's buffer or fails;
    // the pointers taken before it are not used after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(DecapReason::AdjustFailed);
    }
    let macs = ptr_at_mut::<[u8; 12]>(ctx, 0).ok_or(DecapReason::AdjustFailed)?;
    let mut mac_bytes = [0u8; 12];
    mac_bytes.copy_from_slice(&l2_bytes[..12]);
    // SAFETY: see the IPv4 branch; these pointers are taken after the move.
    unsafe {
        *macs = mac_bytes;
        if l2.len > EthHdr::LEN {
            *ptr_at_mut::<[u8; 4]>(ctx, 12).ok_or(DecapReason::AdjustFailed)? = [l2_bytes[12], l2_bytes[13], l2_bytes[14], l2_bytes[15]];
        }
        *ptr_at_mut::<u16>(ctx, l2.len - 2).ok_or(DecapReason::AdjustFailed)? = inner_ether_type_be;
    }
    Ok(DecapReason::Decapsulated)
}
