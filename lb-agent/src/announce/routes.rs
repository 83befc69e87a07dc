//! The VIP routes themselves: `blackhole <vip>/32 (or /128) table T proto P
//! metric M`. Blackhole, because they only exist to be exported by the
//! routing daemon: the table is consulted by no policy rule, so they never
//! route a packet (the balancer takes VIP packets before routing anyway).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use futures_util::TryStreamExt as _;
use rtnetlink::{
    packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    Handle, RouteMessageBuilder,
};

use crate::config::announce::AnnounceConfig;

/// Whole-address prefix lengths: a VIP route covers exactly one address.
const HOST_PREFIX_V4: u8 = 32;
const HOST_PREFIX_V6: u8 = 128;

/// The route announcing `vip` with `config`'s table, protocol and role.
pub fn message(config: &AnnounceConfig, vip: IpAddr) -> RouteMessage {
    let protocol = RouteProtocol::from(config.protocol);
    match vip {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, HOST_PREFIX_V4)
            .table_id(config.table)
            .protocol(protocol)
            .kind(RouteType::BlackHole)
            .priority(config.role.metric())
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, HOST_PREFIX_V6)
            .table_id(config.table)
            .protocol(protocol)
            .kind(RouteType::BlackHole)
            .priority(config.role.metric())
            .build(),
    }
}

/// Adds (or replaces, so a changed role takes effect) the route of `vip`.
pub async fn add(handle: &Handle, config: &AnnounceConfig, vip: IpAddr) -> Result<()> {
    handle
        .route()
        .add(message(config, vip))
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding the announce route of VIP {vip} to table {}", config.table))
}

/// Removes the route of `vip` as `installed` (the message read from the kernel).
pub async fn remove(handle: &Handle, installed: RouteMessage) -> Result<()> {
    handle.route().del(installed).execute().await.context("removing an announce route")
}

/// The agent's routes in the kernel now: host routes of `config`'s table and
/// protocol, both families (a predecessor's, after a restart).
pub async fn installed(handle: &Handle, config: &AnnounceConfig) -> Result<Vec<(IpAddr, RouteMessage)>> {
    let mut out = Vec::new();
    let dumps = [
        RouteMessageBuilder::<Ipv4Addr>::new().table_id(config.table).build(),
        RouteMessageBuilder::<Ipv6Addr>::new().table_id(config.table).build(),
    ];
    for filter in dumps {
        let mut routes = handle.route().get(filter).execute();
        while let Some(route) = routes.try_next().await.context("listing the announce routes")? {
            if u8::from(route.header.protocol) != config.protocol || table_of(&route) != config.table {
                continue;
            }
            if let Some(vip) = host_destination(&route) {
                out.push((vip, route));
            }
        }
    }
    Ok(out)
}

/// The addresses of [`installed`].
pub fn addresses(routes: &[(IpAddr, RouteMessage)]) -> BTreeSet<IpAddr> {
    routes.iter().map(|(a, _)| *a).collect()
}

fn table_of(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(route.header.table))
}

fn host_destination(route: &RouteMessage) -> Option<IpAddr> {
    let prefix = route.header.destination_prefix_length;
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) if prefix == HOST_PREFIX_V4 => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) if prefix == HOST_PREFIX_V6 => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}
