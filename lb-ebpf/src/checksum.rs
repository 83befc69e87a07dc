//! Internet checksum (RFC 1071) helpers. Words are summed in native order and
//! the result stored natively, which is correct on either byte order (RFC 1071
//! section 2(B)); incremental updates follow RFC 1624 (eqn. 3).

pub use lb_common::checksum::fold;

/// Adds `N` native-order 16-bit words at `words` to a running sum (bounded
/// loop). Volatile reads keep LLVM from hoisting every load of the unrolled
/// loop ahead of the additions, which would spill past the 512-byte BPF stack.
#[inline(always)]
pub fn sum_words<const N: usize>(mut sum: u32, words: *const [u16; N]) -> u32 {
    let first = words as *const u16;
    let mut i = 0;
    while i < N {
        // SAFETY: the caller got `words` from a bounds-checked `ptr_at` of `N` words.
        sum += unsafe { core::ptr::read_volatile(first.add(i)) } as u32;
        i += 1;
    }
    sum
}

/// Checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(words: *const [u16; 10]) -> u16 {
    !fold(sum_words(0, words))
}

/// The checksum after one 16-bit word of the covered data changed from `old`
/// to `new` (all three in the packet's byte order, read natively).
#[inline(always)]
pub fn replace_word(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}
