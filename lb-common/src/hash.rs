//! The flow hash: MurmurHash3's 32-bit block mixing over whole words, seeded
//! from the config. The kernel calls it per packet, the agent (and the tests)
//! call it to predict which ring slot a flow uses, so it must stay a pure
//! function of its inputs, with no host-dependent state.
//!
//! Inputs are the packet's bytes read as native-endian words (see
//! [`crate::AddrWords`]); all LB hosts of a cluster must share endianness
//! (every x86_64 and aarch64 host does) as well as the seed.

use crate::{AddrWords, FAMILY_V4};

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finaliser: every input bit affects every output bit.
#[inline(always)]
const fn finish(h: u32, words: u32) -> u32 {
    let mut h = h ^ (words * 4);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Both ports in one word, as they sit in the TCP/UDP header.
#[inline(always)]
pub const fn ports_word(src_port_be: u16, dst_port_be: u16) -> u32 {
    (src_port_be as u32) | ((dst_port_be as u32) << 16)
}

/// 5-tuple hash of an IPv4 flow.
#[inline(always)]
pub const fn flow_hash_v4(seed: u32, src: u32, dst: u32, ports: u32, proto: u8) -> u32 {
    let h = mix(seed, src);
    let h = mix(h, dst);
    let h = mix(h, ports);
    finish(mix(h, proto as u32), 4)
}

/// 5-tuple hash of an IPv6 flow.
#[inline(always)]
pub const fn flow_hash_v6(seed: u32, src: &AddrWords, dst: &AddrWords, ports: u32, proto: u8) -> u32 {
    let mut h = seed;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, dst[0]);
    h = mix(h, dst[1]);
    h = mix(h, dst[2]);
    h = mix(h, dst[3]);
    h = mix(h, ports);
    finish(mix(h, proto as u32), 10)
}

/// Source-address-only hash (client affinity VIPs).
#[inline(always)]
pub const fn source_hash(seed: u32, family: u8, src: &AddrWords) -> u32 {
    if family == FAMILY_V4 {
        finish(mix(seed, src[0]), 1)
    } else {
        let mut h = seed;
        h = mix(h, src[0]);
        h = mix(h, src[1]);
        h = mix(h, src[2]);
        h = mix(h, src[3]);
        finish(h, 4)
    }
}

/// 5-tuple hash for either family (the agent's and the tests' entry point).
pub const fn flow_hash(seed: u32, family: u8, src: &AddrWords, dst: &AddrWords, src_port_be: u16, dst_port_be: u16, proto: u8) -> u32 {
    let ports = ports_word(src_port_be, dst_port_be);
    if family == FAMILY_V4 {
        flow_hash_v4(seed, src[0], dst[0], ports, proto)
    } else {
        flow_hash_v6(seed, src, dst, ports, proto)
    }
}

/// Hash of arbitrary words (the agent's Maglev permutations use it on backend identities).
pub fn hash_words(seed: u32, words: &[u32]) -> u32 {
    let mut h = seed;
    for w in words {
        h = mix(h, *w);
    }
    finish(h, words.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{addr_words, PROTO_TCP, PROTO_UDP};

    /// MurmurHash3_x86_32 reference values: our word loop is the reference
    /// algorithm on inputs whose length is a multiple of 4.
    #[test]
    fn matches_murmur3_reference_vectors() {
        assert_eq!(hash_words(0, &[]), 0);
        assert_eq!(hash_words(1, &[]), 0x514e_28b7);
        assert_eq!(hash_words(0xffff_ffff, &[]), 0x81f1_6f39);
        // "abcd" = bytes 61 62 63 64 read little-endian.
        assert_eq!(hash_words(0x9747_b28c, &[u32::from_le_bytes(*b"abcd")]), 0xf047_8627);
        assert_eq!(hash_words(0x9747_b28c, &[u32::from_le_bytes(*b"aaaa")]), 0x5a97_808a);
        assert_eq!(hash_words(0, &[0]), 0x2362_f9de);
    }

    #[test]
    fn family_specific_hashes_agree_with_generic() {
        let (s, f) = addr_words("198.51.100.10".parse().unwrap());
        let (d, _) = addr_words("192.0.2.10".parse().unwrap());
        let ports = ports_word(40000u16.to_be(), 80u16.to_be());
        assert_eq!(
            flow_hash(7, f, &s, &d, 40000u16.to_be(), 80u16.to_be(), PROTO_TCP),
            hash_words(7, &[s[0], d[0], ports, PROTO_TCP as u32])
        );
        let (s6, f6) = addr_words("2001:db8::10".parse().unwrap());
        let (d6, _) = addr_words("2001:db8:1::10".parse().unwrap());
        let mut words = [0u32; 10];
        words[..4].copy_from_slice(&s6);
        words[4..8].copy_from_slice(&d6);
        words[8] = ports;
        words[9] = PROTO_UDP as u32;
        assert_eq!(flow_hash(7, f6, &s6, &d6, 40000u16.to_be(), 80u16.to_be(), PROTO_UDP), hash_words(7, &words));
    }

    #[test]
    fn every_field_changes_the_hash() {
        let (s, f) = addr_words("198.51.100.10".parse().unwrap());
        let (d, _) = addr_words("192.0.2.10".parse().unwrap());
        let base = flow_hash(1, f, &s, &d, 1000, 80, PROTO_TCP);
        assert_ne!(base, flow_hash(2, f, &s, &d, 1000, 80, PROTO_TCP));
        assert_ne!(base, flow_hash(1, f, &d, &s, 1000, 80, PROTO_TCP));
        assert_ne!(base, flow_hash(1, f, &s, &d, 1001, 80, PROTO_TCP));
        assert_ne!(base, flow_hash(1, f, &s, &d, 1000, 81, PROTO_TCP));
        assert_ne!(base, flow_hash(1, f, &s, &d, 1000, 80, PROTO_UDP));
        assert_ne!(source_hash(1, f, &s), source_hash(1, f, &d));
    }
}
