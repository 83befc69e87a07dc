//! Encapsulation toward a backend: IPv4 outer header (protocol 4 or 41) for
//! IPv4 backends, IPv6 outer header (next header 41 or 4) for IPv6 backends
//! (the headers themselves: `outer`).

use aya_ebpf::programs::XdpContext;
use lb_common::{BackendEntry, Reason, FAMILY_V4, PROTO_IPIP, PROTO_IPV6};
use network_types::{
    eth::EtherType,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    maps::{tunnel_source_v4, tunnel_source_v6},
    outer::{push_l2, write_ipv4, write_ipv6},
    parse::Flow,
};

/// Bytes the outer header adds for `backend` (what the MTU check adds).
#[inline(always)]
pub fn overhead(backend: &BackendEntry) -> usize {
    if backend.family == FAMILY_V4 {
        Ipv4Hdr::LEN
    } else {
        Ipv6Hdr::LEN
    }
}

#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, flow: &Flow, backend: &BackendEntry, flow_hash: u32) -> Result<(), Reason> {
    let inner_proto = if flow.family == FAMILY_V4 { PROTO_IPIP } else { PROTO_IPV6 };
    if backend.family == FAMILY_V4 {
        let source = tunnel_source_v4();
        if source == 0 {
            return Err(Reason::NoTunnelSource);
        }
        let l2 = push_l2(ctx, flow.l2.len, backend.next_hop_mac, Ipv4Hdr::LEN, EtherType::Ipv4 as u16)?;
        write_ipv4(ctx, l2, flow.tos, flow.ip_len, source, backend.addr[0], inner_proto)
    } else {
        let source = tunnel_source_v6();
        if source == [0; 4] {
            return Err(Reason::NoTunnelSource);
        }
        let l2 = push_l2(ctx, flow.l2.len, backend.next_hop_mac, Ipv6Hdr::LEN, EtherType::Ipv6 as u16)?;
        write_ipv6(ctx, l2, flow.tos, flow.ip_len, &source, &backend.addr, inner_proto, flow_hash)
    }
}
