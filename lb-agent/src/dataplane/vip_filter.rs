//! The agent's side of `lb_common::vip_filter`: the filter words of a plan's
//! VIP addresses (and all-ports VIPs), and writing them so that the filter never hides a VIP
//! (new bits before new VIPs, cleared bits only after removed VIPs).

use anyhow::Result;
use lb_common::vip_filter::{all_ports_bit, bit, word_and_mask, WORDS};

use super::store::MapStore;
use crate::plan::Plan;

/// The filter with the bit of every VIP address of `plan` set, and the
/// all-ports bit of every all-ports (port 0) VIP.
pub fn words(plan: &Plan) -> Vec<u64> {
    let mut out = vec![0u64; WORDS as usize];
    let mut set = |bit: u32| {
        let (word, mask) = word_and_mask(bit);
        out[word as usize] |= mask;
    };
    for v in &plan.vips {
        set(bit(&v.key.addr, v.key.family));
        if v.key.port_be == 0 {
            set(all_ports_bit(&v.key.addr, v.key.family, v.key.proto));
        }
    }
    out
}

/// How [`write()`] combines the wanted words with the kernel's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Keep every bit already set (before VIPs are added or removed).
    Union,
    /// Exactly the wanted bits (once the VIP table matches the plan).
    Exact,
}

/// Writes the words of `wanted` that differ from the store's filter;
/// returns how many.
pub fn write(store: &mut impl MapStore, wanted: &[u64], merge: Merge) -> Result<usize> {
    let current = store.filter_words()?;
    let mut written = 0;
    for ((index, &want), &current) in (0..).zip(wanted).zip(&current) {
        let new = match merge {
            Merge::Union => current | want,
            Merge::Exact => want,
        };
        if new != current {
            store.set_filter_word(index, new)?;
            written += 1;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_config::{TestConfig, TestVip};

    /// Two VIPs on one IPv4 address, one on an IPv6 address.
    fn config() -> crate::config::Config {
        TestConfig::new()
            .ring_size(13)
            .vip(TestVip::new("web", "192.0.2.10:80").backends(["198.51.100.11"]))
            .vip(TestVip::new("web-tls", "192.0.2.10:443").backends(["198.51.100.11"]))
            .vip(TestVip::new("v6", "[2001:db8:f::10]:80").backends(["2001:db8::11"]))
            .vip(TestVip::new("dns-any", "[2001:db8:f::10]:0/udp").backends(["2001:db8::11"]))
            .parse()
    }

    fn is_set(words: &[u64], addr: &str) -> bool {
        let (w, f) = lb_common::addr_words(addr.parse().unwrap());
        let (word, mask) = word_and_mask(bit(&w, f));
        words[word as usize] & mask != 0
    }

    #[test]
    fn every_vip_address_and_little_else_is_set() {
        let plan = crate::plan::plan(&config());
        let words = words(&plan);
        assert!(is_set(&words, "192.0.2.10") && is_set(&words, "2001:db8:f::10"));
        let (v6, family) = lb_common::addr_words("2001:db8:f::10".parse().unwrap());
        let (v4, _) = lb_common::addr_words("192.0.2.10".parse().unwrap());
        let all_ports = |a, f, p| {
            let (word, mask) = word_and_mask(all_ports_bit(a, f, p));
            words[word as usize] & mask != 0
        };
        assert!(all_ports(&v6, family, lb_common::PROTO_UDP), "the all-ports UDP VIP has its bit");
        assert!(!all_ports(&v6, family, lb_common::PROTO_TCP) && !all_ports(&v4, lb_common::FAMILY_V4, lb_common::PROTO_TCP));
        let set: u32 = words.iter().map(|w| w.count_ones()).sum();
        assert_eq!(set, 3, "one bit per distinct address, one per all-ports VIP");
        // Neighbouring addresses spread over the filter instead of sharing bits.
        let neighbours = (0..=255).filter(|i| is_set(&words, &format!("198.51.100.{i}"))).count();
        assert!(neighbours <= 1, "{neighbours} of 256 host addresses look like VIPs");
    }

    #[test]
    fn ipv4_and_ipv6_of_the_same_words_differ() {
        let v4 = lb_common::v4_words("192.0.2.10".parse().unwrap());
        assert_ne!(bit(&v4, lb_common::FAMILY_V4), bit(&v4, lb_common::FAMILY_V6));
    }
}
