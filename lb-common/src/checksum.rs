//! Internet checksums (RFC 1071) both sides compute: the kernel for headers it
//! builds, the tests to verify them.

/// Folds a 32-bit one's complement sum to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum of a 20-byte IPv4 header (as bytes) whose checksum field is
/// zero, in host order (store it big-endian). The kernel's packet-memory
/// variant is `lb-ebpf`'s `checksum::ipv4_header`.
pub const fn ipv4_header(header: &[u8; 20]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        sum += ((header[i] as u32) << 8) | header[i + 1] as u32;
        i += 2;
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_header() {
        // The example header of RFC 1071's common illustration (Wikipedia's
        // "IPv4 header checksum" example): checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(super::ipv4_header(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        // A header with its checksum in place sums to zero.
        let mut z = h;
        z[10] = 0;
        z[11] = 0;
        assert_eq!(super::ipv4_header(&z), 0xb861);
    }
}
