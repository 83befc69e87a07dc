//! Header parsing: Ethernet with at most one 802.1Q tag, IPv4 (any IHL) or
//! IPv6 (skipping a bounded number of extension headers), then the TCP/UDP
//! ports. Every read goes through `packet` (bounds-checked).

use aya_ebpf::programs::XdpContext;
use lb_common::{limits::MAX_IPV6_EXT_HEADERS, AddrWords, Reason, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::packet::{ptr_at, read};

/// IPv4 "more fragments" flag and fragment offset, in host order.
pub const IPV4_MF_AND_OFFSET: u16 = 0x3fff;
/// The group bit of a MAC address (first octet): multicast or broadcast.
const MAC_GROUP_BIT: u8 = 0x01;

/// IPv6 extension headers we skip (RFC 8200 section 4.1).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;
/// Extension header length unit (`Hdr Ext Len` counts 8-octet units beyond the first).
const IPV6_EXT_UNIT: usize = 8;
/// Bytes of the fixed part of an extension header we read: next header and length.
const IPV6_EXT_MIN: usize = 8;

/// Where the network header starts and what it is.
#[derive(Clone, Copy)]
pub struct L2 {
    /// Bytes of Ethernet (+ VLAN) header: 14 or 18.
    pub len: usize,
    /// EtherType of the network header, as in the packet (network order).
    pub ether_type_be: u16,
}

/// A consistent IP header and what follows it.
#[derive(Clone, Copy)]
pub struct Ip {
    pub l2: L2,
    pub family: u8,
    pub src: AddrWords,
    pub dst: AddrWords,
    /// The upper-layer protocol: after IPv6 extension headers, or the one
    /// after the fragment header of a fragment.
    pub proto: u8,
    /// IPv4 TOS / IPv6 traffic class, copied to the outer header.
    pub tos: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    /// Length of the IP packet (header + payload) according to its header;
    /// Ethernet padding after it is not part of it.
    pub ip_len: usize,
    /// Offset of the upper-layer header in the frame.
    pub l4_offset: usize,
    /// Bytes from `l4_offset` to the end of the IP packet.
    pub l4_len: usize,
}

/// What the balancer needs to know about a packet it may forward: the outer
/// packet's framing and the flow it belongs to (for ICMP errors, the flow the
/// quoted header describes, not the ICMP packet's own addresses).
#[derive(Clone, Copy)]
pub struct Flow {
    pub l2: L2,
    pub family: u8,
    pub src: AddrWords,
    pub dst: AddrWords,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    /// IPv4 TOS / IPv6 traffic class, copied to the outer header.
    pub tos: u8,
    /// Length of the IP packet that will be encapsulated.
    pub ip_len: usize,
}

impl Flow {
    /// The flow of a TCP/UDP packet.
    #[inline(always)]
    pub fn of(ip: &Ip, src_port_be: u16, dst_port_be: u16) -> Self {
        Flow {
            l2: ip.l2,
            family: ip.family,
            src: ip.src,
            dst: ip.dst,
            src_port_be,
            dst_port_be,
            proto: ip.proto,
            tos: ip.tos,
            ip_len: ip.ip_len,
        }
    }
}

#[inline(always)]
pub fn parse_l2(ctx: &XdpContext) -> Result<L2, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::MalformedL3)?;
    // SAFETY: `ptr_at` checked the bounds. Not `read`: `ether_type` is a u16
    // at an even offset of a frame that starts 2-aligned (the kernel's
    // headroom, and our head adjustments are even), and an aligned load is
    // one instruction where an unaligned one is four, on every packet.
    let ether_type_be = unsafe { (*eth).ether_type };
    if ether_type_be != EtherType::Ieee8021q as u16 {
        return Ok(L2 { len: EthHdr::LEN, ether_type_be });
    }
    let vlan: *const VlanHdr = ptr_at(ctx, EthHdr::LEN).ok_or(Reason::MalformedL3)?;
    // SAFETY: as for `eth` above: bounds checked, an aligned u16.
    Ok(L2 { len: EthHdr::LEN + VlanHdr::LEN, ether_type_be: unsafe { (*vlan).ether_type } })
}

