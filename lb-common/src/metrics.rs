//! Names of the Prometheus metrics `lb-agent run` serves, and of their labels.
//! The agent, the tests and `contrib/` (alerts, dashboard) use these names;
//! the kernel never sees them. Conventions: counters end in `_total`, values
//! are in base units (bytes, seconds), info-style gauges end in `_info` and
//! are always 1.

/// Counter `{vip}`: packets the balancer forwarded for the VIP.
pub const VIP_PACKETS: &str = "lb_vip_packets_total";
/// Counter `{vip}`: bytes (L2 frame, before encapsulation) forwarded for the VIP.
pub const VIP_BYTES: &str = "lb_vip_bytes_total";
/// Counter `{backend}`: packets sent to the backend, over all VIPs that use it.
pub const BACKEND_PACKETS: &str = "lb_backend_packets_total";
/// Counter `{backend}`: bytes sent to the backend, over all VIPs that use it.
pub const BACKEND_BYTES: &str = "lb_backend_bytes_total";
/// Counter `{vip, backend}`: packets the VIP forwarded to the backend (the
/// kernel's one counter per forwarded packet; `VIP_PACKETS` and
/// `BACKEND_PACKETS` are its sums over every backend id / VIP row).
pub const VIP_BACKEND_PACKETS: &str = "lb_vip_backend_packets_total";
/// Counter `{vip, backend}`: bytes (L2 frame, before encapsulation) the VIP forwarded to the backend.
pub const VIP_BACKEND_BYTES: &str = "lb_vip_backend_bytes_total";
/// Counter `{reason, action}`: every packet the balancer saw, by why it got its action.
pub const PACKETS: &str = "lb_packets_total";
/// Counter `{reason, action}`: bytes of those packets.
pub const BYTES: &str = "lb_bytes_total";
/// Counter `{result}`: flow table lookups of TCP/UDP packets to VIPs that use it
/// (`hit`, `miss`, `rehash`: `lb_common::flows::FlowEvent::label`).
pub const FLOW_LOOKUPS: &str = "lb_flow_table_lookups_total";
/// Counter: flow table misses of TCP packets without SYN (also counted as
/// `miss`): established flows the table lost (`FlowEvent::NonSynMiss`).
pub const FLOW_NON_SYN_MISSES: &str = "lb_flow_table_non_syn_misses_total";
/// Counter: new flows forwarded by the ring but not recorded in the flow
/// table, because their CPU was above `lb.new_flow_guard` new flows per
/// second (`FlowEvent::Unrecorded`, also counted as `miss`).
pub const FLOW_GUARD_UNRECORDED: &str = "lb_flow_guard_unrecorded_total";
/// Gauge: flows the table can hold (`lb.flow_table_size`; an LRU per CPU).
pub const FLOW_TABLE_SIZE: &str = "lb_flow_table_size";
/// Gauge: flows the table holds now (counted from the pinned `FLOWS` map at each scrape).
pub const FLOW_TABLE_ENTRIES: &str = "lb_flow_table_entries";
/// Gauge `{vip, backend}`: 1 while the backend is healthy (or not checked), 0 while down.
pub const BACKEND_UP: &str = "lb_backend_up";
/// Gauge `{vip, backend}`: seconds since the backend's health state last changed (or the agent started).
pub const BACKEND_HEALTH_AGE: &str = "lb_backend_health_state_age_seconds";
/// Counter `{vip, backend}`: health state changes since the agent started.
pub const BACKEND_HEALTH_CHANGES: &str = "lb_backend_health_changes_total";
/// Histogram `{vip}`: duration of each health check of the VIP's backends (a timed-out check counts its timeout).
pub const HEALTH_CHECK_DURATION: &str = "lb_health_check_duration_seconds";
/// Gauge `{vip}`: backends of the VIP that are up (0: the VIP has no healthy backend).
pub const VIP_BACKENDS_UP: &str = "lb_vip_backends_up";
/// Gauge: slots of every VIP's Maglev ring.
pub const RING_SIZE: &str = "lb_ring_size";
/// Gauge `{vip, backend}`: fraction of the VIP's ring slots the backend owns now (0..=1).
pub const RING_SHARE: &str = "lb_ring_share_ratio";
/// Gauge `{vip}`: ring slots that have at least one previous owner now, however
/// many (up to `second_chance::MAX_PREVIOUS_OWNERS`) they name: the slots whose
/// connections a backend may send on (`flow_state = "backend"` VIPs after a ring
/// change, until `lb.previous_owner_window` passes; 0 for other VIPs).
pub const VIP_PREVIOUS_OWNER_SLOTS: &str = "lb_vip_previous_owner_slots";
/// Counter `{reason, action}`: packets the backends' decap program saw
/// (`lb-agent decap --metrics`), by outcome (`lb_common::DecapReason::label`).
pub const DECAP_PACKETS: &str = "lb_decap_packets_total";
/// Counter `{reason, action}`: bytes of those packets.
pub const DECAP_BYTES: &str = "lb_decap_bytes_total";
/// Gauge: bumped every time the agent programs a config (1 after start).
pub const CONFIG_GENERATION: &str = "lb_config_generation";
/// Gauge `{fingerprint}` = 1: fingerprint of the effective config (`lb-agent check`), equal on LB hosts that forward alike.
pub const CONFIG_INFO: &str = "lb_config_info";
/// Gauge `{vip, digest}` = 1: the digest of the VIP's all-up Maglev ring (`lb-agent check`, `list`); equal on LB hosts that send the VIP's flows alike.
pub const VIP_RING_INFO: &str = "lb_vip_ring_info";
/// Gauge `{vip, backend}`: 1 while the backend is drained (weight 0, in the file or by `lb-agent drain`), else 0.
pub const BACKEND_DRAINED: &str = "lb_backend_drained";
/// Gauge `{version}` = 1: the agent's version.
pub const BUILD_INFO: &str = "lb_build_info";
/// Gauge `{interface, mode}` = 1: where the balancer is attached and how (`native` or `generic` XDP).
pub const XDP_ATTACH_INFO: &str = "lb_xdp_attach_info";

