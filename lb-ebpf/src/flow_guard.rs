//! The new-flow guard (see `lb_common::flow_guard`): whether this CPU may
//! record one more new flow in its current one-second window.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::flow_guard::{GUARD_OFF, WINDOW_NS};

use crate::maps::FLOW_GUARD;

/// True if the flow table may record this new flow (the guard is off, or
/// this CPU is under its limit); counts it in the window when it is.
#[inline(always)]
pub fn admit_new_flow() -> bool {
    let Some(guard) = FLOW_GUARD.get_ptr_mut(0) else { return true };
    // SAFETY: a per-CPU slot is only touched by this CPU, and XDP does not
    // nest; the agent's write of a new limit may reset the window, no more.
    let guard = unsafe { &mut *guard };
    if guard.limit == GUARD_OFF {
        return true;
    }
    // The coarse clock (last tick, a few ms old at most) is plenty for a
    // one-second window and spares every new flow a clock read, which costs
    // tens of ns on a VM's paravirtual clock.
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(guard.window_start_ns) >= WINDOW_NS {
        guard.window_start_ns = now;
        guard.recorded = 0;
    }
    if guard.recorded >= guard.limit {
        return false;
    }
    guard.recorded += 1;
    true
}
