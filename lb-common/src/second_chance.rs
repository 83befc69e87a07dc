//! Flow state on the backends ("second chance", after GitHub's GLB director)
//! and the GUE encapsulation that carries it.
//!
//! A VIP with [`VIP_FLAG_SECOND_CHANCE`] keeps no flow state on the LB host
//! for TCP: every packet follows the ring. Each ring slot also knows its
//! previous owner (`maps::PREVIOUS`, written by the agent when a slot
//! changes, cleared when the drain window ends). The balancer sends the
//! packet to the slot's current owner in a GUE header whose private data
//! names the previous owner. The backend's decap program accepts a SYN, a
//! packet of a connection it has a socket for, or a valid SYN cookie;
//! anything else it sends once to the previous owner (hops 0 -> 1), which
//! accepts whatever it gets.
//!
//! Wire format (draft-ietf-intarea-gue, variant 0), after the outer IP and
//! UDP headers (UDP destination port: the configured GUE port, default
//! [`DEFAULT_GUE_PORT`]; source port: [`gue_source_port`] of the flow hash):
//!
//! ```text
//!  0                   1                   2                   3
//! |0 0|C|  Hlen   |  Proto/ctype  |             Flags             |  GueHeader
//! |      kind (SECOND_CHANCE_KIND)|      hops     |    family     |  SecondChance,
//! |                previous owner address (16 bytes,              |  present only
//! |                 IPv4 in the first 4)                          |  when Hlen = 5
//! ```
//! `C` = 0, `Flags` = 0; `Proto/ctype` is 4 (inner IPv4) or 41 (inner IPv6).
//! With no previous owner the balancer sends `Hlen` = 0 and no private data.

use crate::AddrWords;

/// VIP flag: flow state lives on the backends (second chance). TCP skips the
/// flow table; UDP keeps it (there is no connection for a backend to look up).
pub const VIP_FLAG_SECOND_CHANCE: u32 = 1 << 3;
/// VIP flag: encapsulate in GUE (IP/UDP/GUE) instead of IPIP / IP6IP6.
/// Always set together with [`VIP_FLAG_SECOND_CHANCE`].
pub const VIP_FLAG_GUE: u32 = 1 << 4;

/// Default UDP destination port of GUE tunnels (Katran's).
pub const DEFAULT_GUE_PORT: u16 = 6080;

/// GUE version 0, control bit clear: the top three bits of the first byte.
pub const GUE_VERSION_0: u8 = 0;
/// Mask of `Hlen` in the first byte.
pub const GUE_HLEN_MASK: u8 = 0x1f;

/// The 4-byte GUE base header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GueHeader {
    /// Version (2 bits, 0), C (1 bit, 0), Hlen (5 bits: 32-bit words after this header).
    pub version_hlen: u8,
    /// Inner protocol: `PROTO_IPIP` (4) or `PROTO_IPV6` (41).
    pub proto: u8,
    /// No optional fields are used: always 0.
    pub flags_be: u16,
}
const _: () = assert!(core::mem::size_of::<GueHeader>() == 4);

/// `SecondChance::kind` in network order: "LB", so a stray private block
/// of another GUE user is not taken for ours.
pub const SECOND_CHANCE_KIND: u16 = 0x4c42;

/// GUE private data of a second-chance packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecondChance {
    /// [`SECOND_CHANCE_KIND`], network order.
    pub kind_be: u16,
    /// 0 from the balancer; 1 after a backend redirected it (never redirected again).
    pub hops: u8,
    /// `FAMILY_V4` / `FAMILY_V6` of `previous`.
    pub family: u8,
    /// The previous owner's tunnel address, as in `BackendEntry::addr`.
    pub previous: AddrWords,
}
const _: () = assert!(core::mem::size_of::<SecondChance>() == 20);

/// `Hlen` of a header that carries [`SecondChance`] (in 32-bit words).
pub const SECOND_CHANCE_HLEN: u8 = (core::mem::size_of::<SecondChance>() / 4) as u8;

/// UDP source port of a GUE packet: from the flow hash, in the dynamic
/// range (49152-65535), so NIC RSS and router ECMP spread tunnels per flow.
#[inline(always)]
pub const fn gue_source_port(flow_hash: u32) -> u16 {
    0xc000 | (flow_hash & 0x3fff) as u16
}

/// Drain window unless the config says otherwise: how long a ring slot
/// keeps its previous owner after it changed (long enough for established
/// connections of interest; the agent clears it after that).
pub const DEFAULT_DRAIN_SECONDS: u32 = 3_600;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers only, no implicit padding (size assertions above).
    unsafe impl aya::Pod for super::GueHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SecondChance {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ports_stay_in_the_dynamic_range_and_follow_the_hash() {
        assert_eq!(gue_source_port(0), 0xc000);
        assert_eq!(gue_source_port(u32::MAX), 0xffff);
        assert_ne!(gue_source_port(1), gue_source_port(2));
    }
}
