//! Every map and load-time global of the object. Names and value types come
//! from `lb_common`; sizes here are placeholders that the agent overrides at
//! load time (`EbpfLoader::map_max_entries`) from its config.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    limits::{DEFAULT_MAX_BACKENDS, DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE},
    flow_guard::FlowGuard,
    flows::{FlowEntry, FlowEvent, FlowKey, LoadedState, DEFAULT_FLOW_TABLE_SIZE},
    health::{HealthEntry, HealthKey},
    live_frames::LiveFrame,
    AddrWords, BackendEntry, Counter, DecapReason, Reason, VipKey, VipMeta,
};

#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(DEFAULT_MAX_VIPS * 2, 0);

/// Mappable, so the agent writes ring slots with plain stores (lb-agent rings.rs).
#[map]
pub static RINGS: Array<u32> =
    Array::with_max_entries(DEFAULT_MAX_VIPS * DEFAULT_RING_SIZE, aya_ebpf::bindings::BPF_F_MMAPABLE);

#[map]
pub static BACKENDS: Array<BackendEntry> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Forwarded packets per (VIP row, backend id), indexed like `MEMBERS`: one
/// counter per forwarded packet, which the agent sums into VIP and backend totals.
#[map]
pub static MEMBER_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS * DEFAULT_MAX_BACKENDS, 0);

#[map]
pub static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

#[map]
pub static DECAP_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DecapReason::COUNT, 0);

/// Written by the agent only (see `lb_common::maps::HEALTH`); the agent sizes
/// it for every possible pair, allocated on use (so reloads never outgrow it).
#[map]
pub static HEALTH: HashMap<HealthKey, HealthEntry> =
    HashMap::with_max_entries(DEFAULT_MAX_BACKENDS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// The flow table: shared entries, one LRU list per CPU (no cross-CPU lock on updates).
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, aya_ebpf::bindings::BPF_F_NO_COMMON_LRU);

/// Whether a recorded flow of (VIP row, backend id) may stay (see `lb_common::flows`).
#[map]
pub static MEMBERS: Array<u32> = Array::with_max_entries(DEFAULT_MAX_VIPS * DEFAULT_MAX_BACKENDS, 0);

/// The new-flow guard's limit (the agent's) and each CPU's window (see `lb_common::flow_guard`).
#[map]
pub static FLOW_GUARD: PerCpuArray<FlowGuard> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static FLOW_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(FlowEvent::COUNT, 0);

/// See `lb_common::vip_filter`; fixed size, written by the agent.
#[map]
pub static VIP_FILTER: Array<lb_common::vip_filter::FilterEntry> = Array::with_max_entries(lb_common::vip_filter::WORDS, 0);

/// The previous owners of each ring slot of a second-chance VIP, shaped like
/// `RINGS` (the agent sizes it the same); written by the agent only (see
/// `lb_common::second_chance`).
#[map]
pub static PREVIOUS: Array<lb_common::second_chance::PreviousOwners> =
    Array::with_max_entries(DEFAULT_MAX_VIPS * DEFAULT_RING_SIZE, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// The bench's live-frames section (see `lb_common::live_frames`); the agent never uses them.
#[map]
pub static LIVE_FRAME: Array<LiveFrame> = Array::with_max_entries(1, 0);
#[map]
pub static LIVE_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub static PEER_RECEIVED: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);

/// Written by the agent only (see `lb_common::maps::LOADED`).
#[map]
pub static LOADED: Array<LoadedState> = Array::with_max_entries(1, 0);

// Load-time globals (see `lb_common::globals`). `read_volatile` keeps the
// compiler from folding the defaults; the verifier sees the loaded values as
// constants and prunes accordingly.
#[unsafe(no_mangle)]
static RING_SIZE: u32 = DEFAULT_RING_SIZE;
#[unsafe(no_mangle)]
static HASH_SEED: u32 = 0;
#[unsafe(no_mangle)]
static TUNNEL_SOURCE_V4: AddrWords = [0; 4];
#[unsafe(no_mangle)]
static TUNNEL_SOURCE_V6: AddrWords = [0; 4];
#[unsafe(no_mangle)]
static MTU: u32 = 0;
#[unsafe(no_mangle)]
static POLICY: u32 = lb_common::packet_policy::DEFAULT_POLICY;
#[unsafe(no_mangle)]
static MAX_BACKENDS: u32 = DEFAULT_MAX_BACKENDS;
#[unsafe(no_mangle)]
static GUE_PORT: u16 = lb_common::second_chance::DEFAULT_GUE_PORT;

#[inline(always)]
pub fn ring_size() -> u32 {
    // SAFETY: a reference to a static is valid and aligned; volatile only
    // so that the compiler does not fold the default (see above).
    unsafe { core::ptr::read_volatile(&RING_SIZE) }
}

#[inline(always)]
pub fn hash_seed() -> u32 {
    // SAFETY: as in `ring_size`.
    unsafe { core::ptr::read_volatile(&HASH_SEED) }
}

#[inline(always)]
pub fn tunnel_source_v4() -> u32 {
    // SAFETY: as in `ring_size`.
    unsafe { core::ptr::read_volatile(&TUNNEL_SOURCE_V4[0]) }
}

#[inline(always)]
pub fn tunnel_source_v6() -> AddrWords {
    // SAFETY: as in `ring_size`.
    unsafe { core::ptr::read_volatile(&TUNNEL_SOURCE_V6) }
}

/// The largest IP packet the interface sends; 0 = unknown (no check).
#[inline(always)]
pub fn mtu() -> u32 {
    // SAFETY: as in `ring_size`.
    unsafe { core::ptr::read_volatile(&MTU) }
}

/// Whether a `lb_common::packet_policy::POLICY_*` bit is set.
#[inline(always)]
pub fn policy(bit: u32) -> bool {
    // SAFETY: as in `ring_size`.
    let bits = unsafe { core::ptr::read_volatile(&POLICY) };
    bits & bit != 0
}

/// Backend ids per VIP row in `MEMBERS`.
#[inline(always)]
pub fn max_backends() -> u32 {
    // SAFETY: as in `ring_size`.
    unsafe { core::ptr::read_volatile(&MAX_BACKENDS) }
}

/// UDP destination port of GUE tunnels, in network order (as in the packet).
#[inline(always)]
pub fn gue_port_be() -> u16 {
    // SAFETY: as in `ring_size`.
    unsafe { core::ptr::read_volatile(&GUE_PORT) }.to_be()
}
