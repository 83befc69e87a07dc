//! ICMP and ICMPv6 to VIP addresses.
//!
//! - Echo requests are answered by the LB itself (`POLICY_ECHO_REPLY`) or
//!   passed to the host stack.
//! - Errors (destination unreachable including fragmentation-needed, time
//!   exceeded; ICMPv6 destination unreachable, packet-too-big, time exceeded)
//!   about a VIP flow are sent to that flow's backend. The error quotes the
//!   packet the backend sent (VIP -> client), so the quoted header with source
//!   and destination swapped is the client's flow, and hashing it gives the
//!   client's backend: the one whose socket needs the news (PMTU discovery).
//!   On a `flow_state = "backend"` VIP that is the slot's current owner only
//!   (GUE without previous owners): the backends judge TCP by its socket and
//!   have no rule for an ICMP error's quoted connection, so a connection its
//!   slot moved away from does not get the news.
//! - Everything else to a VIP address passes (`icmp_to_vip`); ICMP to other
//!   addresses passes untouched (`not_tcp_udp`).

use aya_ebpf::programs::XdpContext;
use lb_common::{packet_policy::POLICY_ECHO_REPLY, Reason, FAMILY_V4, FAMILY_V6};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    addr::words16,
    forward::{forward, TooBig},
    icmp_wire::{
        ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REQUEST, ICMPV6_PACKET_TOO_BIG, ICMPV6_TIME_EXCEEDED, ICMP_DEST_UNREACH,
        ICMP_ECHO_REQUEST, ICMP_HEADER_LEN, ICMP_TIME_EXCEEDED, PROTO_ICMP, PROTO_ICMPV6,
    },
    lookup::{flow_hash, lookup_vip, FilterWord},
    maps::policy,
    packet::read,
    parse::{is_tcp_udp, Destination, Flow, Ip},
    reply,
};

/// Bytes of the quoted TCP/UDP header we read: the two ports.
const QUOTED_PORTS_LEN: usize = 4;
/// IPv4 fragment offset bits: a quoted later fragment has no ports.
const IPV4_OFFSET_MASK: u16 = 0x1fff;

#[inline(always)]
pub fn is_icmp(ip: &Ip) -> bool {
    (ip.family == FAMILY_V4 && ip.proto == PROTO_ICMP) || (ip.family == FAMILY_V6 && ip.proto == PROTO_ICMPV6)
}

#[inline(always)]
pub fn handle(ctx: &XdpContext, ip: &Ip, filter: &FilterWord) -> Result<Reason, Reason> {
    // Bounds check before the length check, which LLVM would otherwise use to drop it.
    let Some(header) = read::<[u8; ICMP_HEADER_LEN]>(ctx, ip.l4_offset) else { return Err(unclaimed(ip, filter)) };
    if ip.l4_len < ICMP_HEADER_LEN {
        return Err(unclaimed(ip, filter));
    }
    let icmp_type = header[0];
    let (echo, error) = if ip.family == FAMILY_V4 {
        (icmp_type == ICMP_ECHO_REQUEST, icmp_type == ICMP_DEST_UNREACH || icmp_type == ICMP_TIME_EXCEEDED)
    } else {
        (
            icmp_type == ICMPV6_ECHO_REQUEST,
            icmp_type == ICMPV6_DEST_UNREACH || icmp_type == ICMPV6_PACKET_TOO_BIG || icmp_type == ICMPV6_TIME_EXCEEDED,
        )
    };
    if echo {
        if !filter.is_vip_address(Destination::of(ip)) {
            return Err(Reason::NoVip);
        }
        if !policy(POLICY_ECHO_REPLY) {
            return Err(Reason::IcmpToVip);
        }
        if ip.ttl == 0 {
            return Err(Reason::TtlZero);
        }
        if !reply::echo_request_is_sound(ctx, ip) {
            // The stack judges (and drops) what we could only answer wrongly.
            return Err(Reason::IcmpToVip);
        }
        reply::echo(ctx, ip)?;
        return Ok(Reason::IcmpEchoReply);
    }
    if !error {
        return Err(unclaimed(ip, filter));
    }
    let Some(flow) = quoted_flow(ctx, ip) else { return Err(unclaimed(ip, filter)) };
    // The quoted source is the packet's destination (`quoted_flow`), so the
    // destination's filter word holds the flow's VIP key bits.
    let Some(vip) = lookup_vip(&flow, filter) else { return Err(unclaimed(ip, filter)) };
    if ip.ttl == 0 {
        return Err(Reason::TtlZero);
    }
    forward(ctx, &flow, &vip, flow_hash(&flow, &vip), TooBig::Drop)?;
    Ok(Reason::IcmpErrorForwarded)
}

/// ICMP we do not act on: `icmp_to_vip` if addressed to a VIP address
/// (past the balancer's address filter, anything else is a collision).
#[inline(always)]
fn unclaimed(ip: &Ip, filter: &FilterWord) -> Reason {
    if filter.is_vip_address(Destination::of(ip)) {
        Reason::IcmpToVip
    } else {
        Reason::NoVip
    }
}

/// The client's flow from the header an ICMP error quotes: the quoted packet
/// went VIP -> client, so source and destination (addresses and ports) are
/// swapped back. Framing (L2, length, TOS) is the ICMP packet's, which is
/// what gets encapsulated. `None` unless the quote holds a TCP/UDP header
/// (at least its ports) of a packet sent from the address the error is for.
#[inline(always)]
fn quoted_flow(ctx: &XdpContext, ip: &Ip) -> Option<Flow> {
    let quote = ip.l4_offset + ICMP_HEADER_LEN;
    let ip_end = ip.l4_offset + ip.l4_len;
    let (src, dst, proto, ports_at) = if ip.family == FAMILY_V4 {
        let q = read::<Ipv4Hdr>(ctx, quote)?;
        let (vihl, proto, frags) = (q.vihl, q.proto, u16::from_be_bytes(q.frags));
        let header_len = ((vihl & 0x0f) as usize) * 4;
        if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || frags & IPV4_OFFSET_MASK != 0 {
            return None;
        }
        let src = [u32::from_ne_bytes(q.src_addr), 0, 0, 0];
        let dst = [u32::from_ne_bytes(q.dst_addr), 0, 0, 0];
        (src, dst, proto, quote + header_len)
    } else {
        let q = read::<Ipv6Hdr>(ctx, quote)?;
        if q.vcf[0] >> 4 != 6 {
            return None;
        }
        (words16(&q.src_addr), words16(&q.dst_addr), q.next_hdr, quote + Ipv6Hdr::LEN)
    };
    // Only errors about packets we would have sent: from the address the error is for.
    let [s0, s1, d0, d1] = read::<[u8; QUOTED_PORTS_LEN]>(ctx, ports_at)?;
    if !is_tcp_udp(proto) || src != ip.dst || ports_at + QUOTED_PORTS_LEN > ip_end {
        return None;
    }
    let (quoted_src_port_be, quoted_dst_port_be) = (u16::from_ne_bytes([s0, s1]), u16::from_ne_bytes([d0, d1]));
    Some(Flow {
        l2: ip.l2,
        family: ip.family,
        src: dst,
        dst: src,
        src_port_be: quoted_dst_port_be,
        dst_port_be: quoted_src_port_be,
        proto,
        tos: ip.tos,
        ip_len: ip.ip_len,
    })
}
