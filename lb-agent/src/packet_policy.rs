//! What the packet policies become in the kernel beyond the `POLICY` bits
//! (the VIP address entries).

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_common::packet_policy::{address_key, address_meta, VIP_FLAG_FRAGMENTS_FORWARD};
use lb_common::{VipKey, VipMeta};

use crate::plan::Plan;

/// The address entries of a plan: one per distinct VIP address, naming the
/// ring (and protocol) of the VIP that forwards fragments, if any (the first
/// in row order; validation allows only one).
pub(crate) fn address_entries(plan: &Plan) -> Vec<(VipKey, VipMeta)> {
    let mut by_address: BTreeMap<IpAddr, Option<(u32, u8)>> = BTreeMap::new();
    for v in &plan.vips {
        let e = by_address.entry(v.address()).or_insert(None);
        if e.is_none() && v.meta.flags & VIP_FLAG_FRAGMENTS_FORWARD != 0 {
            *e = Some((v.row, v.key.proto));
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
}
