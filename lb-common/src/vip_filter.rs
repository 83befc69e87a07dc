//! The VIP address filter: a bitmap over hashed destination addresses that
//! lets the balancer pass traffic for other hosts (most of what a NIC sees
//! on a host that is not only a load balancer) after one array read instead
//! of two VIP-table lookups. A set bit means "maybe a VIP address" (other
//! addresses can hash to it, and the VIP table then decides); a clear bit
//! means certainly not.
//!
//! All-ports VIPs (port 0) have a bit of their own too ([`all_ports_bit`]).
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

/// The filter bit of an all-ports VIP (port 0) of `proto` on `addr`. Set
/// beside the address's bit, so that a packet to a port no VIP of its
/// address configures skips the all-ports lookup when no such VIP exists
/// (the `unknown_port` path then takes one VIP-table lookup fewer).
#[inline(always)]
pub fn all_ports_bit(addr: &AddrWords, family: u8, proto: u8) -> u32 {
    // Any other word than the address's own; the constant keeps protocol 0
    // from folding back onto it.
    spread(fold(addr, family) ^ ((u32::from(proto) << 8) | 0x5bd1_0000))
}

#[inline(always)]
fn fold(addr: &AddrWords, family: u8) -> u32 {
    addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24) ^ u32::from(family)
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
