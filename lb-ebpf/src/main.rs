//! The BPF object: `xdp_balancer` for LB hosts and `xdp_decap` for backends.
//!
//! Layout by concern: `packet` (bounds-checked access), `parse` (Ethernet,
//! VLAN, IPv4/IPv6, TCP/UDP), `maps` (every map and load-time global),
//! `balancer` (VIP lookup and Maglev ring), `flows` (the flow table), `encap` (IPIP / IP6IP6),
//! `fragment` and `icmp` (their policies), `reply` (ICMP answers to the
//! client), `checksum`, `decap`, `counters`, `events` (aya-log records, off by default).
#![no_std]
#![no_main]

mod balancer;
mod checksum;
mod counters;
mod decap;
mod encap;
mod events;
mod flows;
mod fragment;
mod icmp;
mod floors;
mod health_encap;
mod maps;
mod packet;
mod parse;
mod reply;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_balancer(ctx: XdpContext) -> u32 {
    let reason = balancer::balance(&ctx);
    let len = ctx.data_end() - ctx.data();
    counters::count_reason(reason, len);
    events::decision(&ctx, reason, len);
    reason.action() as u32
}

#[xdp]
pub fn xdp_decap(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let reason = decap::decap(&ctx);
    counters::count_decap(reason, len);
    reason.action() as u32
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
