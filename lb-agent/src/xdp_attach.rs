//! How XDP is attached to an interface, as the kernel reports it over
//! netlink (`IFLA_XDP_ATTACHED`): right both for a program this agent
//! attached and for one it adopted from an earlier agent's pins.

use anyhow::{anyhow, Result};
use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp, XdpAttached};
use rtnetlink::Handle;

/// The attach mode's metric label: `native` (driver), `generic` (skb),
/// `offload` (NIC), `multiple`, `none`, or `unknown`.
pub(crate) fn label(attached: &XdpAttached) -> &'static str {
    match attached {
        XdpAttached::Driver => "native",
        XdpAttached::SocketBuffer => "generic",
        XdpAttached::Hardware => "offload",
        XdpAttached::Multiple => "multiple",
        XdpAttached::None => "none",
        _ => "unknown",
    }
}

/// The XDP mode of interface `index` now.
pub(crate) async fn mode(handle: &Handle, index: u32) -> Result<&'static str> {
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await?
        .ok_or_else(|| anyhow!("interface {index} disappeared"))?;
    let attached = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
            LinkXdp::Attached(a) => Some(label(a)),
            _ => None,
        }),
        _ => None,
    });
    Ok(attached.unwrap_or("none"))
}