/// The destination address of an IP packet.
#[derive(Clone, Copy)]
pub enum Destination {
    /// The IPv4 address as one word (as in `AddrWords`).
    V4(u32),
    V6(AddrWords),
}

impl Destination {
    /// The destination of a parsed packet.
    #[inline(always)]
    pub fn of(ip: &Ip) -> Self {
        if ip.family == FAMILY_V4 {
            Destination::V4(ip.dst[0])
        } else {
            Destination::V6(ip.dst)
        }
    }
}

/// The destination address of the IP packet after `l2`, read before
/// anything else of the header is checked: the balancer lets host traffic
/// go on it alone. `Err`: not IP, or too short to hold a whole IP header.
#[inline(always)]
pub fn peek_destination(ctx: &XdpContext, l2: L2) -> Result<Destination, Reason> {
    if l2.ether_type_be == EtherType::Ipv4 as u16 {
        let ip: *const [u16; Ipv4Hdr::LEN / 2] = ptr_at(ctx, l2.len).ok_or(Reason::MalformedL3)?;
        // Destination at byte 16.
        return Ok(Destination::V4(address_word(word(ip, 8), word(ip, 9))));
    }
    if l2.ether_type_be == EtherType::Ipv6 as u16 {
        let ip: *const [u16; Ipv6Hdr::LEN / 2] = ptr_at(ctx, l2.len).ok_or(Reason::MalformedL3)?;
        return Ok(Destination::V6(ipv6_address(ip, 12)));
    }
    Err(Reason::NotIp)
}

/// What decides an IP packet's way, from a consistent header: the rest
/// ([`Head::ip`]: addresses, TOS, TTL) is read only for the packets that go
/// on, so the balancer passes an unconfigured port of a VIP address
/// without it.
#[derive(Clone, Copy)]
pub struct Head {
    l2: L2,
    family: u8,
    /// See [`Ip::proto`].
    pub proto: u8,
    /// Any fragment (first or later, IPv4 or IPv6): its ports cannot be trusted.
    pub fragment: bool,
    ip_len: usize,
    /// Offset of the upper-layer header in the frame.
    pub l4_offset: usize,
    /// Bytes from `l4_offset` to the end of the IP packet.
    pub l4_len: usize,
}

/// The header after `l2`, an IP EtherType (see [`peek_destination`]),
/// checked for consistency (`Err`: the reason it is not an IP packet we
/// look at): a
/// unicast frame, version, lengths against each other and the frame, IPv6
/// extension headers walked.
#[inline(always)]
pub fn parse_head(ctx: &XdpContext, l2: L2) -> Result<Head, Reason> {
    check_unicast(ctx)?;
    if l2.ether_type_be == EtherType::Ipv4 as u16 {
        parse_ipv4_head(ctx, l2)
    } else {
        parse_ipv6_head(ctx, l2)
    }
}

impl Head {
    /// The whole header's facts.
    #[inline(always)]
    pub fn ip(&self, ctx: &XdpContext) -> Result<Ip, Reason> {
        // The header's bounds are checked again for the verifier, which
        // keeps none across the caller's work since `parse_head`.
        let (src, dst, tos, ttl) = if self.family == FAMILY_V4 {
            let ip: *const [u16; Ipv4Hdr::LEN / 2] = ptr_at(ctx, self.l2.len).ok_or(Reason::MalformedL3)?;
            (
                [address_word(word(ip, 6), word(ip, 7)), 0, 0, 0],
                [address_word(word(ip, 8), word(ip, 9)), 0, 0, 0],
                word(ip, 0).to_ne_bytes()[1],
                word(ip, 4).to_ne_bytes()[0],
            )
        } else {
            let ip: *const [u16; Ipv6Hdr::LEN / 2] = ptr_at(ctx, self.l2.len).ok_or(Reason::MalformedL3)?;
            let vcf = word(ip, 0).to_ne_bytes();
            // Source at byte 8, destination at byte 24.
            (ipv6_address(ip, 4), ipv6_address(ip, 12), (vcf[0] << 4) | (vcf[1] >> 4), word(ip, 3).to_ne_bytes()[1])
        };
        Ok(Ip {
            l2: self.l2,
            family: self.family,
            src,
            dst,
            proto: self.proto,
            tos,
            ttl,
            ip_len: self.ip_len,
            l4_offset: self.l4_offset,
            l4_len: self.l4_len,
        })
    }
}

