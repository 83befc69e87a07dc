//! The agent's side of `lb_common::vip_filter`: the filter entries of a
//! plan's VIP addresses and VIP keys, and writing them so that the filter
//! never hides a VIP (new bits and listings before new VIPs, cleared ones
//! only after removed VIPs).

use anyhow::Result;
use lb_common::{
    vip_filter::{bit, port_bit, FilterEntry, WORDS},
    FAMILY_V4,
};

use super::store::MapStore;
use crate::plan::Plan;

/// The filter with the bit of every VIP address of `plan` set, the bit of
/// every VIP's key (port 0 for an all-ports VIP) in its address's word, and
/// every IPv4 VIP address in its word's listing.
pub fn words(plan: &Plan) -> Vec<FilterEntry> {
    let mut out = vec![FilterEntry::default(); WORDS as usize];
    for v in &plan.vips {
        let address_bit = bit(&v.key.addr, v.key.family);
        let entry = &mut out[(address_bit / u64::BITS) as usize];
        entry.set(address_bit);
        entry.set(port_bit(&v.key.addr, v.key.family, v.key.port_be, v.key.proto));
        if v.key.family == FAMILY_V4 {
            entry.add_v4(v.key.addr[0]);
        }
    }
    out
}

/// How [`write()`] combines the wanted words with the kernel's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Keep every bit and address already there (before VIPs are added or removed).
    Union,
    /// Exactly the wanted entries (once the VIP table matches the plan).
    Exact,
}

/// Writes the words of `wanted` that differ from the store's filter;
/// returns how many.
pub fn write(store: &mut impl MapStore, wanted: &[FilterEntry], merge: Merge) -> Result<usize> {
    let current = store.filter_words()?;
    let mut written = 0;
    for ((index, &want), &current) in (0..).zip(wanted).zip(&current) {
        let new = match merge {
            Merge::Union => current.union(&want),
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

    use lb_common::vip_filter::{word_and_mask, Listed};

    fn is_set(words: &[FilterEntry], addr: &str) -> bool {
        let (w, f) = lb_common::addr_words(addr.parse().unwrap());
        let (word, mask) = word_and_mask(bit(&w, f));
        words[word as usize].bits & mask != 0
    }

    #[test]
    fn every_vip_address_and_little_else_is_set() {
        let plan = crate::plan::plan(&config());
        let words = words(&plan);
        assert!(is_set(&words, "192.0.2.10") && is_set(&words, "2001:db8:f::10"));
        let (v6, family) = lb_common::addr_words("2001:db8:f::10".parse().unwrap());
        let (v4, _) = lb_common::addr_words("192.0.2.10".parse().unwrap());
        let key_set = |a, f, port: u16, p| {
            let (word, mask) = word_and_mask(port_bit(a, f, port.to_be(), p));
            words[word as usize].bits & mask != 0
        };
        let (tcp, udp) = (lb_common::PROTO_TCP, lb_common::PROTO_UDP);
        assert!(key_set(&v4, lb_common::FAMILY_V4, 80, tcp) && key_set(&v4, lb_common::FAMILY_V4, 443, tcp) && key_set(&v6, family, 80, tcp));
        assert!(key_set(&v6, family, 0, udp), "the all-ports UDP VIP has its bit");
        assert!(!key_set(&v6, family, 0, tcp) && !key_set(&v4, lb_common::FAMILY_V4, 0, tcp), "no all-ports TCP VIP");
        // Only these keys' bits, every one in its address's word.
        let (w4, w6) = (bit(&v4, lb_common::FAMILY_V4) / u64::BITS, bit(&v6, family) / u64::BITS);
        assert!(words.iter().enumerate().all(|(i, w)| w.bits == 0 || i as u32 == w4 || i as u32 == w6));
        let set: u32 = words.iter().map(|w| w.bits.count_ones()).sum();
        assert!((2..=6).contains(&set), "{set} bits: two addresses and four keys, some may share a bit");
        let unconfigured = (1u16..1024).filter(|p| key_set(&v4, lb_common::FAMILY_V4, *p, tcp)).count();
        assert!(unconfigured <= 1023 * 3 / 64 + 16, "{unconfigured} of 1,023 TCP ports of 192.0.2.10 look configured");
        // Neighbouring addresses spread over the filter instead of sharing bits.
        let neighbours = (0..=255).filter(|i| is_set(&words, &format!("198.51.100.{i}"))).count();
        assert!(neighbours <= 1, "{neighbours} of 256 host addresses look like VIPs");
        // The IPv4 address is listed in its word, once for its two VIPs; IPv6 ones never are.
        assert_eq!((words[w4 as usize].lists_v4(v4[0]), words[w4 as usize].v4_count), (Listed::Yes, 1));
        assert_eq!(words.iter().map(|w| w.v4_count).sum::<u32>(), 1);
    }

    #[test]
    fn a_union_write_keeps_the_old_listing_and_an_exact_one_drops_it() {
        let plan = crate::plan::plan(&config());
        let mut store = crate::dataplane::memory::MemoryStore::default();
        let old = "192.0.2.99".parse::<std::net::Ipv4Addr>().unwrap();
        let old_word = lb_common::v4_words(old)[0];
        let old_index = bit(&lb_common::v4_words(old), FAMILY_V4) / u64::BITS;
        let mut before = vec![FilterEntry::default(); WORDS as usize];
        before[old_index as usize].add_v4(old_word);
        write(&mut store, &before, Merge::Exact).unwrap();
        let wanted = words(&plan);
        write(&mut store, &wanted, Merge::Union).unwrap();
        let filter = store.filter_words().unwrap();
        assert_eq!(filter[old_index as usize].lists_v4(old_word), Listed::Yes, "a removed address stays until its VIPs are gone");
        let (v4, _) = lb_common::addr_words("192.0.2.10".parse().unwrap());
        assert_eq!(filter[(bit(&v4, FAMILY_V4) / u64::BITS) as usize].lists_v4(v4[0]), Listed::Yes, "a new one is there before its VIPs");
        write(&mut store, &wanted, Merge::Exact).unwrap();
        assert_eq!(store.filter_words().unwrap(), wanted);
    }

    #[test]
    fn ipv4_and_ipv6_of_the_same_words_differ() {
        let v4 = lb_common::v4_words("192.0.2.10".parse().unwrap());
        assert_ne!(bit(&v4, lb_common::FAMILY_V4), bit(&v4, lb_common::FAMILY_V6));
    }
}
