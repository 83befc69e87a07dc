//! The balancer's per-packet dispatch: traffic to other addresses passes on
//! its destination alone (`VIP_FILTER`); fragments, TCP/UDP flows and ICMP
//! each go to their policy; a TCP/UDP packet to a VIP is placed by the flow
//! table (or, TCP to a second-chance VIP, by the ring alone) and forwarded,
//! in GUE with the slot's previous owner for a second-chance VIP.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    packet_policy::POLICY_UNKNOWN_PORT_DROP,
    second_chance::{NO_PREVIOUS_OWNERS, VIP_FLAG_GUE},
    Reason,
};

use crate::{
    flows,
    forward::{forward_gue_to, forward_to, TooBig},
    fragment, icmp,
    lookup::{filter_word, lookup_vip, previous_owners, FilterWord},
    maps::policy,
    parse::{is_tcp_udp, parse_head, parse_l2, parse_ports, peek_destination, Destination, Flow, Ip},
};

/// Decides what happens to one packet; the caller counts the reason and
/// returns its action.
#[inline(always)]
pub fn balance(ctx: &XdpContext) -> Reason {
    match try_balance(ctx) {
        Ok(reason) | Err(reason) => reason,
    }
}

#[inline(always)]
fn try_balance(ctx: &XdpContext) -> Result<Reason, Reason> {
    let l2 = parse_l2(ctx)?;
    // Host traffic, most of what a shared NIC sees, goes on its destination
    // alone: nothing the balancer does applies to other addresses, and the
    // stack validates what it gets anyway.
    let destination = peek_destination(ctx, l2)?;
    let filter = filter_word(destination).ok_or(Reason::NoVip)?;
    let head = parse_head(ctx, l2)?;
    if head.fragment {
        return fragment::handle(ctx, &head.ip(ctx)?);
    }
    if is_tcp_udp(head.proto) {
        let (src_port_be, dst_port_be) = parse_ports(ctx, head.l4_offset, head.l4_len, head.proto)?;
        // The port is tested before the rest of the header is read: an
        // unconfigured port of a VIP address passes without it.
        if !filter.may_have_port(dst_port_be, head.proto) {
            return Err(unconfigured_port(&filter, destination));
        }
        return balance_flow(ctx, &head.ip(ctx)?, (src_port_be, dst_port_be), &filter, destination);
    }
    let ip = head.ip(ctx)?;
    if icmp::is_icmp(&ip) {
        return icmp::handle(ctx, &ip, &filter);
    }
    Err(Reason::NotTcpUdp)
}

/// A TCP/UDP packet to `destination`, with `ports` (source, destination).
#[inline(always)]
fn balance_flow(
    ctx: &XdpContext,
    ip: &Ip,
    (src_port_be, dst_port_be): (u16, u16),
    filter: &FilterWord,
    destination: Destination,
) -> Result<Reason, Reason> {
    let flow = Flow::of(ip, src_port_be, dst_port_be);
    let Some(vip) = lookup_vip(&flow, filter) else { return Err(unconfigured_port(filter, destination)) };
    if ip.ttl == 0 {
        return Err(Reason::TtlZero);
    }
    let (backend_id, backend, hash) = flows::choose(ctx, ip, &flow, &vip, ctx.data_end() - ctx.data())?;
    if vip.flags & VIP_FLAG_GUE != 0 {
        let previous =
            if flows::ring_only(ip, &vip) { previous_owners(&vip, hash, backend_id, backend.family) } else { NO_PREVIOUS_OWNERS };
        forward_gue_to(ctx, &flow, &vip, hash, TooBig::Answer, backend_id, backend, &previous)?;
        return Ok(Reason::Forwarded);
    }
    forward_to(ctx, &flow, &vip, hash, TooBig::Answer, backend_id, backend)?;
    Ok(Reason::Forwarded)
}

/// A packet past the address filter with no VIP for its port: most likely
/// to a VIP address (the filter word tells, or the VIP table), else a
/// filter collision, which is host traffic.
#[inline(always)]
fn unconfigured_port(filter: &FilterWord, destination: Destination) -> Reason {
    if !filter.is_vip_address(destination) {
        return Reason::NoVip;
    }
    if policy(POLICY_UNKNOWN_PORT_DROP) {
        Reason::UnknownPortDropped
    } else {
        Reason::UnknownPortPassed
    }
}
