//! Fragments (IPv4 with MF or an offset, IPv6 with a fragment header). Only
//! the first fragment has ports, so a datagram's fragments cannot be hashed
//! like its flow. Policy per VIP address: drop (default, as Katran), or
//! forward every fragment through one VIP's ring hashing the addresses and
//! protocol only, so all fragments of a datagram reach the same backend,
//! which reassembles. Fragments to other addresses pass untouched (`no_vip`).

use aya_ebpf::programs::XdpContext;
use lb_common::{packet_policy::fragment_row, second_chance::VIP_FLAG_GUE, Reason, VipMeta};

use crate::{
    forward::{forward, TooBig},
    lookup::{address_entry, flow_hash},
    parse::{Flow, Ip},
};

/// Ports used in the hash of a fragment: none (zero), for every fragment alike.
const NO_PORT: u16 = 0;

#[inline(always)]
pub fn handle(ctx: &XdpContext, ip: &Ip) -> Result<Reason, Reason> {
    // Past the balancer's address filter: not a VIP address only on a collision.
    let entry = address_entry(ip).ok_or(Reason::NoVip)?;
    let row = fragment_row(&entry, ip.proto).ok_or(Reason::FragmentDropped)?;
    if ip.ttl == 0 {
        return Err(Reason::TtlZero);
    }
    let flow = Flow::of(ip, NO_PORT, NO_PORT);
    // Flow hashing (not source hashing) with zero ports: addresses and protocol.
    // The address entry carries the VIP's GUE flag (the agent copies it), so
    // fragments travel in the tunnel their VIP's other packets use.
    let vip = VipMeta { row, flags: entry.flags & VIP_FLAG_GUE };
    forward(ctx, &flow, &vip, flow_hash(&flow, &vip), TooBig::Drop)?;
    Ok(Reason::FragmentForwarded)
}
