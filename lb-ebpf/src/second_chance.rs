//! Second chance on the backend (see `lb_common::second_chance`): whether
//! the inner packet of a GUE packet that names previous owners belongs
//! here, and, when it does not, the in-place send-on toward the next one.
//!
//! Accepted: anything that reached the last previous owner named
//! (hops == count, never sent on again), anything not TCP, a SYN without ACK (a new connection), a packet
//! of a connection this host has a socket for (`bpf_skc_lookup_tcp` in the
//! netns of the receiving device: established, closing, or a request socket
//! in SYN-RECV; a listener alone does not count), and the ACK of a SYN-cookie
//! handshake (`bpf_tcp_check_syncookie` on the listener). Anything else goes
//! to `previous[hops]` with hops + 1 (the outer header is rewritten in
//! place, so its size and family cannot change; the balancer lists only
//! previous owners of the outer family): sent back out (`XDP_TX`) when the
//! neighbour is known, else forwarded by the stack.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_sock_tuple, tcphdr, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie},
    programs::XdpContext,
};
use lb_common::{
    second_chance::{SecondChance, MAX_PREVIOUS_OWNERS, PREVIOUS_ADDR_LEN},
    AddrWords, DecapReason, PROTO_TCP, PROTO_UDP,
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::{
    addr::words16,
    checksum,
    packet::{ptr_at_mut, read, write},
    parse::IPV4_MF_AND_OFFSET,
};

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Offset of `hops` in [`SecondChance`].
const HOPS_OFFSET: usize = 2;
/// The kernel's address families, as `bpf_fib_lookup` wants them.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Bytes of the IPv4 tuple in `bpf_sock_tuple` (addresses and ports).
const TUPLE_V4_LEN: u32 = 12;
/// Bytes of the IPv6 tuple.
const TUPLE_V6_LEN: u32 = 36;

/// What to do with a GUE packet that names previous owners.
pub enum Verdict {
    /// Decapsulate and pass, counted under this reason.
    Accept(DecapReason),
    /// Not ours: send it on to `previous[hops]`.
    SendOn,
}

/// Judges the inner packet at `inner_at` (IPv4 if `inner_v4`, else IPv6);
/// `head` is checked already (`1 <= count <= MAX`, `hops <= count`).
#[inline(always)]
pub fn judge(ctx: &XdpContext, inner_at: usize, inner_v4: bool, head: &SecondChance) -> Verdict {
    if head.hops >= head.count {
        return Verdict::Accept(DecapReason::AcceptedRedirected);
    }
    let (tcp_at, ip_len) = if inner_v4 {
        let Some(ip) = read::<Ipv4Hdr>(ctx, inner_at) else { return Verdict::Accept(DecapReason::AcceptedOther) };
        // A fragment or a short header has no TCP header to judge by: the stack judges it.
        if ip.proto != PROTO_TCP || ip.vihl & 0x0f < 5 || u16::from_be_bytes(ip.frags) & IPV4_MF_AND_OFFSET != 0 {
            return Verdict::Accept(DecapReason::AcceptedOther);
        }
        (inner_at + ((ip.vihl & 0x0f) as usize) * 4, Ipv4Hdr::LEN)
    } else {
        let Some(ip) = read::<Ipv6Hdr>(ctx, inner_at) else { return Verdict::Accept(DecapReason::AcceptedOther) };
        if ip.next_hdr != PROTO_TCP {
            return Verdict::Accept(DecapReason::AcceptedOther);
        }
        (inner_at + Ipv6Hdr::LEN, Ipv6Hdr::LEN)
    };
    let Some(flags) = read::<u8>(ctx, tcp_at + TCP_FLAGS_OFFSET) else { return Verdict::Accept(DecapReason::AcceptedOther) };
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return Verdict::Accept(DecapReason::AcceptedSyn);
    }
    if let Some(reason) = local_connection(ctx, inner_at, inner_v4, ip_len, tcp_at) {
        return Verdict::Accept(reason);
    }
    Verdict::SendOn
}

