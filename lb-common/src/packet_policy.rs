//! Packet policies the kernel and the agent agree on: the bits of the `POLICY`
//! load-time global, and VIP *address entries*, which tell the kernel that an
//! address belongs to a VIP even when the packet has no port to look up
//! (fragments, ICMP, TCP/UDP to a port no VIP configures).
//!
//! An address entry lives in `VIPS` under a key that no packet can produce:
//! port 0 and protocol [`PROTO_ADDRESS_ENTRY`] (the kernel only looks up
//! TCP/UDP keys). Its value says whether, and through which VIP's ring,
//! fragments to that address are forwarded, and in which tunnel.

use crate::{second_chance::VIP_FLAG_GUE, AddrWords, VipKey, VipMeta};

/// `POLICY` bit: answer ICMP/ICMPv6 echo requests to VIP addresses ourselves
/// (otherwise they pass to the host stack).
pub const POLICY_ECHO_REPLY: u32 = 1 << 0;
/// `POLICY` bit: answer a packet that would exceed the MTU once encapsulated
/// with fragmentation-needed / packet-too-big (otherwise drop it).
pub const POLICY_TOO_BIG_ICMP: u32 = 1 << 1;
/// `POLICY` bit: drop TCP/UDP to a VIP address on a port no VIP configures
/// (otherwise pass it: the host may serve that port itself).
pub const POLICY_UNKNOWN_PORT_DROP: u32 = 1 << 2;
/// The defaults: answer echo, answer too-big, pass unknown ports. Also the
/// kernel's value when nobody overrides the global.
pub const DEFAULT_POLICY: u32 = POLICY_ECHO_REPLY | POLICY_TOO_BIG_ICMP;

/// Protocol of an address entry's key: 0 (IPv6 hop-by-hop) is never the
/// protocol of a flow the kernel looks up.
pub const PROTO_ADDRESS_ENTRY: u8 = 0;

/// VIP flag: forward this VIP's fragments (hashing addresses only) instead of
/// dropping them. Set on the VIP's own entry for the record, and copied into
/// its address entry, which is what the kernel reads.
pub const VIP_FLAG_FRAGMENTS_FORWARD: u32 = 1 << 1;

/// In an address entry's flags: the protocol whose fragments are forwarded
/// sits in these bits (0 = none), the ring row in `VipMeta::row`.
const FRAGMENT_PROTO_SHIFT: u32 = 8;
const FRAGMENT_PROTO_MASK: u32 = 0xff;

/// The `VIPS` key of the address entry for `addr`.
#[inline(always)]
pub const fn address_key(addr: AddrWords, family: u8) -> VipKey {
    VipKey { addr, port_be: 0, proto: PROTO_ADDRESS_ENTRY, family }
}

/// The flags of the forwarding VIP an address entry copies: its
/// encapsulation, so its fragments travel in the tunnel its other packets
/// use (the kernel reads the GUE bit of the address entry, having no VIP
/// entry for a packet without ports).
pub const ADDRESS_ENTRY_COPIED_FLAGS: u32 = VIP_FLAG_GUE;

/// The value of an address entry: fragments of protocol `proto` go through
/// the ring (row) of the VIP `vip`, encapsulated as that VIP's packets are;
/// `None`: fragments to this address are dropped.
#[inline(always)]
pub const fn address_meta(fragments: Option<(&VipMeta, u8)>) -> VipMeta {
    match fragments {
        Some((vip, proto)) => VipMeta {
            row: vip.row,
            flags: VIP_FLAG_FRAGMENTS_FORWARD
                | (vip.flags & ADDRESS_ENTRY_COPIED_FLAGS)
                | ((proto as u32) << FRAGMENT_PROTO_SHIFT),
        },
        None => VipMeta { row: 0, flags: 0 },
    }
}

/// The ring row for fragments of `proto` to an address with entry `meta`.
#[inline(always)]
pub const fn fragment_row(meta: &VipMeta, proto: u8) -> Option<u32> {
    let forwarded = (meta.flags >> FRAGMENT_PROTO_SHIFT) & FRAGMENT_PROTO_MASK;
    if meta.flags & VIP_FLAG_FRAGMENTS_FORWARD != 0 && forwarded == proto as u32 {
        Some(meta.row)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PROTO_TCP, PROTO_UDP};

    #[test]
    fn fragment_row_only_for_the_forwarded_protocol() {
        let m = address_meta(Some((&VipMeta { row: 3, flags: 0 }, PROTO_UDP)));
        assert_eq!(fragment_row(&m, PROTO_UDP), Some(3));
        assert_eq!(fragment_row(&m, PROTO_TCP), None);
        assert_eq!(fragment_row(&address_meta(None), PROTO_UDP), None);
        assert_eq!(fragment_row(&address_meta(None), 0), None);
    }

    #[test]
    fn an_address_entry_copies_the_encapsulation_and_nothing_else() {
        use crate::{flows::VIP_FLAG_STATELESS, second_chance::VIP_FLAG_SECOND_CHANCE, VIP_FLAG_SOURCE_HASH};
        let other = VIP_FLAG_SECOND_CHANCE | VIP_FLAG_STATELESS | VIP_FLAG_SOURCE_HASH;
        let gue = address_meta(Some((&VipMeta { row: 2, flags: VIP_FLAG_GUE | other }, PROTO_TCP)));
        assert_eq!(gue.flags & !(VIP_FLAG_GUE | VIP_FLAG_FRAGMENTS_FORWARD), (PROTO_TCP as u32) << FRAGMENT_PROTO_SHIFT);
        assert_ne!(gue.flags & VIP_FLAG_GUE, 0, "a GUE VIP's fragments go in GUE");
        assert_eq!(fragment_row(&gue, PROTO_TCP), Some(2), "the GUE bit leaves the protocol bits alone");
        let ipip = address_meta(Some((&VipMeta { row: 2, flags: other }, PROTO_TCP)));
        assert_eq!(ipip.flags & VIP_FLAG_GUE, 0);
    }
}
