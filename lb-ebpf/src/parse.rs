//! Header parsing: Ethernet with at most one 802.1Q tag, IPv4 (any IHL) or
//! IPv6, then the TCP/UDP ports. Every read goes through `packet::ptr_at`.

use aya_ebpf::programs::XdpContext;
use lb_common::{AddrWords, Reason, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::packet::ptr_at;

/// IPv4 "more fragments" flag and fragment offset, in host order.
const IPV4_MF_AND_OFFSET: u16 = 0x3fff;

/// Where the network header starts and what it is.
#[derive(Clone, Copy)]
pub struct L2 {
    /// Bytes of Ethernet (+ VLAN) header: 14 or 18.
    pub len: usize,
    /// EtherType of the network header, as in the packet (network order).
    pub ether_type_be: u16,
}

/// What the balancer needs to know about a TCP/UDP packet.
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
    /// Length of the IP packet (header + payload) according to its header;
    /// Ethernet padding after it is not part of it.
    pub ip_len: usize,
}

#[inline(always)]
pub fn parse_l2(ctx: &XdpContext) -> Result<L2, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::MalformedL3)?;
    let ether_type_be = unsafe { (*eth).ether_type };
    if ether_type_be != EtherType::Ieee8021q as u16 {
        return Ok(L2 { len: EthHdr::LEN, ether_type_be });
    }
    let vlan: *const VlanHdr = ptr_at(ctx, EthHdr::LEN).ok_or(Reason::MalformedL3)?;
    Ok(L2 { len: EthHdr::LEN + VlanHdr::LEN, ether_type_be: unsafe { (*vlan).ether_type } })
}

/// Parses a packet up to its ports. `Err` carries the reason it is not a
/// TCP/UDP flow we can balance.
#[inline(always)]
pub fn parse_flow(ctx: &XdpContext) -> Result<Flow, Reason> {
    let l2 = parse_l2(ctx)?;
    if l2.ether_type_be == EtherType::Ipv4 as u16 {
        parse_ipv4(ctx, l2)
    } else if l2.ether_type_be == EtherType::Ipv6 as u16 {
        parse_ipv6(ctx, l2)
    } else {
        Err(Reason::NotIp)
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l2: L2) -> Result<Flow, Reason> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l2.len).ok_or(Reason::MalformedL3)?;
    let (vihl, tos, proto) = unsafe { ((*ip).vihl, (*ip).tos, (*ip).proto) };
    let header_len = ((vihl & 0x0f) as usize) * 4;
    let ip_len = u16::from_be_bytes(unsafe { (*ip).tot_len }) as usize;
    let available = ctx.data_end() - ctx.data() - l2.len;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || ip_len < header_len || ip_len > available {
        return Err(Reason::MalformedL3);
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(Reason::NotTcpUdp);
    }
    if u16::from_be_bytes(unsafe { (*ip).frags }) & IPV4_MF_AND_OFFSET != 0 {
        return Err(Reason::Fragment);
    }
    let src = unsafe { u32::from_ne_bytes((*ip).src_addr) };
    let dst = unsafe { u32::from_ne_bytes((*ip).dst_addr) };
    let (src_port_be, dst_port_be) = parse_ports(ctx, l2.len + header_len, ip_len - header_len, proto)?;
    Ok(Flow {
        l2,
        family: FAMILY_V4,
        src: [src, 0, 0, 0],
        dst: [dst, 0, 0, 0],
        src_port_be,
        dst_port_be,
        proto,
        tos,
        ip_len,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l2: L2) -> Result<Flow, Reason> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l2.len).ok_or(Reason::MalformedL3)?;
    let vcf = unsafe { (*ip).vcf };
    let payload_len = u16::from_be_bytes(unsafe { (*ip).payload_len }) as usize;
    let available = ctx.data_end() - ctx.data() - l2.len;
    if vcf[0] >> 4 != 6 || Ipv6Hdr::LEN + payload_len > available {
        return Err(Reason::MalformedL3);
    }
    // Extension headers (hop-by-hop, fragment, ...) land here too: not balanced.
    let proto = unsafe { (*ip).next_hdr };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(Reason::NotTcpUdp);
    }
    let tos = (vcf[0] << 4) | (vcf[1] >> 4);
    let (src, dst) = unsafe { (words16(&(*ip).src_addr), words16(&(*ip).dst_addr)) };
    let (src_port_be, dst_port_be) = parse_ports(ctx, l2.len + Ipv6Hdr::LEN, payload_len, proto)?;
    Ok(Flow {
        l2,
        family: FAMILY_V6,
        src,
        dst,
        src_port_be,
        dst_port_be,
        proto,
        tos,
        ip_len: Ipv6Hdr::LEN + payload_len,
    })
}

/// The ports of a TCP or UDP header at `offset`, which must fit both in the
/// frame and in the `payload_len` the IP header announces.
#[inline(always)]
fn parse_ports(ctx: &XdpContext, offset: usize, payload_len: usize, proto: u8) -> Result<(u16, u16), Reason> {
    if proto == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, offset).ok_or(Reason::MalformedL4)?;
        if payload_len < TcpHdr::LEN {
            return Err(Reason::MalformedL4);
        }
        Ok(unsafe { (u16::from_ne_bytes((*tcp).source), u16::from_ne_bytes((*tcp).dest)) })
    } else {
        let udp: *const UdpHdr = ptr_at(ctx, offset).ok_or(Reason::MalformedL4)?;
        if payload_len < UdpHdr::LEN {
            return Err(Reason::MalformedL4);
        }
        Ok(unsafe { (u16::from_ne_bytes((*udp).src), u16::from_ne_bytes((*udp).dst)) })
    }
}

#[inline(always)]
fn words16(a: &[u8; 16]) -> AddrWords {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
