//! Forwarding toward a chosen backend: the MTU check (answered or dropped,
//! per `TooBig`), encapsulation (IPIP / IP6IP6 or GUE), and the VIP and
//! (VIP, backend) counter.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    packet_policy::POLICY_TOO_BIG_ICMP,
    second_chance::{PreviousOwners, NO_PREVIOUS_OWNERS, VIP_FLAG_GUE},
    BackendEntry, Reason, VipMeta,
};

use crate::{
    counters::count_member,
    encap, gue,
    lookup::pick_backend,
    maps::{mtu, policy},
    parse::Flow,
    reply,
};

/// What to do with a packet that would exceed the MTU once encapsulated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TooBig {
    /// A TCP/UDP packet: answer per `POLICY_TOO_BIG_ICMP`.
    Answer,
    /// ICMP errors and fragments: never answered with ICMP (RFC 1122 3.2.2).
    Drop,
}

/// Picks the backend from the VIP's ring, checks the MTU and encapsulates
/// (in GUE, without second-chance data, for a VIP with `VIP_FLAG_GUE`).
#[inline(always)]
pub fn forward(ctx: &XdpContext, flow: &Flow, vip: &VipMeta, hash: u32, too_big: TooBig) -> Result<(), Reason> {
    let (backend_id, backend) = pick_backend(vip, hash)?;
    if vip.flags & VIP_FLAG_GUE != 0 {
        return forward_gue_to(ctx, flow, vip, hash, too_big, backend_id, backend, &NO_PREVIOUS_OWNERS);
    }
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
    check_mtu(ctx, flow, too_big, encap::overhead(&backend))?;
    let frame_len = ctx.data_end() - ctx.data();
    encap::encapsulate(ctx, flow, &backend, hash)?;
    count_member(vip.row, backend_id, frame_len);
    Ok(())
}

/// [`forward_to`] in GUE; `previous` (a slot's previous owners) goes into
/// the second-chance block.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "as `forward_to`, plus the previous owners")]
pub fn forward_gue_to(
    ctx: &XdpContext,
    flow: &Flow,
    vip: &VipMeta,
    hash: u32,
    too_big: TooBig,
    backend_id: u32,
    backend: BackendEntry,
    previous: &PreviousOwners,
) -> Result<(), Reason> {
    check_mtu(ctx, flow, too_big, gue::overhead(&backend, previous))?;
    let frame_len = ctx.data_end() - ctx.data();
    gue::encapsulate(ctx, flow, &backend, previous, hash)?;
    count_member(vip.row, backend_id, frame_len);
    Ok(())
}

/// `Err` when the packet plus `overhead` bytes of tunnel would exceed the
/// MTU (answered with ICMP per `too_big` and the policy, or dropped).
#[inline(always)]
fn check_mtu(ctx: &XdpContext, flow: &Flow, too_big: TooBig, overhead: usize) -> Result<(), Reason> {
    let limit = mtu() as usize;
    if limit != 0 && flow.ip_len + overhead > limit {
        if too_big == TooBig::Answer && policy(POLICY_TOO_BIG_ICMP) {
            reply::too_big(ctx, flow, (limit - overhead) as u32)?;
            return Err(Reason::TooBigIcmp);
        }
        return Err(Reason::TooBigDropped);
    }
    Ok(())
}
