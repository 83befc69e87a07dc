//! Map keys and values. Every type is `#[repr(C)]` with explicit padding
//! (implicit padding is uninitialised in Rust literals and makes hash lookups
//! miss) and a size assertion, so kernel and agent cannot drift apart.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family tags used in keys (not the kernel's AF_* values: these are
/// the IP version numbers, which is what the packet says).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers we care about.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// IPv4 inside an IP tunnel (IPIP).
pub const PROTO_IPIP: u8 = 4;
/// IPv6 inside an IP tunnel.
pub const PROTO_IPV6: u8 = 41;

/// Backend id that means "no backend": an empty or cleared ring slot fails safe.
pub const NO_BACKEND: u32 = 0;

/// VIP flag: hash on the source address only (client affinity) instead of the 5-tuple.
pub const VIP_FLAG_SOURCE_HASH: u32 = 1 << 0;

/// An IPv4 or IPv6 address as it is in the packet: its 16 (or 4) bytes read as
/// four native-endian `u32` words, so the kernel copies words without byte swaps.
/// IPv4 uses word 0 and leaves the others zero.
pub type AddrWords = [u32; 4];

/// Converts an address to the word form used in maps and in the flow hash.
pub const fn addr_words(addr: IpAddr) -> (AddrWords, u8) {
    match addr {
        IpAddr::V4(v4) => (v4_words(v4), FAMILY_V4),
        IpAddr::V6(v6) => (v6_words(v6), FAMILY_V6),
    }
}

pub const fn v4_words(addr: Ipv4Addr) -> AddrWords {
    [u32::from_ne_bytes(addr.octets()), 0, 0, 0]
}

pub const fn v6_words(addr: Ipv6Addr) -> AddrWords {
    let o = addr.octets();
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The inverse of [`addr_words`]; `None` for an unknown family.
pub fn words_addr(words: &AddrWords, family: u8) -> Option<IpAddr> {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3]))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(o))),
        _ => None,
    }
}

/// Key of `VIPS`. A VIP with `port_be == 0` matches every port of its address and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: AddrWords,
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

impl VipKey {
    pub fn new(addr: IpAddr, port: u16, proto: u8) -> Self {
        let (addr, family) = addr_words(addr);
        Self { addr, port_be: port.to_be(), proto, family }
    }
}

/// Value of `VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipMeta {
    /// Row of this VIP's ring in `RINGS` and of its `MEMBER_STATS` counters.
    pub row: u32,
    /// `VIP_FLAG_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<VipMeta>() == 8);

/// Value of `BACKENDS`: where the packets of one backend go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    /// Tunnel destination (the backend's address).
    pub addr: AddrWords,
    /// Destination MAC of the outer frame: the next hop toward the backend.
    pub next_hop_mac: [u8; 6],
    /// `FAMILY_V4` or `FAMILY_V6`: the outer header we build. 0 = unused entry.
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<BackendEntry>() == 24);

/// A per-CPU packet and byte counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

impl Counter {
    /// Adds another CPU's counter (the agent sums per-CPU values).
    pub fn add(&mut self, other: &Counter) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers and byte
    // arrays, and have no implicit padding (checked by the size assertions).
    unsafe impl aya::Pod for super::VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VipMeta {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counter {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_words_round_trip() {
        for a in ["192.0.2.10", "2001:db8::1", "0.0.0.0", "::ffff:198.51.100.1"] {
            let ip: IpAddr = a.parse().unwrap();
            let (w, f) = addr_words(ip);
            assert_eq!(words_addr(&w, f), Some(ip));
        }
    }

    #[test]
    fn v4_words_are_packet_bytes() {
        let (w, f) = addr_words("192.0.2.10".parse().unwrap());
        assert_eq!(f, FAMILY_V4);
        assert_eq!(w[0].to_ne_bytes(), [192, 0, 2, 10]);
        assert_eq!(&w[1..], &[0, 0, 0]);
    }

    #[test]
    fn vip_key_port_is_network_order() {
        let k = VipKey::new("192.0.2.10".parse().unwrap(), 80, PROTO_TCP);
        assert_eq!(k.port_be.to_ne_bytes(), [0, 80]);
    }
}
