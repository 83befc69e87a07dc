//! tc egress on the LB host: DSR-aware health checks leave encapsulated
//! exactly like balanced traffic (see `lb_common::health::dsr`), so a check
//! reaches the backend's service on the VIP only through its decapsulator.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, TC_ACT_OK, TC_ACT_SHOT,
    },
    macros::classifier,
    programs::TcContext,
};
use lb_common::{
    health::dsr, limits::TUNNEL_TTL, BackendEntry, FAMILY_V4, FAMILY_V6, PROTO_IPIP, PROTO_IPV6,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::maps::{tunnel_source_v4, tunnel_source_v6, BACKENDS};

const ETHER_TYPE_OFFSET: usize = 12;
const IPV4_VIHL: u8 = 0x45;
const IPV4_DF: u16 = 0x4000;

#[classifier]
pub fn tc_health_encap(ctx: TcContext) -> i32 {
    // SAFETY: `ctx.skb.skb` is the socket buffer the kernel passed to this
    // program, valid for its whole run; `mark` is a field tc programs may read.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let Some(id) = dsr::backend_of(mark) else {
        return TC_ACT_OK;
    };
    // A marked check that cannot be encapsulated must not go out plain: it
    // would reach the backend's VIP directly and pass for the wrong reason.
    match encapsulate(&ctx, id) {
        Ok(()) => TC_ACT_OK,
        Err(()) => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn encapsulate(ctx: &TcContext, id: u32) -> Result<(), ()> {
    let backend: BackendEntry = *BACKENDS.get(id).ok_or(())?;
    let inner_ether_type: u16 = ctx.load(ETHER_TYPE_OFFSET).map_err(|_| ())?;
    let inner_proto = if inner_ether_type == EtherType::Ipv4 as u16 {
        PROTO_IPIP
    } else if inner_ether_type == EtherType::Ipv6 as u16 {
        PROTO_IPV6
    } else {
        return Err(());
    };
    let inner_len = (ctx.len() as usize).checked_sub(EthHdr::LEN).ok_or(())?;
    if backend.family == FAMILY_V4 {
        let source = tunnel_source_v4();
        if source == 0 {
            return Err(());
        }
        ctx.adjust_room(Ipv4Hdr::LEN as i32, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64).map_err(|_| ())?;
        let mut h = [0u8; Ipv4Hdr::LEN];
        h[0] = IPV4_VIHL;
        h[2..4].copy_from_slice(&((inner_len + Ipv4Hdr::LEN) as u16).to_be_bytes());
        h[6..8].copy_from_slice(&IPV4_DF.to_be_bytes());
        h[8] = TUNNEL_TTL;
        h[9] = inner_proto;
        h[12..16].copy_from_slice(&source.to_ne_bytes());
        h[16..20].copy_from_slice(&backend.addr[0].to_ne_bytes());
        let checksum = lb_common::checksum::ipv4_header(&h);
        h[10..12].copy_from_slice(&checksum.to_be_bytes());
        ctx.store(EthHdr::LEN, &h, 0).map_err(|_| ())?;
        ctx.store(ETHER_TYPE_OFFSET, &(EtherType::Ipv4 as u16), 0).map_err(|_| ())?;
    } else if backend.family == FAMILY_V6 {
        let source = tunnel_source_v6();
        if source == [0; 4] {
            return Err(());
        }
        ctx.adjust_room(Ipv6Hdr::LEN as i32, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 as u64).map_err(|_| ())?;
        let mut h = [0u8; Ipv6Hdr::LEN];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(inner_len as u16).to_be_bytes());
        h[6] = inner_proto;
        h[7] = TUNNEL_TTL;
        for i in 0..4 {
            h[8 + i * 4..12 + i * 4].copy_from_slice(&source[i].to_ne_bytes());
            h[24 + i * 4..28 + i * 4].copy_from_slice(&backend.addr[i].to_ne_bytes());
        }
        ctx.store(EthHdr::LEN, &h, 0).map_err(|_| ())?;
        ctx.store(ETHER_TYPE_OFFSET, &(EtherType::Ipv6 as u16), 0).map_err(|_| ())?;
    } else {
        return Err(());
    }
    ctx.store(0, &backend.next_hop_mac, 0).map_err(|_| ())
}
