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
//! Each word's entry ([`FilterEntry`]) also lists the IPv4 VIP addresses
//! whose address bit it holds (up to [`LISTED_V4`]): an IPv4 packet to an
//! unconfigured port is told from a filter collision by comparing words,
//! without the VIP-table lookup that an unlisted address still takes.
//!
//! Order of writes (lb-agent reconcile): the bits and listings of new
//! addresses are written before their VIPs are inserted, and cleared only
//! after every VIP of their addresses is gone, so the filter never hides a VIP.

use crate::AddrWords;

/// Words of the filter (`VIP_FILTER` entries): 65,536 bits, 24 KiB with
/// the listings.
pub const WORDS: u32 = 1024;
/// IPv4 VIP addresses a word lists; a word holding more address bits of
/// IPv4 VIPs sends their packets to the VIP table (with 100 VIP addresses
/// over 1,024 words, four in one word is about one chance in 4,000).
pub const LISTED_V4: usize = 3;

/// One `VIP_FILTER` entry: 64 filter bits, and the IPv4 VIP addresses
/// whose address bit is among them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterEntry {
    pub bits: u64,
    /// The first `v4_count` (at most [`LISTED_V4`]) IPv4 VIP addresses of
    /// the word, as the packet holds them; the rest 0.
    pub v4: [u32; LISTED_V4],
    /// IPv4 VIP addresses whose address bit is in this word, listed or not.
    pub v4_count: u32,
}
const _: () = assert!(core::mem::size_of::<FilterEntry>() == 24);

/// Whether an IPv4 destination that passed its bit test is a VIP address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    Yes,
    No,
    /// The word has more IPv4 VIP addresses than it lists: ask the VIP table.
    Unknown,
}

impl FilterEntry {
    /// Every bit set and nothing listed: what an unreadable word counts as.
    pub const ALL: FilterEntry = FilterEntry { bits: u64::MAX, v4: [0; LISTED_V4], v4_count: u32::MAX };

    /// Sets `bit` (of this entry's word).
    pub fn set(&mut self, bit: u32) {
        self.bits |= word_and_mask(bit).1;
    }

    /// Adds IPv4 VIP address `addr` (as the packet holds it), whose address
    /// bit is in this word; adding one twice changes nothing.
    pub fn add_v4(&mut self, addr: u32) {
        let listed = (self.v4_count as usize).min(LISTED_V4);
        if self.v4[..listed].contains(&addr) {
            return;
        }
        if let Some(free) = self.v4.get_mut(listed) {
            *free = addr;
        }
        self.v4_count = self.v4_count.saturating_add(1);
    }

    /// Both entries' bits and addresses: what the kernel may read while VIPs
    /// of either are in the VIP table. A word with unlisted addresses stays so.
    pub fn union(&self, other: &FilterEntry) -> FilterEntry {
        let mut out = *self;
        out.bits |= other.bits;
        for &addr in &other.v4[..(other.v4_count as usize).min(LISTED_V4)] {
            out.add_v4(addr);
        }
        if other.v4_count as usize > LISTED_V4 {
            out.v4_count = out.v4_count.max(other.v4_count).max(LISTED_V4 as u32 + 1);
        }
        out
    }

    /// See [`Listed`].
    #[inline(always)]
    pub fn lists_v4(&self, addr: u32) -> Listed {
        // Unrolled by hand: a loop costs the balancer a bounded loop. The
        // counts matter: an unused slot's 0 is a destination a packet can carry.
        let n = self.v4_count;
        if (self.v4[0] == addr && n > 0) || (self.v4[1] == addr && n > 1) || (self.v4[2] == addr && n > 2) {
            return Listed::Yes;
        }
        if self.v4_count as usize > LISTED_V4 {
            return Listed::Unknown;
        }
        Listed::No
    }
}
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

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers only, no implicit padding (size assertion).
unsafe impl aya::Pod for FilterEntry {}

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

    #[test]
    fn a_word_lists_its_ipv4_addresses_until_it_is_full() {
        let mut entry = FilterEntry::default();
        assert_eq!(entry.lists_v4(0x0a02_00c0), Listed::No);
        assert_eq!(entry.lists_v4(0), Listed::No, "an unused slot is no address");
        for addr in [0x0a02_00c0, 0x0b02_00c0, 0x0a02_00c0, 0x0c02_00c0] {
            entry.add_v4(addr);
        }
        assert_eq!(entry.v4_count, 3, "an address added twice counts once");
        assert_eq!(entry.lists_v4(0), Listed::No);
        assert_eq!(entry.lists_v4(0x0b02_00c0), Listed::Yes);
        assert_eq!(entry.lists_v4(0x0d02_00c0), Listed::No, "every address of the word is listed");
        entry.add_v4(0x0d02_00c0);
        assert_eq!(entry.lists_v4(0x0d02_00c0), Listed::Unknown, "a fourth is counted, not listed");
        assert_eq!(entry.lists_v4(0x0e02_00c0), Listed::Unknown, "so no address is certainly absent");
        assert_eq!(entry.lists_v4(0x0a02_00c0), Listed::Yes);
        assert_eq!(FilterEntry::ALL.lists_v4(0x0a02_00c0), Listed::Unknown);
    }

    #[test]
    fn a_union_keeps_every_address_of_both_and_an_overflow() {
        let (mut a, mut b) = (FilterEntry::default(), FilterEntry::default());
        a.set(3);
        a.add_v4(1);
        b.set(70);
        b.add_v4(2);
        b.add_v4(1);
        let both = a.union(&b);
        assert_eq!(both.bits, (1 << 3) | (1 << 6));
        assert_eq!((both.lists_v4(1), both.lists_v4(2), both.lists_v4(3)), (Listed::Yes, Listed::Yes, Listed::No));
        for addr in 3..=5 {
            b.add_v4(addr);
        }
        assert_eq!(a.union(&b).lists_v4(9), Listed::Unknown, "b has unlisted addresses");
        assert_eq!(b.union(&a).lists_v4(9), Listed::Unknown);
    }
}
