//! Next-hop resolution through netlink: for each backend, the kernel's route
//! (which must leave through the interface we attach to, since `XDP_TX` sends
//! frames back out where they came in) and the neighbour entry of its gateway
//! (or of the backend itself when it is on-link).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST},
    packet_route::AddressFamily,
    packet_route::{
        address::AddressAttribute,
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
        route::{RouteAddress, RouteAttribute},
        RouteNetlinkMessage,
    },
    Handle, RouteMessageBuilder,
};

use crate::config::MacAddr;

/// How long to wait for ARP / neighbour discovery of one next hop.
pub(crate) const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
const RESOLVE_RETRY: Duration = Duration::from_millis(100);
/// The discard port: a datagram there makes the kernel resolve the neighbour
/// and is ignored by whoever receives it.
const DISCARD_PORT: u16 = 9;

/// The interface the balancer is attached to.
#[derive(Clone, Debug)]
pub(crate) struct Interface {
    pub name: String,
    pub index: u32,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    /// The link's MTU (`IFLA_MTU`, from the same netlink message).
    pub mtu: u32,
}

/// Opens a netlink connection on the current tokio runtime.
pub(crate) fn connect() -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Looks up `name`: index, MAC and addresses (global-scope IPv6 only).
pub(crate) async fn interface(handle: &Handle, name: &str) -> Result<Interface> {
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
    // The balancer rewrites Ethernet headers: it cannot serve a link without a MAC.
    if !link.attributes.iter().any(|a| matches!(a, LinkAttribute::Address(bytes) if bytes.len() == 6)) {
        bail!("interface {name} has no Ethernet address: attach the balancer to an Ethernet interface");
    }
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None })
        .ok_or_else(|| anyhow!("the kernel did not report the MTU of {name}"))?;
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
    Ok(Interface { name: name.to_string(), index, ipv4, ipv6, mtu })
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

/// Netlink requests of one resolution pass in flight at once.
const CONCURRENT_REQUESTS: usize = 16;
/// How often an unresolved next hop is sent another datagram (the kernel
/// gives up after its own few probes and needs a new packet to retry).
const PROVOKE_EVERY: Duration = Duration::from_secs(1);

/// The MAC to put in frames for each of `destinations`, sent out of `iface`,
/// in one pass: each distinct next hop is looked up once and shared by
/// every destination behind it, and the pass has one deadline.
pub(crate) async fn resolve_all(handle: &Handle, iface: &Interface, destinations: &[IpAddr]) -> Result<HashMap<IpAddr, MacAddr>> {
    let routed: Vec<(IpAddr, IpAddr)> = stream::iter(destinations.iter().copied())
        .map(|dest| async move { anyhow::Ok((dest, next_hop(handle, iface, dest).await?)) })
        .buffer_unordered(CONCURRENT_REQUESTS)
        .try_collect()
        .await?;
    let mut behind: BTreeMap<IpAddr, Vec<IpAddr>> = BTreeMap::new();
    for (dest, hop) in &routed {
        behind.entry(*hop).or_default().push(*dest);
    }
    let mut found: HashMap<IpAddr, MacAddr> = HashMap::new();
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    let mut last_provoked: Option<Instant> = None;
    loop {
        let pending: Vec<IpAddr> = behind.keys().filter(|hop| !found.contains_key(*hop)).copied().collect();
        let answers: Vec<(IpAddr, Option<MacAddr>)> = stream::iter(pending)
            .map(|hop| async move { anyhow::Ok((hop, neighbour(handle, iface.index, hop).await?)) })
            .buffer_unordered(CONCURRENT_REQUESTS)
            .try_collect()
            .await?;
        found.extend(answers.into_iter().filter_map(|(hop, mac)| Some((hop, mac?))));
        let unresolved: Vec<(&IpAddr, &Vec<IpAddr>)> = behind.iter().filter(|(hop, _)| !found.contains_key(*hop)).collect();
        if unresolved.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let hints: Vec<String> = unresolved.iter().map(|(hop, dests)| unresolved_hint(iface, **hop, dests)).collect();
            bail!("{}", hints.join("\n"));
        }
        if last_provoked.is_none_or(|at| at.elapsed() >= PROVOKE_EVERY) {
            unresolved.iter().for_each(|(hop, _)| provoke_resolution(**hop));
            last_provoked = Some(Instant::now());
        }
        tokio::time::sleep(RESOLVE_RETRY).await;
    }
    Ok(routed.into_iter().map(|(dest, hop)| (dest, found[&hop])).collect())
}

