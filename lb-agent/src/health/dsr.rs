//! The LB host's side of DSR-aware checks (see `lb_common::health::dsr`):
//! for each backend id, a policy rule `fwmark <mark of id> → table <id's
//! table>`, and in that table a route to each VIP the backend is checked on,
//! via the backend's next hop. Only the marked check sockets use these
//! tables, so nothing else on the host is rerouted. The tc egress program
//! then encapsulates those packets toward the backend.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use aya::{
    programs::{tc, tc::SchedClassifierLinkId, SchedClassifier, TcAttachType},
    Ebpf,
};
use lb_common::{health::dsr, programs};
use rtnetlink::{
    packet_route::{
        route::RouteMessage,
        rule::{RuleAction, RuleMessage},
    },
    Handle, RouteMessageBuilder,
};

use crate::nexthop::{self, Interface};

/// One VIP checked through one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DsrPair {
    pub backend_id: u32,
    pub backend: IpAddr,
    pub vip: IpAddr,
}

/// What [`install`] set up, to remove it again.
pub(crate) struct DsrRouting {
    handle: Handle,
    iface: String,
    rules: Vec<RuleMessage>,
    routes: Vec<RouteMessage>,
    tc_link: Option<SchedClassifierLinkId>,
}

/// Installs rules, routes and the tc egress program for `pairs` on `iface`.
/// `ebpf` must be the balancer's object (the program reads its `BACKENDS`).
pub(crate) async fn install(handle: &Handle, iface: &Interface, pairs: &[DsrPair], ebpf: &mut Ebpf) -> Result<DsrRouting> {
    let mut routing =
        DsrRouting { handle: handle.clone(), iface: iface.name.clone(), rules: Vec::new(), routes: Vec::new(), tc_link: None };
    if pairs.is_empty() {
        return Ok(routing);
    }
    // Undo what is already in place if a later step fails.
    if let Err(e) = routing.add(handle, iface, pairs, ebpf).await {
        routing.remove(ebpf).await;
        return Err(e);
    }
    Ok(routing)
}

impl DsrRouting {
    async fn add(&mut self, handle: &Handle, iface: &Interface, pairs: &[DsrPair], ebpf: &mut Ebpf) -> Result<()> {
        let mut ids: Vec<(u32, bool)> = pairs.iter().map(|p| (p.backend_id, p.backend.is_ipv4())).collect();
        ids.sort_unstable();
        ids.dedup();
        for (id, v4) in ids {
            let rule = add_rule(handle, id, v4)
                .await
                .with_context(|| format!("adding the policy rule for DSR checks of backend id {id}"))?;
            self.rules.push(rule);
        }
        for p in pairs {
            let route = route_via_backend(handle, iface, p).await?;
            handle
                .route()
                .add(route.clone())
                .replace()
                .execute()
                .await
                .with_context(|| format!("adding the route for DSR checks of VIP {} through backend {}", p.vip, p.backend))?;
            self.routes.push(route);
        }
        if let Err(e) = tc::qdisc_add_clsact(&iface.name) {
            // Already there (another program, or a previous run): fine.
            tracing::debug!("clsact qdisc on {}: {e}", iface.name);
        }
        let program: &mut SchedClassifier = ebpf
            .program_mut(programs::HEALTH_ENCAP)
            .context("tc_health_encap missing from the BPF object")?
            .try_into()?;
        program.load().context("the kernel refused tc_health_encap")?;
        self.tc_link = Some(
            program
                .attach(&iface.name, TcAttachType::Egress)
                .with_context(|| format!("attaching tc_health_encap to {} egress", iface.name))?,
        );
        Ok(())
    }

    /// Removes the routes, rules and the tc program (best effort: logs failures).
    pub(crate) async fn remove(mut self, ebpf: &mut Ebpf) {
        if let Some(link) = self.tc_link.take()
            && let Some(Ok(program)) = ebpf.program_mut(programs::HEALTH_ENCAP).map(<&mut SchedClassifier>::try_from)
            && let Err(e) = program.detach(link)
        {
            tracing::warn!("detaching tc_health_encap from {}: {e}", self.iface);
        }
        for route in self.routes.drain(..) {
            if let Err(e) = self.handle.route().del(route).execute().await {
                tracing::warn!("removing a DSR check route: {e}");
            }
        }
        for rule in self.rules.drain(..) {
            if let Err(e) = self.handle.rule().del(rule).execute().await {
                tracing::warn!("removing a DSR check rule: {e}");
            }
        }
    }
}

/// `fwmark <mark of id> lookup <table of id>`; returns the rule to delete later.
async fn add_rule(handle: &Handle, id: u32, v4: bool) -> Result<RuleMessage, rtnetlink::Error> {
    let rule = handle
        .rule()
        .add()
        .fw_mark(dsr::mark(id))
        .table_id(dsr::TABLE_BASE + id)
        // Without an explicit action the kernel rejects lookups with EINVAL.
        .action(RuleAction::ToTable)
        .priority(dsr::RULE_PRIORITY);
    if v4 {
        let mut r = rule.v4().replace();
        let message = r.message_mut().clone();
        r.execute().await.map(|()| message)
    } else {
        let mut r = rule.v6().replace();
        let message = r.message_mut().clone();
        r.execute().await.map(|()| message)
    }
}

/// `<vip>/32 (or /128) via <backend's next hop> dev <iface> table <table of backend>`.
async fn route_via_backend(handle: &Handle, iface: &Interface, p: &DsrPair) -> Result<RouteMessage> {
    let via = nexthop::next_hop(handle, iface, p.backend).await?;
    let table = dsr::TABLE_BASE + p.backend_id;
    Ok(match (p.vip, via) {
        (IpAddr::V4(vip), IpAddr::V4(gw)) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(vip, 32)
            .gateway(gw)
            .output_interface(iface.index)
            .table_id(table)
            .build(),
        (IpAddr::V6(vip), IpAddr::V6(gw)) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(vip, 128)
            .gateway(gw)
            .output_interface(iface.index)
            .table_id(table)
            .build(),
        _ => anyhow::bail!("DSR check of VIP {} through backend {}: address families differ", p.vip, p.backend),
    })
}
