//! Per-CPU counters: no atomics needed, the agent sums the CPUs.

use aya_ebpf::maps::PerCpuArray;
use lb_common::{flows::member_index, Counter, DecapReason, Reason};

use crate::maps::{max_backends, DECAP_STATS, MEMBER_STATS, REASON_STATS};

#[inline(always)]
fn bump(map: &PerCpuArray<Counter>, index: u32, bytes: usize) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and XDP does not nest.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}

#[inline(always)]
pub fn count_reason(reason: Reason, bytes: usize) {
    bump(&REASON_STATS, reason as u32, bytes);
}

#[inline(always)]
pub fn count_decap(reason: DecapReason, bytes: usize) {
    bump(&DECAP_STATS, reason as u32, bytes);
}

/// A packet VIP row `row` forwarded to backend `id`: one per-CPU counter
/// for both (the agent sums VIP and backend totals from these).
#[inline(always)]
pub fn count_member(row: u32, id: u32, bytes: usize) {
    bump(&MEMBER_STATS, member_index(row, id, max_backends()), bytes);
}

#[inline(always)]
pub fn count_flow(event: lb_common::flows::FlowEvent, bytes: usize) {
    bump(&crate::maps::FLOW_STATS, event as u32, bytes);
}

/// A frame the bench's veth peer received (see `live_frames`).
#[inline(always)]
pub fn count_peer(bytes: usize) {
    bump(&crate::maps::PEER_RECEIVED, 0, bytes);
}
