//! Per-packet dispatch, VIP lookup and backend choice through the VIP's Maglev
//! ring, the MTU check, and the hand-off to encapsulation.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    hash::{flow_hash_v4, flow_hash_v6, ports_word, source_hash},
    packet_policy::{address_key, POLICY_TOO_BIG_ICMP, POLICY_UNKNOWN_PORT_DROP},
    vip_filter, AddrWords, BackendEntry, Reason, VipKey, VipMeta, FAMILY_V4, NO_BACKEND, VIP_FLAG_SOURCE_HASH,
};

use crate::{
    counters::{count_backend, count_vip},
    encap, flows, fragment, icmp,
    maps::{hash_seed, mtu, policy, ring_size, BACKENDS, RINGS, VIPS, VIP_FILTER},
    parse::{is_tcp_udp, parse_ip, parse_ports, Flow, Ip},
    reply,
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
    let ip = parse_ip(ctx)?;
    if ip.fragment {
        return fragment::handle(ctx, &ip);
    }
    if is_tcp_udp(ip.proto) {
        return balance_flow(ctx, &ip);
    }
    if icmp::is_icmp(&ip) {
        return icmp::handle(ctx, &ip);
    }
    Err(Reason::NotTcpUdp)
}

#[inline(always)]
fn balance_flow(ctx: &XdpContext, ip: &Ip) -> Result<Reason, Reason> {
    let (src_port_be, dst_port_be) = parse_ports(ctx, ip.l4_offset, ip.l4_len, ip.proto)?;
    let flow = Flow::of(ip, src_port_be, dst_port_be);
    if !may_be_vip_address(&flow.dst, flow.family) {
        return Err(Reason::NoVip);
    }
    let Some(vip) = lookup_vip(&flow) else {
        // Past the filter, so most likely a VIP address: one more lookup
        // tells an unconfigured port of a VIP address from a filter collision.
        if address_entry(ip).is_some() {
            return Err(if policy(POLICY_UNKNOWN_PORT_DROP) { Reason::UnknownPortDropped } else { Reason::UnknownPortPassed });
        }
        return Err(Reason::NoVip);
    };
    if ip.ttl == 0 {
        return Err(Reason::TtlZero);
    }
    let hash = flow_hash(&flow, &vip);
    let (backend_id, backend) = flows::choose(ctx, ip, &flow, &vip, hash, ctx.data_end() - ctx.data())?;
    forward_to(ctx, &flow, &vip, hash, TooBig::Answer, backend_id, backend)?;
    Ok(Reason::Forwarded)
}

/// What to do with a packet that would exceed the MTU once encapsulated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TooBig {
    /// A TCP/UDP packet: answer per `POLICY_TOO_BIG_ICMP`.
    Answer,
    /// ICMP errors and fragments: never answered with ICMP (RFC 1122 3.2.2).
    Drop,
}

/// Picks the backend from the VIP's ring, checks the MTU and encapsulates.
#[inline(always)]
pub fn forward(ctx: &XdpContext, flow: &Flow, vip: &VipMeta, hash: u32, too_big: TooBig) -> Result<(), Reason> {
    let (backend_id, backend) = pick_backend(vip, hash)?;
    forward_to(ctx, flow, vip, hash, too_big, backend_id, backend)
}

/// Checks the MTU and encapsulates toward a backend already chosen.
#[inline(always)]
pub fn forward_to(
    ctx: &XdpContext,
    flow: &Flow,
    vip: &VipMeta,
    hash: u32,
    too_big: TooBig,
    backend_id: u32,
    backend: BackendEntry,
) -> Result<(), Reason> {
    let overhead = encap::overhead(&backend);
    let limit = mtu() as usize;
    if limit != 0 && flow.ip_len + overhead > limit {
        if too_big == TooBig::Answer && policy(POLICY_TOO_BIG_ICMP) {
            reply::too_big(ctx, flow, (limit - overhead) as u32)?;
            return Err(Reason::TooBigIcmp);
        }
        return Err(Reason::TooBigDropped);
    }
    let frame_len = ctx.data_end() - ctx.data();
    encap::encapsulate(ctx, flow, &backend, hash)?;
    count_vip(vip.row, frame_len);
    count_backend(backend_id, frame_len);
    Ok(())
}

/// Exact (address, port, protocol) first, then the VIP's all-ports entry.
#[inline(always)]
pub fn lookup_vip(flow: &Flow) -> Option<VipMeta> {
    let mut key = VipKey { addr: flow.dst, port_be: flow.dst_port_be, proto: flow.proto, family: flow.family };
    if let Some(meta) = unsafe { VIPS.get(&key) } {
        return Some(*meta);
    }
    key.port_be = 0;
    unsafe { VIPS.get(&key) }.copied()
}

/// The address entry of the packet's destination, if it is a VIP address.
#[inline(always)]
pub fn lookup_address(ip: &Ip) -> Option<VipMeta> {
    if !may_be_vip_address(&ip.dst, ip.family) {
        return None;
    }
    address_entry(ip)
}

/// [`lookup_address`] without the filter, for callers that checked it.
#[inline(always)]
fn address_entry(ip: &Ip) -> Option<VipMeta> {
    unsafe { VIPS.get(&address_key(ip.dst, ip.family)) }.copied()
}

/// False when `addr` is certainly no VIP address (its `VIP_FILTER` bit is
/// clear): one array read, where the VIP table would take two lookups.
#[inline(always)]
pub fn may_be_vip_address(addr: &AddrWords, family: u8) -> bool {
    let (word, mask) = vip_filter::word_and_mask(vip_filter::bit(addr, family));
    VIP_FILTER.get(word).is_none_or(|w| *w & mask != 0)
}

#[inline(always)]
pub fn is_vip_address(ip: &Ip) -> bool {
    lookup_address(ip).is_some()
}

#[inline(always)]
pub fn flow_hash(flow: &Flow, vip: &VipMeta) -> u32 {
    let seed = hash_seed();
    if vip.flags & VIP_FLAG_SOURCE_HASH != 0 {
        return source_hash(seed, flow.family, &flow.src);
    }
    let ports = ports_word(flow.src_port_be, flow.dst_port_be);
    if flow.family == FAMILY_V4 {
        flow_hash_v4(seed, flow.src[0], flow.dst[0], ports, flow.proto)
    } else {
        flow_hash_v6(seed, &flow.src, &flow.dst, ports, flow.proto)
    }
}

/// `ring[hash % M]` in the VIP's row of `RINGS`.
#[inline(always)]
pub fn pick_backend(vip: &VipMeta, hash: u32) -> Result<(u32, BackendEntry), Reason> {
    let size = ring_size();
    // checked: a zero size (never loaded by the agent) must not be a division trap.
    let slot = vip.row.wrapping_mul(size) + hash.checked_rem(size).ok_or(Reason::MapError)?;
    let id = *RINGS.get(slot).ok_or(Reason::MapError)?;
    if id == NO_BACKEND {
        return Err(Reason::NoBackend);
    }
    let backend = backend_entry(id).ok_or(Reason::UnknownBackend)?;
    Ok((id, backend))
}

/// The entry of backend `id`, if it is in use (family set).
#[inline(always)]
pub fn backend_entry(id: u32) -> Option<BackendEntry> {
    let backend = *BACKENDS.get(id)?;
    (backend.family != 0).then_some(backend)
}
