//! Everything the XDP programs and the agent must agree on, defined once.
//!
//! - [`maps`] and [`globals`]: the names of the BPF maps and load-time globals.
//! - [`layout`]: the `#[repr(C)]` keys and values stored in those maps.
//! - [`reason`]: why a packet got the action it got (the per-reason counters).
//! - [`metrics`]: the names of the agent's Prometheus metrics and labels.
//! - [`vip_filter`]: the bitmap that passes non-VIP traffic early.
//! - [`hash`]: the flow hash, so the agent (`lb-agent lookup`, tests) computes
//!   exactly what the kernel computes.
#![no_std]
// Not in [workspace.lints]: lb-ebpf is a binary, where it flags every `pub`
// (86) and tells nothing dead_code does not; here it holds at no cost.
#![warn(unreachable_pub)]

pub mod checksum;
pub mod flow_guard;
pub mod flows;
pub mod hash;
pub mod health;
pub mod layout;
pub mod live_frames;
pub mod metrics;
pub mod packet_policy;
pub mod reason;
pub mod second_chance;
pub mod vip_filter;

pub use layout::*;
pub use reason::{Action, DecapReason, Reason};

/// Names of the BPF maps in the object. The kernel side declares statics with
/// exactly these names; the agent's loader test checks that every one exists.
pub mod maps {
    /// `HashMap<VipKey, VipMeta>`: which (address, port, protocol) is a VIP.
    pub const VIPS: &str = "VIPS";
    /// `Array<u32>`: one Maglev ring of `RING_SIZE` backend ids per VIP row.
    pub const RINGS: &str = "RINGS";
    /// `Array<BackendEntry>`: backend id -> where to send its packets.
    pub const BACKENDS: &str = "BACKENDS";
    /// `PerCpuArray<Counter>` indexed like `MEMBERS` (`flows::member_index(row, id)`):
    /// what each VIP row forwarded to each backend id. VIP and backend totals
    /// are its sums (one counter per forwarded packet instead of two).
    pub const MEMBER_STATS: &str = "MEMBER_STATS";
    /// `PerCpuArray<Counter>` indexed by [`crate::Reason`].
    pub const REASON_STATS: &str = "REASON_STATS";
    /// `PerCpuArray<Counter>` indexed by [`crate::DecapReason`], used by the decap program.
    pub const DECAP_STATS: &str = "DECAP_STATS";

    /// `HashMap<HealthKey, HealthEntry>`: health of each (VIP row, backend id),
    /// written by the agent, read by `lb-agent stats`; no program uses it.
    pub const HEALTH: &str = "HEALTH";

    /// `LruHashMap<FlowKey, FlowEntry>` (`BPF_F_NO_COMMON_LRU`): the backend of each flow.
    pub const FLOWS: &str = "FLOWS";
    /// `Array<u32>` indexed by `flows::member_index(row, id)`: `MEMBER_USABLE` while a
    /// recorded flow of that VIP may stay on that backend.
    pub const MEMBERS: &str = "MEMBERS";
    /// `PerCpuArray<Counter>` indexed by [`crate::flows::FlowEvent`].
    pub const FLOW_STATS: &str = "FLOW_STATS";
    /// `Array<LoadedState>` with one entry: what the object was loaded with (see
    /// [`crate::flows::LoadedState`]); no program reads it.
    pub const LOADED: &str = "LOADED";
    /// `Array<u64>` of [`crate::vip_filter::WORDS`] words: the VIP address filter.
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// `Array<second_chance::PreviousOwners>` shaped like `RINGS` (mmapable):
    /// the previous owners of each ring slot of a second-chance VIP, newest
    /// first, `NO_BACKEND` after the last (see [`crate::second_chance`]).
    pub const PREVIOUS: &str = "PREVIOUS";
    /// `PerCpuArray<FlowGuard>` with one entry: the new-flow guard's limit and
    /// each CPU's current window (see [`crate::flow_guard`]).
    pub const FLOW_GUARD: &str = "FLOW_GUARD";