/// What to tell the operator when `next_hop` (of `backends`) has no usable
/// neighbour entry after [`RESOLVE_TIMEOUT`].
fn unresolved_hint(iface: &Interface, next_hop: IpAddr, backends: &[IpAddr]) -> String {
    let names: Vec<String> = backends.iter().map(ToString::to_string).collect();
    let whose = if backends == [next_hop] {
        format!("backend {next_hop}")
    } else {
        format!("next hop {next_hop} of backend(s) {}", names.join(", "))
    };
    format!(
        "no neighbour entry for {whose} on {} after {:?}: nothing answered ARP / neighbour discovery. \
         Check that the host is up and reachable through {} (`ip neigh show {next_hop}`), or set `mac` on the backend to skip resolution",
        iface.name, RESOLVE_TIMEOUT, iface.name
    )
}

/// The gateway toward `dest`, or `dest` itself when it is on-link. Fails if
/// the route leaves through another interface.
pub(crate) async fn next_hop(handle: &Handle, iface: &Interface, dest: IpAddr) -> Result<IpAddr> {
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

/// How long one netlink request may take before it is sent again (a reply
/// the kernel dropped on an overrun socket would otherwise be awaited for ever).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts of one netlink request that fails transiently.
const REQUEST_ATTEMPTS: u32 = 5;

/// The link-layer address of a usable neighbour entry, if there is one.
///
/// A targeted RTM_GETNEIGH (no dump): the kernel allows one dump in flight
/// per netlink socket, so concurrent dumps on a shared handle fail with
/// EBUSY or overrun the socket (ENOBUFS); single gets can run side by side.
/// Transient failures are retried.
pub(crate) async fn neighbour(handle: &Handle, index: u32, addr: IpAddr) -> Result<Option<MacAddr>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match neighbour_once(handle, index, addr).await {
            Ok(found) => return Ok(found),
            Err(e) if attempt < REQUEST_ATTEMPTS && e.is_transient() => {
                tracing::debug!("neighbour lookup of {addr}: {e}; retrying");
                tokio::time::sleep(RESOLVE_RETRY * attempt).await;
            }
            Err(e) => return Err(anyhow!("looking up the neighbour entry of {addr}: {e} (after {attempt} attempt(s))")),
        }
    }
}

/// One failed netlink request.
#[derive(Debug)]
enum RequestError {
    /// The kernel's answer: an errno.
    Kernel(std::io::Error),
    /// No answer within [`REQUEST_TIMEOUT`].
    Timeout,
    /// The connection is gone or answered nonsense.
    Other(String),
}

impl RequestError {
    /// Busy socket, overrun socket or lost reply: worth another try.
    fn is_transient(&self) -> bool {
        match self {
            RequestError::Timeout => true,
            RequestError::Kernel(e) => matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOBUFS | libc::EAGAIN | libc::EINTR)),
            RequestError::Other(_) => false,
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Kernel(e) => write!(f, "{e}"),
            RequestError::Timeout => write!(f, "no answer from the kernel within {REQUEST_TIMEOUT:?}"),
            RequestError::Other(e) => f.write_str(e),
        }
    }
}

async fn neighbour_once(handle: &Handle, index: u32, addr: IpAddr) -> Result<Option<MacAddr>, RequestError> {
    let mut message = NeighbourMessage::default();
    message.header.family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    message.header.ifindex = index;
    message.attributes.push(NeighbourAttribute::Destination(match addr {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(message));
    request.header.flags = NLM_F_REQUEST;
    let mut replies = handle.clone().request(request).map_err(|e| RequestError::Other(e.to_string()))?;
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, replies.next())
        .await
        .map_err(|_| RequestError::Timeout)?
        .ok_or_else(|| RequestError::Other("the netlink connection closed".into()))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(entry)) => Ok(usable_mac(&entry)),
        NetlinkPayload::Error(e) if e.raw_code() == -libc::ENOENT => Ok(None),
        NetlinkPayload::Error(e) => Err(RequestError::Kernel(e.to_io())),
        other => Err(RequestError::Other(format!("unexpected netlink answer {other:?}"))),
    }
}

/// The MAC of a neighbour entry in a state the kernel itself would send to.
fn usable_mac(entry: &NeighbourMessage) -> Option<MacAddr> {
    let usable = matches!(
        entry.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    if !usable {
        return None;
    }
    entry.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => Some(MacAddr(b[..6].try_into().unwrap())),
        _ => None,
    })
}

/// Sends one datagram to the discard port of `next_hop`, which makes the
/// kernel run ARP / neighbour discovery for it.
fn provoke_resolution(next_hop: IpAddr) {
    let bind: SocketAddr = if next_hop.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    if let Ok(sock) = UdpSocket::bind(bind) {
        let _ = sock.send_to(&[0], SocketAddr::new(next_hop, DISCARD_PORT));
    }
}