/// A group-addressed frame is never balanced: its destination MAC would
/// become the outer source MAC. (The first test of [`parse_head`].)
#[inline(always)]
fn check_unicast(ctx: &XdpContext) -> Result<(), Reason> {
    // The whole address checked, the first octet loaded: a one-byte check
    // compiles to a test the verifier takes for an empty range.
    let dst_mac = read::<[u8; 6]>(ctx, 0).ok_or(Reason::MalformedL3)?;
    if dst_mac[0] & MAC_GROUP_BIT != 0 {
        return Err(Reason::L2Multicast);
    }
    Ok(())
}

/// Word `i` (16 bits, as the packet holds it, read natively) of the `N`
/// words at `words`.
#[inline(always)]
fn word<const N: usize>(words: *const [u16; N], i: usize) -> u16 {
    // SAFETY: the caller got `words` from `ptr_at`, bounds-checked for all
    // `N` words, and the IP header starts at an even offset (14 or 18) of a
    // 2-aligned frame (see `parse_l2`), so each u16 load is aligned: one
    // instruction, where a header's byte-array fields load byte by byte.
    unsafe { (*words)[i] }
}

/// Two words as one address word (the packet's four bytes, read natively):
/// what a u32 load of both would give, in a shift and an or.
#[inline(always)]
fn address_word(first: u16, second: u16) -> u32 {
    if cfg!(target_endian = "little") {
        u32::from(first) | (u32::from(second) << 16)
    } else {
        (u32::from(first) << 16) | u32::from(second)
    }
}

#[inline(always)]
fn parse_ipv4_head(ctx: &XdpContext, l2: L2) -> Result<Head, Reason> {
    let ip: *const [u16; Ipv4Hdr::LEN / 2] = ptr_at(ctx, l2.len).ok_or(Reason::MalformedL3)?;
    let vihl = word(ip, 0).to_ne_bytes()[0];
    let proto = word(ip, 4).to_ne_bytes()[1];
    let header_len = ((vihl & 0x0f) as usize) * 4;
    let ip_len = u16::from_be(word(ip, 1)) as usize;
    let available = ctx.data_end() - ctx.data() - l2.len;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || ip_len < header_len || ip_len > available {
        return Err(Reason::MalformedL3);
    }
    let fragment = u16::from_be(word(ip, 3)) & IPV4_MF_AND_OFFSET != 0;
    Ok(Head { l2, family: FAMILY_V4, proto, fragment, ip_len, l4_offset: l2.len + header_len, l4_len: ip_len - header_len })
}

/// The address at word `at` of an IPv6 header.
#[inline(always)]
fn ipv6_address(ip: *const [u16; Ipv6Hdr::LEN / 2], at: usize) -> AddrWords {
    [
        address_word(word(ip, at), word(ip, at + 1)),
        address_word(word(ip, at + 2), word(ip, at + 3)),
        address_word(word(ip, at + 4), word(ip, at + 5)),
        address_word(word(ip, at + 6), word(ip, at + 7)),
    ]
}

