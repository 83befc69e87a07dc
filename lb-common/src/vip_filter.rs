//! The VIP address filter: a bitmap over hashed destination addresses that
//! lets the balancer pass traffic for other hosts (most of what a NIC sees
//! on a host that is not only a load balancer) after one array read instead
//! of two VIP-table lookups. A set bit means "maybe a VIP address" (other
//! addresses can hash to it, and the VIP table then decides); a clear bit
//! means certainly not.
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
    let folded = addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24) ^ u32::from(family);
    folded.wrapping_mul(0x9E37_79B1) >> (u32::BITS - BITS.trailing_zeros())
}

/// Word index and mask of a bit.
#[inline(always)]
pub const fn word_and_mask(bit: u32) -> (u32, u64) {
    (bit / u64::BITS, 1 << (bit % u64::BITS))
}
