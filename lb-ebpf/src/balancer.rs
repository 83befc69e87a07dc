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
    lookup::{address_entry, filter_word, lookup_vip, previous_owners, FilterWord},
    maps::policy,
    parse::{is_tcp_udp, parse_ip, parse_l2, parse_ports, peek_destination, Flow, Ip},
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
    let filter = filter_word(peek_destination(ctx, l2)?).ok_or(Reason::NoVip)?;
    let ip = parse_ip(ctx, l2)?;
    if ip.fragment {
        return fragment::handle(ctx, &ip);
    }
    if is_tcp_udp(ip.proto) {
        return balance_flow(ctx, &ip, &filter);
    }
    if icmp::is_icmp(&ip) {
        return icmp::handle(ctx, &ip, &filter);
    }
    Err(Reason::NotTcpUdp)
}

#[inline(always)]
fn balance_flow(ctx: &XdpContext, ip: &Ip, filter: &FilterWord) -> Result<Reason, Reason> {
    let (src_port_be, dst_port_be) = parse_ports(ctx, ip.l4_offset, ip.l4_len, ip.proto)?;
    let flow = Flow::of(ip, src_port_be, dst_port_be);
    let Some(vip) = lookup_vip(&flow, filter) else {
        // Past the address filter, so most likely a VIP address: one lookup
        // tells an unconfigured port of a VIP address from a filter collision.
        if address_entry(ip).is_some() {
            return Err(if policy(POLICY_UNKNOWN_PORT_DROP) { Reason::UnknownPortDropped } else { Reason::UnknownPortPassed });
        }
        return Err(Reason::NoVip);
    };
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
