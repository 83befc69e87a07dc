//! IP addresses between the packet's 16 bytes and `AddrWords` (four native
//! words holding the bytes in packet order, as the maps store them).

use lb_common::AddrWords;

/// An IPv6 address as read from a header.
#[inline(always)]
pub fn words16(a: &[u8; 16]) -> AddrWords {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// An address as written into a header (or logged by aya-log's `{:i}`).
#[inline(always)]
pub fn words_bytes(w: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}
