//! Each backend's next-hop MAC: its static `mac` or netlink's answer.

use std::collections::HashMap;
use std::net::IpAddr;

use anyhow::{bail, Context as _, Result};

use crate::{
    dataplane::{LoadOptions, ResolvedBackend},
    nexthop,
    plan::Plan,
};

/// Next-hop MACs for every backend: its static `mac` (the plan's) if it has
/// one, else netlink (one resolution pass for all of them).
pub(super) async fn resolve_backends(
    handle: &rtnetlink::Handle,
    iface: &nexthop::Interface,
    plan: &Plan,
    opts: &LoadOptions,
) -> Result<HashMap<u32, ResolvedBackend>> {
    for b in &plan.backends {
        match b.address {
            IpAddr::V4(_) if opts.tunnel_source_v4.is_none() => bail!(
                "backend {} is IPv4 but {} has no IPv4 address and lb.tunnel_source_v4 is not set: \
                 give {} an IPv4 address or set lb.tunnel_source_v4",
                b.address,
                iface.name,
                iface.name
            ),
            IpAddr::V6(_) if opts.tunnel_source_v6.is_none() => bail!(
                "backend {} is IPv6 but {} has no global IPv6 address and lb.tunnel_source_v6 is not set: \
                 give {} a global IPv6 address or set lb.tunnel_source_v6",
                b.address,
                iface.name,
                iface.name
            ),
            _ => {}
        }
    }
    let to_resolve: Vec<IpAddr> = plan.backends.iter().filter(|b| b.mac.is_none()).map(|b| b.address).collect();
    let resolved = nexthop::resolve_all(handle, iface, &to_resolve).await.context("resolving the backends' next hops")?;
    let mut out = HashMap::new();
    for b in &plan.backends {
        let mac = b.mac.or_else(|| resolved.get(&b.address).copied()).context("backend without a next hop")?;
        tracing::info!("backend {} via next hop {mac}", b.address);
        out.insert(b.id, ResolvedBackend { address: b.address, next_hop_mac: mac });
    }
    Ok(out)
}
