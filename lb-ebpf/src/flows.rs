//! The flow table: a known flow keeps its recorded backend while that
//! backend is a usable member of the VIP; a TCP SYN, an unknown flow, or a
//! flow whose backend was removed or went down takes the ring's choice, which
//! is then recorded. A TCP packet without SYN that misses is also counted as
//! `NonSynMiss` (an established flow the table lost). VIPs with `VIP_FLAG_STATELESS` skip the table,
//! and so does TCP to a second-chance VIP. Above the new-flow guard's rate a
//! new flow is forwarded but not recorded (`Unrecorded`, see `flow_guard`).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    flows::{member_index, FlowEntry, FlowEvent, FlowKey, MEMBER_USABLE, VIP_FLAG_STATELESS},
    second_chance::VIP_FLAG_SECOND_CHANCE,
    BackendEntry, Reason, VipMeta, PROTO_TCP,
};

use crate::{
    counters::count_flow,
    events, flow_guard,
    lookup::{backend_entry, flow_hash, pick_backend},
    maps::{max_backends, FLOWS, MEMBERS},
    packet::read,
    parse::{Flow, Ip},
};

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The backend of this packet's flow and the flow's hash: recorded (a hit
/// takes the hash recorded with it, so the known-flow path never hashes), or
/// chosen by the ring and recorded.
#[inline(always)]
#[expect(clippy::needless_borrows_for_generic_args, reason = "a key by value is copied once more: about 20 instructions per packet")]
pub fn choose(ctx: &XdpContext, ip: &Ip, flow: &Flow, vip: &VipMeta, frame_len: usize) -> Result<(u32, BackendEntry, u32), Reason> {
    // One test of the flags on the common path; TCP on a second-chance VIP
    // keeps its state on the backends (see `lb_common::second_chance`).
    if vip.flags & (VIP_FLAG_STATELESS | VIP_FLAG_SECOND_CHANCE) != 0 && ring_only(ip, vip) {
        let hash = flow_hash(flow, vip);
        let (id, backend) = pick_backend(vip, hash)?;
        return Ok((id, backend, hash));
    }
    let key = FlowKey::new(flow.src, flow.dst, flow.src_port_be, flow.dst_port_be, flow.proto, flow.family);
    let event = if is_connection_start(ctx, ip) {
        FlowEvent::Miss
    } else {
        // SAFETY: the entry is copied out at once; an LRU entry the kernel
        // evicts meanwhile can only yield a stale backend id, which `usable` checks.
        match unsafe { FLOWS.get(&key) } {
            None => {
                // Not a connection start, so a TCP packet here belongs to an
                // established connection the table lost: counted apart.
                if ip.proto == PROTO_TCP {
                    count_flow(FlowEvent::NonSynMiss, frame_len);
                }
                FlowEvent::Miss
            }
            Some(entry) => {
                let (id, hash) = (entry.backend_id, entry.hash);
                if let Some(backend) = usable(vip.row, id) {
                    count_flow(FlowEvent::Hit, frame_len);
                    return Ok((id, backend, hash));
                }
                FlowEvent::Rehash
            }
        }
    };
    count_flow(event, frame_len);
    let hash = flow_hash(flow, vip);
    let (id, backend) = pick_backend(vip, hash)?;
    events::flow_placed(ctx, flow, event, id);
    // Only new flows meet the guard: a rehash keeps an established flow.
    if event == FlowEvent::Miss && !flow_guard::admit_new_flow() {
        count_flow(FlowEvent::Unrecorded, frame_len);
        return Ok((id, backend, hash));
    }
    // A full table evicts its least recently used entry; failure only costs
    // stickiness for this flow, so it does not stop the packet.
    let _ = FLOWS.insert(&key, &FlowEntry { backend_id: id, hash }, 0);
    Ok((id, backend, hash))
}

/// Whether the ring alone places this packet (no flow table): a stateless
/// VIP, or TCP to a second-chance VIP.
#[inline(always)]
pub fn ring_only(ip: &Ip, vip: &VipMeta) -> bool {
    vip.flags & VIP_FLAG_STATELESS != 0 || (vip.flags & VIP_FLAG_SECOND_CHANCE != 0 && ip.proto == PROTO_TCP)
}

/// The backend `id` if it is still a usable member of VIP `row`.
#[inline(always)]
fn usable(row: u32, id: u32) -> Option<BackendEntry> {
    let member = MEMBERS.get(member_index(row, id, max_backends()))?;
    if *member != MEMBER_USABLE {
        return None;
    }
    backend_entry(id)
}

/// A TCP SYN without ACK: a new connection, which the ring places (a reused
/// 5-tuple must not stick to a backend chosen for an earlier connection).
#[inline(always)]
fn is_connection_start(ctx: &XdpContext, ip: &Ip) -> bool {
    if ip.proto != PROTO_TCP {
        return false;
    }
    read::<u8>(ctx, ip.l4_offset + TCP_FLAGS_OFFSET).is_some_and(|flags| flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
}