/// `AcceptedSocket` / `AcceptedSyncookie` when this host knows the
/// connection of the TCP packet at `tcp_at`; `None` otherwise.
#[inline(always)]
fn local_connection(ctx: &XdpContext, ip_at: usize, v4: bool, ip_len: usize, tcp_at: usize) -> Option<DecapReason> {
    // `ip_len` bytes checked: the syncookie helper reads that many.
    let ip: *mut u8 = if v4 { ptr_at_mut::<Ipv4Hdr>(ctx, ip_at)? as *mut u8 } else { ptr_at_mut::<Ipv6Hdr>(ctx, ip_at)? as *mut u8 };
    let tcp = ptr_at_mut::<TcpHdr>(ctx, tcp_at)?;
    // SAFETY: for the reads below: `tcp` is bounds-checked for a whole TCP header.
    let (sport, dport) = unsafe { (u16::from_ne_bytes((*tcp).source), u16::from_ne_bytes((*tcp).dest)) };
    // SAFETY: all-zero bytes are a valid tuple (integers only).
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if v4 {
        let h = read::<Ipv4Hdr>(ctx, ip_at)?;
        tuple.__bindgen_anon_1.ipv4.saddr = u32::from_ne_bytes(h.src_addr);
        tuple.__bindgen_anon_1.ipv4.daddr = u32::from_ne_bytes(h.dst_addr);
        tuple.__bindgen_anon_1.ipv4.sport = sport;
        tuple.__bindgen_anon_1.ipv4.dport = dport;
        TUPLE_V4_LEN
    } else {
        let h = read::<Ipv6Hdr>(ctx, ip_at)?;
        tuple.__bindgen_anon_1.ipv6.saddr = words16(&h.src_addr);
        tuple.__bindgen_anon_1.ipv6.daddr = words16(&h.dst_addr);
        tuple.__bindgen_anon_1.ipv6.sport = sport;
        tuple.__bindgen_anon_1.ipv6.dport = dport;
        TUPLE_V6_LEN
    };
    // SAFETY: `ctx.ctx` is the program's context; `tuple` is a stack value of
    // at least `size` bytes. The socket, if any, is released below on every path.
    let sk = unsafe { bpf_skc_lookup_tcp(ctx.ctx as *mut _, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0) };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null socket from the lookup; `state` is readable on
    // every socket it returns (`bpf_sock_common`).
    let state = unsafe { (*sk).state };
    let reason = if state != BPF_TCP_LISTEN {
        Some(DecapReason::AcceptedSocket)
    } else {
        // SAFETY: `sk` is the listener just looked up; `ip` and `tcp` point
        // into the packet with `ip_len` and a whole TCP header checked above.
        let cookie = unsafe {
            bpf_tcp_check_syncookie(sk as *mut _, ip as *mut _, ip_len as u32, tcp as *mut tcphdr, TcpHdr::LEN as u32)
        };
        (cookie == 0).then_some(DecapReason::AcceptedSyncookie)
    };
    // SAFETY: releases the reference the lookup took, exactly once.
    unsafe { bpf_sk_release(sk as *mut _) };
    reason
}