/// The metrics of `lb-agent decap --metrics` (a backend host's own endpoint).
pub const DECAP_ALL: &[&str] = &[DECAP_PACKETS, DECAP_BYTES, BUILD_INFO];

/// Every metric name `lb-agent run` serves, for tests and documentation.
pub const ALL: &[&str] = &[
    VIP_PACKETS,
    VIP_BYTES,
    BACKEND_PACKETS,
    BACKEND_BYTES,
    VIP_BACKEND_PACKETS,
    VIP_BACKEND_BYTES,
    PACKETS,
    BYTES,
    FLOW_LOOKUPS,
    FLOW_NON_SYN_MISSES,
    FLOW_GUARD_UNRECORDED,
    FLOW_TABLE_SIZE,
    FLOW_TABLE_ENTRIES,
    BACKEND_UP,
    BACKEND_HEALTH_AGE,
    BACKEND_HEALTH_CHANGES,
    HEALTH_CHECK_DURATION,
    VIP_BACKENDS_UP,
    RING_SIZE,
    RING_SHARE,
    VIP_PREVIOUS_OWNER_SLOTS,
    CONFIG_GENERATION,
    CONFIG_INFO,
    VIP_RING_INFO,
    BACKEND_DRAINED,
    BUILD_INFO,
    XDP_ATTACH_INFO,
];

/// Label names.
pub mod labels {
    /// A VIP's `name` from the config.
    pub const VIP: &str = "vip";
    /// A backend's address.
    pub const BACKEND: &str = "backend";
    /// A packet reason's label (`lb_common::Reason::label`).
    pub const REASON: &str = "reason";
    /// The XDP action of that reason (`lb_common::Action::label`).
    pub const ACTION: &str = "action";
    /// What the flow table did (`hit`, `miss`, `rehash`).
    pub const RESULT: &str = "result";
    pub const FINGERPRINT: &str = "fingerprint";
    /// A VIP's ring digest (`lb_agent::plan::ring_digest::label`).
    pub const DIGEST: &str = "digest";
    pub const VERSION: &str = "version";
    pub const INTERFACE: &str = "interface";
    pub const MODE: &str = "mode";
}
