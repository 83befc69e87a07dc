//! Connection tracking: the flow table the kernel keeps (5-tuple -> backend
//! id), the member table that says whether a recorded backend may still be
//! used, the flow counters, and the record of what the pinned object was
//! loaded with (so a restarted agent can tell whether it may adopt it).

use crate::AddrWords;

/// Flow table entries unless the config says otherwise: about a million
/// flows (Katran's default), a few hundred MiB of kernel memory at most.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 20;
/// Fewer entries than this make the per-CPU LRU lists useless.
pub const MIN_FLOW_TABLE_SIZE: u32 = 1 << 10;
/// The largest flow table the agent accepts.
pub const MAX_FLOW_TABLE_SIZE: u32 = 1 << 26;

/// VIP flag: do not use the flow table for this VIP (pure stateless Maglev:
/// every packet goes through the ring).
pub const VIP_FLAG_STATELESS: u32 = 1 << 2;

/// `MEMBERS` value: the backend may take (and keep) flows of this VIP row.
pub const MEMBER_USABLE: u32 = 1;
/// `MEMBERS` value: not a member, removed, or down: recorded flows re-hash.
pub const MEMBER_UNUSABLE: u32 = 0;

/// Index in `MEMBERS` of (VIP row, backend id).
#[inline(always)]
pub const fn member_index(row: u32, backend_id: u32, max_backends: u32) -> u32 {
    row.wrapping_mul(max_backends).wrapping_add(backend_id)
}

/// Key of `FLOWS`: the packet's 5-tuple as it arrives (client -> VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: AddrWords,
    pub dst: AddrWords,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    #[inline(always)]
    pub const fn new(src: AddrWords, dst: AddrWords, src_port_be: u16, dst_port_be: u16, proto: u8, family: u8) -> Self {
        FlowKey { src, dst, src_port_be, dst_port_be, proto, family, _pad: [0; 2] }
    }
}

/// Value of `FLOWS`: the backend the flow was sent to, and the flow's hash
/// (a pure function of the key and the seed, kept so that a known flow's
/// packets skip hashing: the IPv6 flow label and the GUE source port use it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub backend_id: u32,
    pub hash: u32,
}
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 8);

/// What the flow table did for one packet (index in `FLOW_STATS`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEvent {
    /// A known flow went to its recorded backend.
    Hit = 0,
    /// An unknown flow or a TCP SYN: chosen by the ring and recorded.
    Miss = 1,
    /// A known flow whose backend is no longer usable: chosen again by the ring.
    Rehash = 2,
    /// A `Miss` of a TCP packet without SYN, counted again here: an
    /// established connection the table no longer holds (evicted from a
    /// too small table) or never saw (begun on another LB host). Such flows
    /// break at the next ring change. Katran counts these apart too.
    NonSynMiss = 3,
    /// A `Miss` the new-flow guard did not record (counted again here): this
    /// CPU had already recorded its limit of new flows in the current second
    /// (see [`crate::flow_guard`]). Forwarded by the ring all the same.
    Unrecorded = 4,
}

impl FlowEvent {
    /// The lookup results: each packet looked up counts as exactly one.
    pub const ALL: &'static [FlowEvent] = &[FlowEvent::Hit, FlowEvent::Miss, FlowEvent::Rehash];
    /// Every counter of `FLOW_STATS`: the lookup results, then `NonSynMiss`
    /// and `Unrecorded` (each a part of `Miss`).
    pub const COUNTERS: &'static [FlowEvent] =
        &[FlowEvent::Hit, FlowEvent::Miss, FlowEvent::Rehash, FlowEvent::NonSynMiss, FlowEvent::Unrecorded];
    pub const COUNT: u32 = 5;

    pub const fn label(self) -> &'static str {
        match self {
            FlowEvent::Hit => "hit",
            FlowEvent::Miss => "miss",
            FlowEvent::Rehash => "rehash",
            FlowEvent::NonSynMiss => "non_syn_miss",
            FlowEvent::Unrecorded => "guard_unrecorded",
        }
    }
}

/// Version of [`LoadedState`]'s meaning; bump when the object's maps change
/// in a way an older pinned object cannot serve (6: REASON_STATS lost
/// `fragment`, later reasons moved down one; 7: `VIP_FILTER` entries list
/// IPv4 VIP addresses).
pub const LOADED_STATE_VERSION: u32 = 7;

/// The one entry of `LOADED`: what the pinned object was loaded with. A
/// restarting agent compares it with its config; any difference needs a new
/// object (map sizes and load-time globals cannot change in place).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadedState {
    pub version: u32,
    pub ring_size: u32,
    pub hash_seed: u32,
    pub max_vips: u32,
    pub max_backends: u32,
    pub flow_table_size: u32,
    pub mtu: u32,
    pub policy: u32,
    /// `ifindex` of the interface the link attaches to.
    pub ifindex: u32,
    pub tunnel_source_v4: AddrWords,
    pub tunnel_source_v6: AddrWords,
    /// The `events::LEVEL_GLOBAL` the object was loaded with (`events::OFF`
    /// or `events::ON`). Unlike the fields above, a difference does not stop
    /// an adoption: the agent warns and keeps what runs.
    pub kernel_events: u32,
    /// The `GUE_PORT` global (a changed `lb.gue_port` needs a new object).
    pub gue_port: u32,
}
const _: () = assert!(core::mem::size_of::<LoadedState>() == 76);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers only, no implicit padding (size assertions).
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LoadedState {}
}