/// Rewrites the outer header at `ip_at` in place toward `previous[hops]`
/// of the block at `block_at` (head `head`): destination = that previous
/// owner, hops + 1. `Err(UnknownNoPrevious)`, nothing written, when that
/// address is unspecified (the balancer never sends one). The FIB decides
/// how it leaves, and only a route out of the receiving interface counts
/// (`Err(RedirectFailed)`, nothing written, otherwise: forwarding off, no
/// route, another interface):
/// - neighbour known: `Redirected` (`XDP_TX`); source = the old destination
///   (this host, an address that passes a network's source validation),
///   MACs from the FIB;
/// - neighbour unknown (`NO_NEIGH`, normal: backends rarely talk to each
///   other): `RedirectedViaStack` (`XDP_PASS`), and the kernel forwards it,
///   resolving the neighbour, after which later packets take `XDP_TX`. The
///   previous source is kept, as a router would: the stack drops a packet
///   from one of its own addresses as a martian (unless `accept_local`).
///   MACs kept: the destination is this host's, so the stack takes it.
#[inline(always)]
pub fn send_on(ctx: &XdpContext, ip_at: usize, outer_v4: bool, block_at: usize, head: &SecondChance) -> Result<DecapReason, DecapReason> {
    // `hops < count <= MAX` (checked by the caller). One fixed offset per
    // entry: a read at a computed offset lets the compiler drop later
    // fixed-offset bounds checks that the verifier cannot infer from it.
    const _: () = assert!(MAX_PREVIOUS_OWNERS == 2, "one branch per entry below");
    let first = block_at + size_of::<SecondChance>();
    let target = if head.hops == 0 { read::<AddrWords>(ctx, first) } else { read::<AddrWords>(ctx, first + PREVIOUS_ADDR_LEN) };
    let target = target.ok_or(DecapReason::RedirectFailed)?;
    if target[0] == 0 && (outer_v4 || target == [0; 4]) {
        return Err(DecapReason::UnknownNoPrevious);
    }
    // SAFETY: `ctx.ctx` is the program's context, valid for its run.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: all-zero bytes are a valid lookup request (integers only).
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.l4_protocol = PROTO_UDP;
    fib.ifindex = ingress;
    if outer_v4 {
        let ip = read::<Ipv4Hdr>(ctx, ip_at).ok_or(DecapReason::RedirectFailed)?;
        fib.family = AF_INET;
        fib.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.dst_addr);
        fib.__bindgen_anon_4.ipv4_dst = target[0];
    } else {
        let ip = read::<Ipv6Hdr>(ctx, ip_at).ok_or(DecapReason::RedirectFailed)?;
        fib.family = AF_INET6;
        fib.__bindgen_anon_1.tot_len = (Ipv6Hdr::LEN + u16::from_be_bytes(ip.payload_len) as usize) as u16;
        fib.__bindgen_anon_3.ipv6_src = words16(&ip.dst_addr);
        fib.__bindgen_anon_4.ipv6_dst = target;
    }
    // SAFETY: `fib` is a stack value of the size passed.
    let rc = unsafe { fib_lookup(ctx.ctx as *mut _, &mut fib, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    // `ifindex` is the route's device for both answers (the kernel sets it
    // before it looks for the neighbour).
    let via_stack = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => false,
        BPF_FIB_LKUP_RET_NO_NEIGH => true,
        _ => return Err(DecapReason::RedirectFailed),
    };
    if fib.ifindex != ingress {
        return Err(DecapReason::RedirectFailed);
    }
    if !via_stack {
        write(ctx, 0, fib.dmac).ok_or(DecapReason::RedirectFailed)?;
        write(ctx, 6, fib.smac).ok_or(DecapReason::RedirectFailed)?;
    }
    if outer_v4 {
        let ip = ptr_at_mut::<Ipv4Hdr>(ctx, ip_at).ok_or(DecapReason::RedirectFailed)?;
        // SAFETY: `ptr_at_mut` checked the whole header; the checksum reads it from the packet.
        unsafe {
            if !via_stack {
                (*ip).src_addr = (*ip).dst_addr;
            }
            (*ip).dst_addr = target[0].to_ne_bytes();
            (*ip).check = [0, 0];
            (*ip).check = checksum::ipv4_header(ip as *const [u16; 10]).to_ne_bytes();
        }
    } else {
        let ip = ptr_at_mut::<Ipv6Hdr>(ctx, ip_at).ok_or(DecapReason::RedirectFailed)?;
        // SAFETY: `ptr_at_mut` checked the whole header.
        unsafe {
            if !via_stack {
                (*ip).src_addr = (*ip).dst_addr;
            }
            (*ip).dst_addr = crate::addr::words_bytes(&target);
        }
    }
    write(ctx, block_at + HOPS_OFFSET, head.hops + 1).ok_or(DecapReason::RedirectFailed)?;
    Ok(if via_stack { DecapReason::RedirectedViaStack } else { DecapReason::Redirected })
}

