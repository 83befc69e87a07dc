//! Benchmark floors: the least an XDP load balancer can do, measured in the
//! same run as our programs so that `cargo xtask bench` reports ratios that
//! do not drift with the machine. (`xdp_pass`, the other floor, lives in main.)

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{Action, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::packet::{ptr_at, ptr_at_mut};

/// Parses Ethernet / IPv4 / TCP or UDP, swaps the MACs and bounces the
/// frame (`XDP_TX`): the cheapest program that both reads the headers and
/// sends. UDP too because the bench's end-to-end forwarding test reflects a
/// UDP load with it (the per-packet bench feeds it TCP).
#[xdp]
pub fn xdp_floor_tx(ctx: XdpContext) -> u32 {
    floor_tx(&ctx).unwrap_or(Action::Pass) as u32
}

#[inline(always)]
fn floor_tx(ctx: &XdpContext) -> Option<Action> {
    let eth: *mut EthHdr = ptr_at_mut(ctx, 0)?;
    // SAFETY: every pointer here comes from `ptr_at` / `ptr_at_mut`,
    // bounds-checked. Raw dereferences on purpose: the floor is the cheapest
    // hand-written program, the yardstick our programs are measured against.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return None;
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY: see `eth` above.
    let header_len = ((unsafe { (*ip).vihl } & 0x0f) as usize) * 4;
    let l4 = EthHdr::LEN + header_len;
    // SAFETY: see `eth` above.
    match unsafe { (*ip).proto } {
        PROTO_TCP => {
            let _tcp: *const TcpHdr = ptr_at(ctx, l4)?;
        }
        PROTO_UDP => {
            let _udp: *const UdpHdr = ptr_at(ctx, l4)?;
        }
        _ => return None,
    }
    // SAFETY: see `eth` above.
    unsafe { core::mem::swap(&mut (*eth).dst_addr, &mut (*eth).src_addr) };
    Some(Action::Tx)
}
