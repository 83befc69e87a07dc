//! The bench's live-frames programs (see `lb_common::live_frames`): the
//! wrapper that restores each repeat's frame before the measured program,
//! and the veth peer's counter.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::live_frames::{RESTORE_LEN, SRC_PORT_OFFSET};

use crate::{
    counters,
    maps::{LIVE_FRAME, LIVE_TARGET},
    packet::ptr_at_mut,
};

/// Writes the original headers back (the previous repeat's program may have
/// rewritten them), sets this repeat's source port, then tail-calls the
/// measured program. `XDP_ABORTED` if the frame or the target is missing.
#[xdp]
pub fn xdp_live_restore(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a tail call with our own context; it only returns on failure.
    unsafe { LIVE_TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

#[inline(always)]
fn restore(ctx: &XdpContext) -> Option<()> {
    let frame = LIVE_FRAME.get_ptr_mut(0)?;
    let headers: *mut [u8; RESTORE_LEN] = ptr_at_mut(ctx, 0)?;
    // SAFETY: `frame` is the map's entry (only the bench CPU's test run uses
    // it), `headers` is bounds-checked by `ptr_at_mut`.
    unsafe {
        *headers = (*frame).bytes;
        let n = (*frame).next;
        (*frame).next = n.wrapping_add(1);
        if (*frame).flows > 1 {
            let port: *mut [u8; 2] = ptr_at_mut(ctx, SRC_PORT_OFFSET)?;
            let first = u16::from_be_bytes(*port);
            *port = first.wrapping_add((n % (*frame).flows) as u16).to_be_bytes();
        }
    }
    Some(())
}

/// Counts every frame in `PEER_RECEIVED` and drops it.
#[xdp]
pub fn xdp_count_drop(ctx: XdpContext) -> u32 {
    counters::count_peer(ctx.data_end() - ctx.data());
    xdp_action::XDP_DROP
}