#[inline(always)]
fn parse_ipv6_head(ctx: &XdpContext, l2: L2) -> Result<Head, Reason> {
    let ip: *const [u16; Ipv6Hdr::LEN / 2] = ptr_at(ctx, l2.len).ok_or(Reason::MalformedL3)?;
    let version = word(ip, 0).to_ne_bytes()[0] >> 4;
    let payload_len = u16::from_be(word(ip, 2)) as usize;
    let next_hdr = word(ip, 3).to_ne_bytes()[0];
    let available = ctx.data_end() - ctx.data() - l2.len;
    if version != 6 || Ipv6Hdr::LEN + payload_len > available {
        return Err(Reason::MalformedL3);
    }
    let ip_end = l2.len + Ipv6Hdr::LEN + payload_len;
    let (proto, l4_offset, fragment) = skip_ipv6_ext_headers(ctx, next_hdr, l2.len + Ipv6Hdr::LEN, ip_end)?;
    Ok(Head { l2, family: FAMILY_V6, proto, fragment, ip_len: Ipv6Hdr::LEN + payload_len, l4_offset, l4_len: ip_end - l4_offset })
}

/// Skips up to `MAX_IPV6_EXT_HEADERS` hop-by-hop, routing and destination
/// options headers. Returns the upper-layer protocol, its offset, and whether
/// a fragment header was met (the walk stops there: later fragments have no
/// upper-layer header, and all fragments are treated alike).
#[inline(always)]
fn skip_ipv6_ext_headers(ctx: &XdpContext, first: u8, start: usize, ip_end: usize) -> Result<(u8, usize, bool), Reason> {
    let mut next = first;
    let mut offset = start;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next != IPV6_HOP_BY_HOP && next != IPV6_ROUTING && next != IPV6_DEST_OPTIONS && next != IPV6_FRAGMENT {
            return Ok((next, offset, false));
        }
        // Bounds check first: LLVM would drop it as implied by the check
        // against the IP length, which the verifier cannot follow.
        let hdr: *const [u8; IPV6_EXT_MIN] = ptr_at(ctx, offset).ok_or(Reason::MalformedL3)?;
        if offset + IPV6_EXT_MIN > ip_end {
            return Err(Reason::MalformedL3);
        }
        // SAFETY: `ptr_at` checked the bounds. Not `read`: loading before
        // the length check above costs instructions in each unrolled round.
        let (following, ext_len) = unsafe { ((*hdr)[0], (*hdr)[1]) };
        if next == IPV6_FRAGMENT {
            // The fragment header is 8 bytes; its length field is reserved.
            return Ok((following, offset + IPV6_EXT_MIN, true));
        }
        next = following;
        offset += (ext_len as usize + 1) * IPV6_EXT_UNIT;
    }
    if next == IPV6_HOP_BY_HOP || next == IPV6_ROUTING || next == IPV6_DEST_OPTIONS || next == IPV6_FRAGMENT {
        return Err(Reason::TooManyExtHeaders);
    }
    if offset > ip_end {
        return Err(Reason::MalformedL3);
    }
    Ok((next, offset, false))
}

/// The ports of a TCP or UDP header at `offset`, which must fit both in the
/// frame and in the `payload_len` the IP header announces.
#[inline(always)]
pub fn parse_ports(ctx: &XdpContext, offset: usize, payload_len: usize, proto: u8) -> Result<(u16, u16), Reason> {
    let ports: *const [u16; 2] = if proto == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, offset).ok_or(Reason::MalformedL4)?;
        if payload_len < TcpHdr::LEN {
            return Err(Reason::MalformedL4);
        }
        tcp.cast()
    } else {
        let udp: *const UdpHdr = ptr_at(ctx, offset).ok_or(Reason::MalformedL4)?;
        if payload_len < UdpHdr::LEN {
            return Err(Reason::MalformedL4);
        }
        udp.cast()
    };
    // Not `read`: bounds check first for the verifier (see
    // `skip_ipv6_ext_headers`), load after the length check, which is
    // cheaper on every packet; and the ports are the header's first two
    // words, at an even offset (IP header lengths are even): aligned u16
    // loads (see `word`).
    Ok((word(ports, 0), word(ports, 1)))
}

/// Whether `proto` is one the balancer forwards flows of.
#[inline(always)]
pub fn is_tcp_udp(proto: u8) -> bool {
    proto == PROTO_TCP || proto == PROTO_UDP
}
