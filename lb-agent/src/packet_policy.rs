//! What the packet policies become in the kernel beyond the `POLICY` bits
//! (the VIP address entries).

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_common::packet_policy::{address_key, address_meta, VIP_FLAG_FRAGMENTS_FORWARD};
use lb_common::{VipKey, VipMeta};

use crate::plan::Plan;

/// The address entries of a plan: one per distinct VIP address, naming the
/// ring (and protocol) of the VIP that forwards fragments, if any (the first
/// in row order; validation allows only one), and carrying its encapsulation.
pub(crate) fn address_entries(plan: &Plan) -> Vec<(VipKey, VipMeta)> {
    let mut by_address: BTreeMap<IpAddr, Option<(&VipMeta, u8)>> = BTreeMap::new();
    for v in &plan.vips {
        let e = by_address.entry(v.address()).or_insert(None);
        if e.is_none() && v.meta.flags & VIP_FLAG_FRAGMENTS_FORWARD != 0 {
            *e = Some((&v.meta, v.key.proto));
        }
    }
    by_address
        .into_iter()
        .map(|(a, frag)| {
            let (words, family) = lb_common::addr_words(a);
            (address_key(words, family), address_meta(frag))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_entries_name_the_forwarding_vip() {
        let plan = crate::plan::plan(&crate::config::packets::tests::parse("", "drop").unwrap());
        let entries = address_entries(&plan);
        assert_eq!(entries.len(), 1, "one entry per address");
        let dns = plan.vip("dns").unwrap();
        assert_eq!(lb_common::packet_policy::fragment_row(&entries[0].1, lb_common::PROTO_UDP), Some(dns.row));
        assert_eq!(lb_common::packet_policy::fragment_row(&entries[0].1, lb_common::PROTO_TCP), None);
    }

    #[test]
    fn an_address_entry_carries_the_encapsulation_of_its_forwarding_vip() {
        use crate::test_config::{TestConfig, TestVip};
        use lb_common::second_chance::VIP_FLAG_GUE;
        // GUE from [lb] encap, from flow_state = "backend" and from a VIP's
        // own encap; IPIP on the fourth address.
        let config = TestConfig::new()
            .lb("encap", "gue")
            .vip(TestVip::new("lb-gue", "192.0.2.10:80").set("fragments", "forward").backends(["198.51.100.11"]))
            .vip(TestVip::new("second-chance", "192.0.2.20:80").set("fragments", "forward").set("flow_state", "backend").backends(["198.51.100.11"]))
            .vip(TestVip::new("ipip", "192.0.2.30:80").set("fragments", "forward").set("encap", "ipip").backends(["198.51.100.11"]))
            .vip(TestVip::new("no-fragments", "192.0.2.40:80").backends(["198.51.100.11"]))
            .parse();
        let plan = crate::plan::plan(&config);
        let gue_of = |address: &str| {
            let (words, family) = lb_common::addr_words(address.parse().unwrap());
            let (_, meta) = address_entries(&plan).into_iter().find(|(k, _)| (k.addr, k.family) == (words, family)).unwrap();
            meta.flags & VIP_FLAG_GUE != 0
        };
        assert!(gue_of("192.0.2.10"), "[lb] encap = \"gue\"");
        assert!(gue_of("192.0.2.20"), "flow_state = \"backend\"");
        assert!(!gue_of("192.0.2.30"), "encap = \"ipip\"");
        assert!(!gue_of("192.0.2.40"), "no VIP forwards fragments here: nothing to encapsulate");
    }
}
