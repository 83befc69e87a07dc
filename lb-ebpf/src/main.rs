//! The BPF object: `xdp_balancer` for LB hosts, `xdp_decap` for backends,
//! `tc_health_encap` for DSR health checks, and the bench's floors.
//!
//! Modules form layers, listed top down; each imports (`use crate::`) only
//! from layers below its own, so the module graph has no cycle (`cargo xtask
//! test` checks this list against the imports, see xtask/src/layers.rs):
//!
//! - L6 `main`: the XDP entry points below
//! - L5 entry programs: `balancer` (dispatch), `decap`, `health_encap`, `floors`,
//!   `live_frames` (the bench's frame restorer and counting peer)
//! - L4 policies: `flows` (the flow table), `fragment`, `icmp`,
//!   `second_chance` (the backend's accept-or-redirect of GUE packets)
//! - L3 `forward`: MTU check, encapsulate, count
//! - L2 primitives: `lookup` (VIP, flow hash, Maglev ring, backend), `encap`
//!   (IPIP / IP6IP6), `gue` (GUE), `reply` (ICMP answers to the client),
//!   `events` (aya-log records, off by default)
//! - L1 `parse` (Ethernet, VLAN, IPv4/IPv6, TCP/UDP), `counters`, `outer`
//!   (the tunnels' L2 and outer IP headers), `flow_guard` (new flows per CPU)
//! - L0 no `crate::` imports: `packet` (bounds-checked access), `maps`
//!   (every map and load-time global), `checksum`, `addr`, `icmp_wire`
#![no_std]
#![no_main]

mod addr;
mod balancer;
mod checksum;
mod counters;
mod decap;
mod encap;
mod events;
mod floors;
mod flow_guard;
mod flows;
mod forward;
mod fragment;
mod gue;
mod health_encap;
mod icmp;
mod icmp_wire;
mod live_frames;
mod lookup;
mod maps;
mod outer;
mod packet;
mod parse;
mod reply;
mod second_chance;

use aya_ebpf::{macros::xdp, programs::XdpContext};

// `inline(always)`: the macro wraps this function in the program's entry
// point, and a body this large would otherwise stay a BPF-to-BPF call (a
// call, a frame and callee-saved registers on every packet).
#[xdp]
#[inline(always)]
pub fn xdp_balancer(ctx: XdpContext) -> u32 {
    let reason = balancer::balance(&ctx);
    let len = ctx.data_end() - ctx.data();
    counters::count_reason(reason, len);
    events::decision(&ctx, reason, len);
    // Every reason is in the table (its index is its counter index).
    lb_common::Reason::ACTION_CODES.get(reason as usize).copied().unwrap_or(lb_common::Action::Pass as u32)
}

#[xdp]
#[inline(always)]
pub fn xdp_decap(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let reason = decap::decap(&ctx);
    counters::count_decap(reason, len);
    lb_common::DecapReason::ACTION_CODES.get(reason as usize).copied().unwrap_or(lb_common::Action::Pass as u32)
}

/// Passes every packet untouched (see `lb_common::programs::PASS`).
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    lb_common::Action::Pass as u32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
