//! VIP lookup and backend choice through the VIP's Maglev ring.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    hash::{flow_hash_v4, flow_hash_v6, ports_word, source_hash},
    BackendEntry, Reason, VipKey, VipMeta, FAMILY_V4, NO_BACKEND, VIP_FLAG_SOURCE_HASH,
};

use crate::{
    counters::{count_backend, count_vip},
    encap,
    maps::{hash_seed, ring_size, BACKENDS, RINGS, VIPS},
    parse::{parse_flow, Flow},
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
    let flow = parse_flow(ctx)?;
    let vip = lookup_vip(&flow).ok_or(Reason::NoVip)?;
    let hash = flow_hash(&flow, &vip);
    let (backend_id, backend) = pick_backend(&vip, hash)?;
    let frame_len = ctx.data_end() - ctx.data();
    encap::encapsulate(ctx, &flow, &backend, hash)?;
    count_vip(vip.row, frame_len);
    count_backend(backend_id, frame_len);
    Ok(Reason::Forwarded)
}

/// Exact (address, port, protocol) first, then the VIP's all-ports entry.
#[inline(always)]
fn lookup_vip(flow: &Flow) -> Option<VipMeta> {
    let mut key = VipKey { addr: flow.dst, port_be: flow.dst_port_be, proto: flow.proto, family: flow.family };
    if let Some(meta) = unsafe { VIPS.get(&key) } {
        return Some(*meta);
    }
    key.port_be = 0;
    unsafe { VIPS.get(&key) }.copied()
}

#[inline(always)]
fn flow_hash(flow: &Flow, vip: &VipMeta) -> u32 {
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
fn pick_backend(vip: &VipMeta, hash: u32) -> Result<(u32, BackendEntry), Reason> {
    let size = ring_size();
    // checked: a zero size (never loaded by the agent) must not be a division trap.
    let slot = vip.row.wrapping_mul(size) + hash.checked_rem(size).ok_or(Reason::MapError)?;
    let id = *RINGS.get(slot).ok_or(Reason::MapError)?;
    if id == NO_BACKEND {
        return Err(Reason::NoBackend);
    }
    let backend = *BACKENDS.get(id).ok_or(Reason::UnknownBackend)?;
    if backend.family == 0 {
        return Err(Reason::UnknownBackend);
    }
    Ok((id, backend))
}
