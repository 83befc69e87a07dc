//! The VIP address filter: a bitmap over hashed destination addresses that
//! lets the balancer pass traffic for other hosts (most of what a NIC sees
//! on a host that is not only a load balancer) after one array read instead
//! of two VIP-table lookups. A set bit means "maybe a VIP address" (other
//! addresses can hash to it, and the VIP table then decides); a clear bit
//! means certainly not.
//!
//! Each VIP key (address, port, protocol; port 0 for all-ports VIPs) has a
//! bit of its own too, in its address's word ([`port_bit`]): the one word
//! read for the address also tells a port no VIP configures.
//!
//! Order of writes (lb-agent reconcile): the bits of new addresses are set
//! before their VIPs are inserted, and bits are cleared only after every VIP
//! of their addresses is gone, so the filter never hides a VIP.

use crate::AddrWords;

/// `u64` words of the filter (`VIP_FILTER` entries): 65,536 bits, 8 KiB.
pub const WORDS: u32 = 1024;
/// Bits of the filter; a power of two.
pub const BITS: u32 = WORDS * u64::BITS;
const _: () = assert!(BITS.is_power_of_two());

/// The filter bit of a destination address (words as in the packet, see
/// [`AddrWords`]; IPv4 in word 0): a multiply-shift hash of its folded words.
#[inline(always)]
pub fn bit(addr: &AddrWords, family: u8) -> u32 {
    spread(fold(addr, family))
}

/// [`bit`] of an IPv4 address (its one word): the same bit, without
/// folding three words known to be zero (the balancer's first test of every
/// IPv4 packet).
#[inline(always)]
pub fn bit_v4(addr: u32) -> u32 {
    spread(fold_v4(addr))
}

/// The bit of VIP key (address, port, protocol), port 0 for an all-ports
/// VIP: in the address's own word, so the word the balancer read to test
/// the address answers for the port too, and a port no VIP of the address
/// configures usually skips the VIP table.
#[inline(always)]
pub fn port_bit(addr: &AddrWords, family: u8, port_be: u16, proto: u8) -> u32 {
    Place::of(addr, family).port_bit(port_be, proto)
}

/// An address's word in the filter and what its bits there are made of.
#[derive(Clone, Copy)]
pub struct Place {
    /// The address's bit ([`bit`]); its word is `address_bit / 64`.
    pub address_bit: u32,
    folded: u32,
}

impl Place {
    #[inline(always)]
    pub fn of(addr: &AddrWords, family: u8) -> Self {
        let folded = fold(addr, family);
        Place { address_bit: spread(folded), folded }
    }

    #[inline(always)]
    pub fn of_v4(addr: u32) -> Self {
        let folded = fold_v4(addr);
        Place { address_bit: spread(folded), folded }
    }

    /// See [`port_bit`].
    #[inline(always)]
    pub fn port_bit(&self, port_be: u16, proto: u8) -> u32 {
        // Any other value than the address's own fold; the constant keeps
        // protocol 0 and port 0 from folding back onto it.
        let key = self.folded ^ ((u32::from(port_be) << 16) | (u32::from(proto) << 8)) ^ 0x5bd1_0000;
        (self.address_bit & !(u64::BITS - 1)) | (key.wrapping_mul(0x9E37_79B1) >> (u32::BITS - u64::BITS.trailing_zeros()))
    }
}

#[inline(always)]
fn fold(addr: &AddrWords, family: u8) -> u32 {
    addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24) ^ u32::from(family)
}

/// [`fold`] of `[addr, 0, 0, 0]` and `FAMILY_V4`.
#[inline(always)]
fn fold_v4(addr: u32) -> u32 {
    addr ^ u32::from(crate::FAMILY_V4)
}

/// A multiply-shift hash of a folded word onto the filter's bits.
#[inline(always)]
fn spread(folded: u32) -> u32 {
    folded.wrapping_mul(0x9E37_79B1) >> (u32::BITS - BITS.trailing_zeros())
}

/// Word index and mask of a bit.
#[inline(always)]
pub const fn word_and_mask(bit: u32) -> (u32, u64) {
    (bit / u64::BITS, 1 << (bit % u64::BITS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv4_shortcut_gives_the_same_bits() {
        // A spread of addresses, as the packet holds them (network order read natively).
        for i in 0u32..10_000 {
            let addr = i.wrapping_mul(0x0101_0F3D) ^ 0xC000_0200;
            assert_eq!(bit_v4(addr), bit(&[addr, 0, 0, 0], crate::FAMILY_V4), "address word {addr:#x}");
            let place = Place::of_v4(addr);
            assert_eq!(place.port_bit(80u16.to_be(), 6), port_bit(&[addr, 0, 0, 0], crate::FAMILY_V4, 80u16.to_be(), 6));
        }
    }

    #[test]
    fn port_bits_share_the_address_word_and_spread_within_it() {
        let addr = [0x0a02_00c0, 0, 0, 0];
        let address_word = bit(&addr, crate::FAMILY_V4) / u64::BITS;
        let mut seen = [false; u64::BITS as usize];
        for port in 1u16..=1024 {
            let b = port_bit(&addr, crate::FAMILY_V4, port.to_be(), 6);
            assert_eq!(b / u64::BITS, address_word, "port {port} left the address's word");
            seen[(b % u64::BITS) as usize] = true;
        }
        assert!(seen.iter().filter(|s| **s).count() >= 60, "1,024 ports reach almost every bit of the word");
        assert_ne!(port_bit(&addr, crate::FAMILY_V4, 0, 6), port_bit(&addr, crate::FAMILY_V4, 0, 17), "all-ports TCP and UDP differ");
    }
}
