//! Forwarding toward a chosen backend: the MTU check (answered or dropped,
//! per `TooBig`), encapsulation, and the VIP and backend counters.

use aya_ebpf::programs::XdpContext;
use lb_common::{packet_policy::POLICY_TOO_BIG_ICMP, BackendEntry, Reason, VipMeta};

use crate::{
    counters::{count_backend, count_vip},
    encap,
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
