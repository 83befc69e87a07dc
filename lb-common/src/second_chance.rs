//! Flow state on the backends ("second chance", after GitHub's GLB director)
//! and the GUE encapsulation that carries it.
//!
//! A VIP with [`VIP_FLAG_SECOND_CHANCE`] keeps no flow state on the LB host
//! for TCP: every packet follows the ring. Each ring slot also knows up to
//! [`MAX_PREVIOUS_OWNERS`] previous owners, newest first (`maps::PREVIOUS`,
//! one [`PreviousOwners`] per slot, written by the agent when a slot changes;
//! each one cleared when its drain window ends). The balancer sends the
//! packet to the slot's current owner in a GUE header whose private data
//! lists the previous owners. The backend's decap program accepts a SYN, a
//! packet of a connection it has a socket for, or a valid SYN cookie;
//! anything else it sends on to `previous[hops]` with `hops + 1`, and the
//! last one named (`hops == count`) accepts whatever it gets. So a
//! connection survives its slot changing up to [`MAX_PREVIOUS_OWNERS`] times
//! within the window (A -> B -> C: C sends to B, B to A).
//!
//! Wire format (draft-ietf-intarea-gue, variant 0), after the outer IP and
//! UDP headers (UDP destination port: the configured GUE port, default
//! [`DEFAULT_GUE_PORT`]; source port: [`gue_source_port`] of the flow hash):
//!
//! ```text
//!  0                   1                   2                   3
//! |0 0|C|  Hlen   |  Proto/ctype  |             Flags             |  GueHeader
//! |      kind (SECOND_CHANCE_KIND)|      hops     |     count     |  SecondChance,
//! |          previous[0]: newest previous owner (16 bytes,        |  present only
//! |                 IPv4 in the first 4)                          |  when a previous
//! |          previous[1] ... previous[count - 1]                  |  owner is named
//! ```
//! `C` = 0, `Flags` = 0; `Proto/ctype` is 4 (inner IPv4) or 41 (inner IPv6).
//! With no previous owner the balancer sends `Hlen` = 0 and no private data;
//! otherwise `Hlen` = [`second_chance_hlen`]`(count)`, `count` in
//! `1..=MAX_PREVIOUS_OWNERS`. Every listed address has the outer header's
//! family: a backend rewrites the outer header in place, so it can only send
//! on within that family, and the balancer leaves out previous owners of the
//! other family (their connections cannot be reached from this owner).
//!
//! The decap program's rules for a block (each outcome a `DecapReason`):
//! `count` 0, above [`MAX_PREVIOUS_OWNERS`] or not matching `Hlen`: dropped
//! (`second_chance_bad_count`); `hops > count`: dropped
//! (`second_chance_hops_beyond_count`: no sender of ours makes it);
//! `hops == count`: accepted (`accepted_redirected`); otherwise judged.

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

/// How many previous owners a ring slot keeps (and a packet names): a
/// connection survives that many changes of its slot within the drain window.
/// 2 fills the 8 bytes the kernel gives each `PREVIOUS` element anyway
/// (array values are 8-byte aligned), so it costs no map memory.
pub const MAX_PREVIOUS_OWNERS: usize = 2;

/// One element of `maps::PREVIOUS`: a ring slot's previous owners' backend
/// ids, newest first, `NO_BACKEND` (0) after the last one. No id appears
/// twice, none is the slot's current owner, and no gap precedes an id.
pub type PreviousOwners = [u32; MAX_PREVIOUS_OWNERS];

/// No previous owner.
pub const NO_PREVIOUS_OWNERS: PreviousOwners = [crate::NO_BACKEND; MAX_PREVIOUS_OWNERS];

/// How many previous owners a [`PreviousOwners`] names (its entries before
/// the first `NO_BACKEND`).
#[inline(always)]
pub fn named(owners: &PreviousOwners) -> usize {
    let mut count = 0;
    while count < MAX_PREVIOUS_OWNERS && owners[count] != crate::NO_BACKEND {
        count += 1;
    }
    count
}

/// GUE private data of a second-chance packet: this head, then `count`
/// addresses ([`crate::AddrWords`], 16 bytes each), newest previous owner first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecondChance {
    /// [`SECOND_CHANCE_KIND`], network order.
    pub kind_be: u16,
    /// 0 from the balancer; each backend that sends the packet on adds 1 and
    /// sends it to `previous[hops]` (the old value).
    pub hops: u8,
    /// Previous owners listed after this head, `1..=MAX_PREVIOUS_OWNERS`.
    pub count: u8,
}
const _: () = assert!(core::mem::size_of::<SecondChance>() == 4);

/// Bytes of one listed previous owner's address.
pub const PREVIOUS_ADDR_LEN: usize = core::mem::size_of::<AddrWords>();

/// Bytes of the private data naming `count` previous owners.
#[inline(always)]
pub const fn second_chance_len(count: usize) -> usize {
    core::mem::size_of::<SecondChance>() + count * PREVIOUS_ADDR_LEN
}

/// `Hlen` (32-bit words after the GUE header) of private data naming
/// `count` previous owners; 0 names none.
#[inline(always)]
pub const fn second_chance_hlen(count: usize) -> u8 {
    if count == 0 { 0 } else { (second_chance_len(count) / 4) as u8 }
}

/// `Hlen` of the private data with one previous owner (the smallest block).
pub const SECOND_CHANCE_HLEN: u8 = second_chance_hlen(1);

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
    fn hlen_counts_the_head_and_each_address() {
        assert_eq!(second_chance_hlen(0), 0, "no previous owner: no private data");
        assert_eq!(SECOND_CHANCE_HLEN, 5);
        assert_eq!(second_chance_hlen(2), 9);
        assert!(second_chance_hlen(MAX_PREVIOUS_OWNERS) <= GUE_HLEN_MASK, "fits the 5-bit Hlen");
        assert!(core::mem::size_of::<PreviousOwners>() <= 8, "one PREVIOUS element stays 8 bytes");
    }

    #[test]
    fn source_ports_stay_in_the_dynamic_range_and_follow_the_hash() {
        assert_eq!(gue_source_port(0), 0xc000);
        assert_eq!(gue_source_port(u32::MAX), 0xffff);
        assert_ne!(gue_source_port(1), gue_source_port(2));
    }
}
