//! Kernel events for debugging, through aya-log's ring buffer: which VIP
//! packets were not forwarded and why, and which flows were placed or moved.
//! Off unless the agent loads the object with `--kernel-events`
//! (`lb_common::events`): loaded as 0, aya-log's `AYA_LOG_LEVEL` global is a
//! constant, and each function below tests it first, so the verifier
//! removes everything after that test and the data path pays nothing.
//! Packets for no VIP are never logged (they are the host's traffic).

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::{
    debug,
    macro_support::{level_enabled, Level},
};
use lb_common::{flows::FlowEvent, AddrWords, Reason, FAMILY_V4};

use crate::{addr::words_bytes, parse::Flow};

/// A packet that the balancer did not forward, other than host traffic.
#[inline(always)]
pub fn decision(ctx: &XdpContext, reason: Reason, frame_len: usize) {
    if !on() || matches!(reason, Reason::Forwarded | Reason::NoVip | Reason::NotIp) {
        return;
    }
    debug!(ctx, "{} ({}): {} bytes", reason.label(), reason.action().label(), frame_len);
}

/// A flow placed by the ring (`Miss`: new or unknown, `Rehash`: its recorded
/// backend is gone) on backend `id`.
#[inline(always)]
pub fn flow_placed(ctx: &XdpContext, flow: &Flow, event: FlowEvent, id: u32) {
    if !on() {
        return;
    }
    let what = match event {
        FlowEvent::Rehash => "moved",
        _ => "new",
    };
    let (sport, dport) = (u16::from_be(flow.src_port_be), u16::from_be(flow.dst_port_be));
    if flow.family == FAMILY_V4 {
        debug!(
            ctx,
            "{} flow {:i}:{} -> {:i}:{} proto {}: backend {}",
            what,
            v4(&flow.src),
            sport,
            v4(&flow.dst),
            dport,
            flow.proto,
            id
        );
    } else {
        debug!(
            ctx,
            "{} flow [{:i}]:{} -> [{:i}]:{} proto {}: backend {}",
            what,
            words_bytes(&flow.src),
            sport,
            words_bytes(&flow.dst),
            dport,
            flow.proto,
            id
        );
    }
}

/// Whether the object was loaded with events (the level of every record
/// here); tested before any other work of an event, not only before the
/// record as aya-log's macros do.
#[inline(always)]
fn on() -> bool {
    level_enabled(Level::Debug)
}

/// An IPv4 address in host order, as aya-log's `{:i}` wants a `u32`.
#[inline(always)]
fn v4(words: &AddrWords) -> u32 {
    u32::from_be_bytes(words[0].to_ne_bytes())
}