    /// Every map of the object, for pinning and for the loader test.
    pub const ALL: [&str; 14] = [
        VIPS, RINGS, BACKENDS, MEMBER_STATS, REASON_STATS, DECAP_STATS, HEALTH, FLOWS, MEMBERS, FLOW_STATS,
        LOADED, VIP_FILTER, PREVIOUS, FLOW_GUARD,
    ];
}

/// Names of the XDP programs in the object.
pub mod programs {
    /// The load balancer, attached on the LB host's NIC.
    pub const BALANCER: &str = "xdp_balancer";
    /// The decapsulator, attached on each backend host's NIC.
    pub const DECAP: &str = "xdp_decap";
    /// Passes everything: gives a veth the XDP program it needs to receive
    /// `XDP_TX` frames (tests), and is the floor of the benchmarks.
    pub const PASS: &str = "xdp_pass";
    /// Benchmark floor: parse Ethernet/IPv4/TCP, swap MACs, `XDP_TX`.
    pub const FLOOR_TX: &str = "xdp_floor_tx";
    /// tc egress on the LB host: encapsulates DSR-aware health checks.
    pub const HEALTH_ENCAP: &str = "tc_health_encap";
}

/// Load-time globals (`EbpfLoader::override_global`). They are constants to the
/// verifier, so changing one means loading the program again.
pub mod globals {
    /// `u32`: slots per Maglev ring (a prime).
    pub const RING_SIZE: &str = "RING_SIZE";
    /// `u32`: seed of the flow hash; must be equal on every LB host of a cluster.
    pub const HASH_SEED: &str = "HASH_SEED";
    /// `[u32; 4]`: outer source address for IPv4 tunnels (first word), 0 = none.
    pub const TUNNEL_SOURCE_V4: &str = "TUNNEL_SOURCE_V4";
    /// `[u32; 4]`: outer source address for IPv6 tunnels, all zero = none.
    pub const TUNNEL_SOURCE_V6: &str = "TUNNEL_SOURCE_V6";
    /// `u32`: the interface MTU (largest IP packet we may send); 0 = unknown, no check.
    pub const MTU: &str = "MTU";
    /// `u32`: packet policies, `packet_policy::POLICY_*` bits.
    pub const POLICY: &str = "POLICY";
    /// `u32`: backend ids per VIP row in `MEMBERS` (the config's `max_backends`).
    pub const MAX_BACKENDS: &str = "MAX_BACKENDS";
    /// `u16`: UDP destination port of GUE tunnels (host order): where the
    /// balancer sends GUE and where the decap program expects it.
    pub const GUE_PORT: &str = "GUE_PORT";
}

/// Kernel events (aya-log records from the balancer), for debugging; off
/// unless the agent runs with `--kernel-events`. A load-time global like the
/// others: with it at [`events::OFF`] every event is a branch on a constant
/// that the verifier removes, so the data path pays nothing for them.
pub mod events {
    /// `u8` global of aya-log-ebpf: the most verbose level that is logged.
    pub const LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";
    /// No event is logged.
    pub const OFF: u8 = 0;
    /// aya-log's `Debug` level (`Error` = 1 ... `Trace` = 5), the level every
    /// event of the object is logged at.
    pub const ON: u8 = 4;
}

/// Sizes and limits shared by both sides.
pub mod limits {
    /// Slots per ring unless the config says otherwise (a prime, as Maglev needs).
    pub const DEFAULT_RING_SIZE: u32 = 65_537;
    /// The largest ring the agent accepts (a prime; 16 MiB of ring per VIP).
    pub const MAX_RING_SIZE: u32 = 4_194_301;
    /// VIP rows reserved in `RINGS` unless the config says otherwise.
    pub const DEFAULT_MAX_VIPS: u32 = 64;
    /// Backend ids reserved in `BACKENDS` unless the config says otherwise (id 0 is never used).
    pub const DEFAULT_MAX_BACKENDS: u32 = 4_096;
    /// Hop limit / TTL of the outer header we add.
    pub const TUNNEL_TTL: u8 = 64;
    /// IPv6 extension headers (hop-by-hop, routing, destination options) skipped to find TCP/UDP.
    pub const MAX_IPV6_EXT_HEADERS: usize = 4;
}
