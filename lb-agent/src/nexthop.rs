//! Next-hop resolution through netlink: for each backend, the kernel's route
//! (which must leave through the interface we attach to, since `XDP_TX` sends
//! frames back out where they came in) and the neighbour entry of its gateway
//! (or of the backend itself when it is on-link).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::TryStreamExt as _;
use rtnetlink::{
    packet_route::AddressFamily,
    packet_route::{
        address::AddressAttribute,
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{RouteAddress, RouteAttribute},
    },
    Handle, RouteMessageBuilder,
};

use crate::config::MacAddr;

/// How long to wait for ARP / neighbour discovery of one next hop.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
const RESOLVE_RETRY: Duration = Duration::from_millis(100);
/// The discard port: a datagram there makes the kernel resolve the neighbour
/// and is ignored by whoever receives it.
const DISCARD_PORT: u16 = 9;

/// The interface the balancer is attached to.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: MacAddr,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

/// Opens a netlink connection on the current tokio runtime.
pub fn connect() -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Looks up `name`: index, MAC and addresses (global-scope IPv6 only).
pub async fn interface(handle: &Handle, name: &str) -> Result<Interface> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .ok()
        .flatten()
        .ok_or_else(|| anyhow!("no network interface named {name:?} on this host (see `ip link`)"))?;
    let index = link.header.index;
    let mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) if bytes.len() == 6 => Some(MacAddr(bytes[..6].try_into().unwrap())),
            _ => None,
        })
        .ok_or_else(|| anyhow!("interface {name} has no Ethernet address"))?;
    let mut ipv4 = Vec::new();
    let mut ipv6 = Vec::new();
    let mut addrs = handle.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = addrs.try_next().await.context("listing interface addresses")? {
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Local(IpAddr::V4(a)) => ipv4.push(*a),
                AddressAttribute::Address(IpAddr::V6(a)) if !is_link_local(a) => ipv6.push(*a),
                _ => {}
            }
        }
    }
    ipv4.dedup();
    ipv6.dedup();
    Ok(Interface { name: name.to_string(), index, mac, ipv4, ipv6 })
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

/// The MAC to put in frames for `backend`, sent out of `iface`.
pub async fn resolve(handle: &Handle, iface: &Interface, backend: IpAddr) -> Result<MacAddr> {
    let next_hop = next_hop(handle, iface, backend).await?;
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    let mut probed = false;
    loop {
        if let Some(mac) = neighbour(handle, iface.index, next_hop).await? {
            return Ok(mac);
        }
        if Instant::now() >= deadline {
            bail!(
                "no neighbour entry for next hop {next_hop} of backend {backend} on {} after {:?} \
                 (is it up? set `mac` on the backend to override)",
                iface.name,
                RESOLVE_TIMEOUT
            );
        }
        if !probed {
            provoke_resolution(next_hop);
            probed = true;
        }
        tokio::time::sleep(RESOLVE_RETRY).await;
    }
}

/// The gateway toward `dest`, or `dest` itself when it is on-link. Fails if
/// the route leaves through another interface.
pub async fn next_hop(handle: &Handle, iface: &Interface, dest: IpAddr) -> Result<IpAddr> {
    let message = match dest {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(a, 32).build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(a, 128).build(),
    };
    let route = handle
        .route()
        .get(message)
        .execute()
        .try_next()
        .await
        .with_context(|| format!("no route to backend {dest}"))?
        .ok_or_else(|| anyhow!("no route to backend {dest}"))?;
    let mut gateway = None;
    let mut oif = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if oif != Some(iface.index) {
        bail!(
            "backend {dest} is routed through interface index {}, not {} (index {}): the balancer sends \
             frames back out of the interface they arrived on, so backends must be reachable through it",
            oif.map_or("none".to_string(), |i| i.to_string()),
            iface.name,
            iface.index
        );
    }
    Ok(gateway.unwrap_or(dest))
}

/// The link-layer address of a usable neighbour entry, if there is one.
async fn neighbour(handle: &Handle, index: u32, addr: IpAddr) -> Result<Option<MacAddr>> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let mut entries = handle.neighbours().get().set_address_family(family).execute();
    while let Some(msg) = entries.try_next().await.context("listing neighbours")? {
        if msg.header.ifindex != index
            || !matches!(
                msg.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
                    | NeighbourState::Noarp
            )
        {
            continue;
        }
        let mut dest = None;
        let mut mac = None;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dest = Some(IpAddr::V4(*a)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => dest = Some(IpAddr::V6(*a)),
                NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => mac = Some(MacAddr(b[..6].try_into().unwrap())),
                _ => {}
            }
        }
        if dest == Some(addr) {
            return Ok(mac);
        }
    }
    Ok(None)
}

/// Sends one datagram to the discard port of `next_hop`, which makes the
/// kernel run ARP / neighbour discovery for it.
fn provoke_resolution(next_hop: IpAddr) {
    let bind: SocketAddr = if next_hop.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    if let Ok(sock) = UdpSocket::bind(bind) {
        let _ = sock.send_to(&[0], SocketAddr::new(next_hop, DISCARD_PORT));
    }
}
