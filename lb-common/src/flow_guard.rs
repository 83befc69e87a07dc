//! The new-flow guard: above a rate of new flows per CPU, new flows are
//! still forwarded by the ring but no longer recorded in the flow table, so
//! a SYN flood neither evicts established flows nor pays the insert per
//! packet (Katran stops writing its LRU the same way). Flows already in the
//! table keep their entries; a flow not recorded sticks to its ring slot
//! only, as on a stateless VIP, until a packet of it arrives below the rate.

/// New flows recorded per second per CPU unless the config says otherwise:
/// Katran's default (its `max_conn_rate` of 125,000 new connections per
/// second per core), far above what a healthy service opens on one core.
pub const DEFAULT_NEW_FLOWS_PER_CPU_PER_SECOND: u32 = 125_000;
/// The largest rate the agent accepts (a CPU inserts a few million flows per
/// second at most; a higher limit would only mean "off").
pub const MAX_NEW_FLOWS_PER_CPU_PER_SECOND: u32 = 100_000_000;
/// `FlowGuard::limit` of a guard that is off: every new flow is recorded.
pub const GUARD_OFF: u32 = 0;
/// Length of the window the rate is counted over.
pub const WINDOW_NS: u64 = 1_000_000_000;

/// The one entry of the per-CPU `FLOW_GUARD` map. The agent owns `limit`
/// (written to every CPU's entry on start and reload, with the rest zero);
/// each CPU's balancer owns its `window_start_ns` and `recorded`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowGuard {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC) when this CPU's current window began.
    pub window_start_ns: u64,
    /// New flows this CPU recorded in the current window.
    pub recorded: u32,
    /// New flows a CPU records per window; [`GUARD_OFF`]: no limit.
    pub limit: u32,
}
const _: () = assert!(core::mem::size_of::<FlowGuard>() == 16);

impl FlowGuard {
    /// The entry the agent writes for a limit (`None`: the guard is off).
    pub const fn with_limit(per_cpu_per_second: Option<u32>) -> Self {
        let limit = match per_cpu_per_second {
            Some(n) => n,
            None => GUARD_OFF,
        };
        FlowGuard { window_start_ns: 0, recorded: 0, limit }
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers only, no implicit padding (size assertion).
unsafe impl aya::Pod for FlowGuard {}
